// Logits from a real llama.cpp (node-llama-cpp's prebuilt CPU build) for a GGUF file,
// written as a reference-logits safetensors file that qverify --ref reads:
// tokens I32 [S, T], logits F32 [S, T, V]. Each sequence runs from an empty cache.
//
//   node logits.mjs MODEL.gguf TOKENS.i32 S T OUT.safetensors
//
// TOKENS.i32 holds little-endian int32 ids; the first S*T are used.
import fs from "node:fs";
import { getLlama, getModuleVersion, LlamaLogLevel } from "node-llama-cpp";

const [model_path, tokens_path, s_arg, t_arg, out_path] = process.argv.slice(2);
if (!out_path) {
    console.error("usage: node logits.mjs MODEL.gguf TOKENS.i32 S T OUT.safetensors");
    process.exit(2);
}
const S = Number(s_arg), T = Number(t_arg);
const raw = fs.readFileSync(tokens_path);
if (raw.length < 4 * S * T) {
    console.error(`${tokens_path} holds fewer than ${S * T} tokens`);
    process.exit(2);
}
const ids = new Int32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + 4 * S * T));

const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
const model = await llama.loadModel({ modelPath: model_path });
// Room past the T positions: a context exactly T long is shifted before the last token (its
// cached keys re-roped), exact for plain RoPE but not for YaRN, whose cos and sin are scaled.
const context = await model.createContext({ contextSize: 2 * T, batchSize: T, sequences: 1 });
const seq = context.getSequence();

async function evaluate(s) {
    await seq.clearHistory();
    const input = Array.from(ids.subarray(s * T, (s + 1) * T), (t) => [t, { generateNext: { logits: true } }]);
    return seq.controlledEvaluate(input);
}
let res = await evaluate(0);
const V = res[0]?.next?.logits?.size ?? 0; // every logit of the vocabulary comes back
const header = JSON.stringify({
    tokens: { dtype: "I32", shape: [S, T], data_offsets: [0, 4 * S * T] },
    logits: { dtype: "F32", shape: [S, T, V], data_offsets: [4 * S * T, 4 * S * T + 4 * S * T * V] },
});
const pad = (8 - (header.length % 8)) % 8;
const head = Buffer.from(header + " ".repeat(pad));
const fd = fs.openSync(out_path, "w");
const len = Buffer.alloc(8);
len.writeBigUInt64LE(BigInt(head.length));
fs.writeSync(fd, len);
fs.writeSync(fd, head);
fs.writeSync(fd, Buffer.from(ids.buffer, ids.byteOffset, 4 * S * T));
const row = new Float32Array(V);
for (let s = 0; s < S; s++) {
    if (s > 0)
        res = await evaluate(s);
    for (let t = 0; t < T; t++) {
        const logits = res[t]?.next?.logits;
        if (!logits || logits.size !== V) {
            console.error(`no full logits at sequence ${s} position ${t}`);
            process.exit(1);
        }
        row.fill(Number.NaN);
        for (const [tok, v] of logits) row[tok] = v;
        fs.writeSync(fd, Buffer.from(row.buffer));
    }
}
fs.closeSync(fd);
await context.dispose();
await model.dispose();
console.log(`node-llama-cpp ${await getModuleVersion()} (llama.cpp ${llama.llamaCppRelease?.release ?? "?"}, ${llama.buildType}, CPU), vocabulary ${V}: ${S} x ${T} positions`);
