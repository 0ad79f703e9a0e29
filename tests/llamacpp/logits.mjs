// Logits from a real llama.cpp (node-llama-cpp's prebuilt CPU build) for a GGUF file,
// written as a reference-logits safetensors file that qverify --ref reads:
// tokens I32 [S, T], logits F32 [S, T, V]. Each sequence runs from an empty cache.
//
//   node logits.mjs MODEL.gguf TOKENS.i32 S T OUT.safetensors
//   node logits.mjs --jobs JOBS.txt
//
// TOKENS.i32 holds little-endian int32 ids; the first S*T are used. JOBS.txt holds one
// "MODEL.gguf TOKENS.i32 S T OUT.safetensors" a line: node's start and llama.cpp's load
// cost far more than these tiny models' evaluation, so one process runs them all, each
// model loaded into a fresh context as the single-job form does. OUT is written under a
// temporary name and renamed when complete, so a failed job leaves no OUT behind; the
// others still run, and the exit status says whether any failed.
import fs from "node:fs";
import { getLlama, getModuleVersion, LlamaLogLevel } from "node-llama-cpp";

const usage = "usage: node logits.mjs MODEL.gguf TOKENS.i32 S T OUT.safetensors | --jobs JOBS.txt";
const argv = process.argv.slice(2);
let jobs;
if (argv[0] === "--jobs" && argv.length === 2) {
    jobs = fs.readFileSync(argv[1], "utf8").split("\n").filter((l) => l.trim() !== "")
        .map((l) => l.trim().split(/\s+/));
    if (jobs.some((j) => j.length !== 5)) {
        console.error(`${argv[1]}: each line needs MODEL TOKENS S T OUT`);
        process.exit(2);
    }
} else if (argv.length === 5) {
    jobs = [argv];
} else {
    console.error(usage);
    process.exit(2);
}

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const version = await getModuleVersion();

async function run(model_path, tokens_path, s_arg, t_arg, out_path) {
    const S = Number(s_arg), T = Number(t_arg);
    const raw = fs.readFileSync(tokens_path);
    if (raw.length < 4 * S * T)
        throw new Error(`${tokens_path} holds fewer than ${S * T} tokens`);
    const ids = new Int32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + 4 * S * T));

    const t0 = performance.now();
    const model = await llama.loadModel({ modelPath: model_path });
    // Room past the T positions: a context exactly T long is shifted before the last token (its
    // cached keys re-roped), exact for plain RoPE but not for YaRN, whose cos and sin are scaled.
    const context = await model.createContext({ contextSize: 2 * T, batchSize: T, sequences: 1 });
    const seq = context.getSequence();
    const tmp_path = `${out_path}.part`;
    let fd = -1;
    try {
        // Each position's logits (node-llama-cpp gives a Map of the whole vocabulary) are copied
        // out as they come and dropped, not all T held until the call returns: on the fixtures'
        // 151936-entry vocabulary that took less memory and about 15% less CPU time a job.
        let V = 0, block = null; // one sequence's logits, [T, V]
        const filled = new Uint8Array(T);
        const onTokenResult = (t, out) => {
            const logits = out?.next?.logits;
            if (!logits)
                return;
            if (!block) {
                V = logits.size; // every logit of the vocabulary comes back
                block = new Float32Array(T * V);
            }
            if (logits.size !== V)
                return;
            const row = block.subarray(t * V, (t + 1) * V);
            row.fill(Number.NaN);
            logits.forEach((v, tok) => { row[tok] = v; }); // no [tok, v] pair allocated per entry
            filled[t] = 1;
            delete out.next.logits;
        };
        async function evaluate(s) {
            await seq.clearHistory();
            filled.fill(0);
            const input = Array.from(ids.subarray(s * T, (s + 1) * T), (t) => [t, { generateNext: { logits: true } }]);
            await seq.controlledEvaluate(input, { onTokenResult });
            const t = filled.indexOf(0);
            if (t >= 0)
                throw new Error(`no full logits at sequence ${s} position ${t}`);
        }
        await evaluate(0);
        const header = JSON.stringify({
            tokens: { dtype: "I32", shape: [S, T], data_offsets: [0, 4 * S * T] },
            logits: { dtype: "F32", shape: [S, T, V], data_offsets: [4 * S * T, 4 * S * T + 4 * S * T * V] },
        });
        const pad = (8 - (header.length % 8)) % 8;
        const head = Buffer.from(header + " ".repeat(pad));
        fd = fs.openSync(tmp_path, "w");
        const len = Buffer.alloc(8);
        len.writeBigUInt64LE(BigInt(head.length));
        fs.writeSync(fd, len);
        fs.writeSync(fd, head);
        fs.writeSync(fd, Buffer.from(ids.buffer, ids.byteOffset, 4 * S * T));
        for (let s = 0; s < S; s++) {
            if (s > 0)
                await evaluate(s);
            fs.writeSync(fd, Buffer.from(block.buffer, block.byteOffset, block.byteLength));
        }
        fs.closeSync(fd);
        fd = -1;
        fs.renameSync(tmp_path, out_path);
        console.log(`${model_path}: node-llama-cpp ${version} (llama.cpp ${llama.llamaCppRelease?.release ?? "?"}, ${llama.buildType}, CPU), vocabulary ${V}: ${S} x ${T} positions, ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    } finally {
        if (fd >= 0) fs.closeSync(fd);
        fs.rmSync(tmp_path, { force: true });
        await context.dispose();
        await model.dispose();
    }
}

let failed = 0;
for (const job of jobs) {
    try {
        await run(...job);
    } catch (e) {
        failed++;
        console.error(`error: ${job[4]}: ${job[0]}: ${e?.message ?? e}`);
    }
}
process.exit(failed ? 1 : 0);
