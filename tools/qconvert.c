/* qconvert: Hugging Face Qwen2 folder -> .qpk, GGUF, GPTQ or AWQ folder; .qpk -> GGUF, GPTQ or AWQ. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "qpk_private.h"
#include "qpk/gguf.h"
#include "qpk/verify.h"
#include "cli.h"

/* The weights a written .qpk or GGUF file holds and their bytes (0 for a folder). */
static void file_weights(const char *path, uint64_t *n, uint64_t *bytes)
{
    qpk_file *f;
    qpk_gguf *g;
    qpk_err e;
    *n = *bytes = 0;
    if (qpk_open(&f, path, NULL, &e) == QPK_OK) {
        for (size_t i = 0; i < qpk_n_tensors(f); i++) {
            const qpk_tensor *t = qpk_tensor_at(f, i);
            uint64_t k = 1;
            for (int d = 0; d < t->ndim; d++)
                k *= (uint64_t)t->dims[d];
            if (t->type != QPK_TYPE_I32) /* a permutation is not a weight */
                *n += k, *bytes += t->nbytes;
        }
        qpk_close(f);
    } else if (qpk_gguf_open(&g, path, &e) == QPK_OK) {
        for (size_t i = 0; i < qpk_gguf_n_tensors(g); i++) {
            const qpk_gguf_tensor *t = qpk_gguf_tensor_at(g, i);
            uint64_t k = 1;
            for (int d = 0; d < t->n_dims; d++)
                k *= t->ne[d];
            *n += k, *bytes += t->nbytes;
        }
        qpk_gguf_close(g);
    }
}

/*
 * The first shard of the split set just written for -o OUT.gguf: OUT-00001-of-NNNNN.gguf, the
 * newest such file (an older set of another count may lie beside it). NULL if none.
 */
static char *first_shard(const char *out)
{
    size_t n = strlen(out);
    char *prefix = strdup(out), *best = NULL;
    if (!prefix)
        return NULL;
    if (n > 5 && !strcmp(prefix + n - 5, ".gguf"))
        prefix[n - 5] = 0;
    struct timespec newest = {0, 0};
    size_t plen = strlen(prefix), cap = plen + 32;
    char *name = malloc(cap);
    for (unsigned count = 1; name && count <= 65535; count++) {
        struct stat sb;
        snprintf(name, cap, "%s-00001-of-%05u.gguf", prefix, count);
        if (stat(name, &sb) == 0 && (!best || sb.st_mtim.tv_sec > newest.tv_sec ||
                                      (sb.st_mtim.tv_sec == newest.tv_sec && sb.st_mtim.tv_nsec > newest.tv_nsec))) {
            free(best);
            best = strdup(name);
            newest = sb.st_mtim;
        }
    }
    free(name), free(prefix);
    return best;
}

/* As llama.cpp reports a model: its tensors' size, and their bits over the weights they hold. */
static void cli_wrote(const char *out, double t0)
{
    const double dt = cli_now() - t0;
    fprintf(stderr, "qconvert: wrote ");
    cli_print_msg(stderr, out);
    uint64_t n, bytes;
    file_weights(out, &n, &bytes);
    if (n)
        fprintf(stderr, " (tensors %.2f MiB, %.2f bits per weight)", (double)bytes / 1048576.0,
                8.0 * (double)bytes / (double)n);
    fprintf(stderr, " in %.2f s\n", dt);
}

/*
 * A size as transformers writes max_shard_size: a decimal integer, then an optional unit
 * ("4GB" is 4e9 bytes, "2GiB" 2^31; a bare number is bytes). Nothing else: no fraction,
 * no sign, no hexadecimal (leading zeros are decimal), no exponent, no spaces; at least 1 byte,
 * under 1e18.
 */
static bool parse_size(const char *v, uint64_t *out)
{
    static const struct {
        const char *suffix;
        uint64_t mult;
    } U[] = {{"", 1},           {"B", 1},           {"KB", 1000},        {"MB", 1000000},
             {"GB", 1000000000}, {"TB", 1000000000000}, {"KiB", 1ull << 10}, {"MiB", 1ull << 20},
             {"GiB", 1ull << 30}};
    uint64_t x = 0, bytes;
    const char *p = v;
    for (; p && *p >= '0' && *p <= '9'; p++)
        if (__builtin_mul_overflow(x, 10, &x) || __builtin_add_overflow(x, (uint64_t)(*p - '0'), &x))
            return false;
    if (!p || p == v)
        return false;
    for (size_t i = 0; i < sizeof U / sizeof *U; i++)
        if (!strcmp(p, U[i].suffix)) {
            if (__builtin_mul_overflow(x, U[i].mult, &bytes) || bytes < 1 || bytes >= 1000000000000000000ull)
                return false;
            *out = bytes;
            return true;
        }
    return false;
}

#define REQUANT_RANDOM_TOKENS 512 /* the measure without text: 2 windows of 256 */

/*
 * --requantize: what the engine requantized for GGUF is measured on the spot, from memory:
 * the source's exact model and the model as written (kept by the engine) run on the same
 * tokens (--calib text, else pseudo-random ids) and their KL divergence is reported.
 */
static qpk_status report_requantized(cli *c, qpk_source *src, const qpk_convert_result *r, const qpk_convert_opts *o,
                                     const int32_t *tokens, size_t n_tokens, qpk_err *e)
{
    if (!r->model) {
        if (!c->quiet)
            fprintf(stderr, "qconvert: --requantize: no linear needed it: nothing requantized, the %s is exact\n",
                    o->to == QPK_OUT_GGUF ? "GGUF" : ".qpk");
        return QPK_OK;
    }
    qpk_model *exact = NULL;
    int32_t *random = NULL;
    qpk_status s = qpk_model_from_source(&exact, src, e);
    if (s == QPK_OK && !tokens) { /* a fixed xorshift stream of ids: the same measure every run */
        int64_t vocab = qpk_source_config(src)->vocab_size;
        uint64_t x = 0x9e3779b97f4a7c15ull;
        if (!(random = malloc(REQUANT_RANDOM_TOKENS * sizeof *random)))
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
        for (int i = 0; random && i < REQUANT_RANDOM_TOKENS; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            random[i] = (int32_t)(x % (uint64_t)vocab);
        }
        tokens = random, n_tokens = REQUANT_RANDOM_TOKENS;
    }
    qpk_verify_opts vo = {.n_ctx = n_tokens < 512 ? (int)n_tokens : 256, .score_all = true, .max_chunks = 8,
                          .n_threads = o->n_threads, .cb = o->cb};
    qpk_verify_result v;
    if (s == QPK_OK && vo.n_ctx < 2)
        s = qpk_err_setf(e, QPK_E_MISMATCH, "the text to measure --requantize on holds fewer than 2 tokens");
    if (s == QPK_OK)
        s = qpk_verify_tokens(r->model, exact, tokens, n_tokens, &vo, &v, e);
    if (s == QPK_OK) {
        cli_progress_done(c);
        fprintf(stderr,
                "qconvert: --requantize: %d linears requantized to groups of 32 (RTN); against the "
                "exact model on %llu %s: KLD mean %.4g (p99 %.4g), top-1 %.2f%%\n",
                r->n_requantized, (unsigned long long)v.n_compared, random ? "positions of pseudo-random tokens (give "
                "--calib TEXT to measure on text)" : "positions of the given text", v.kld_mean, v.kld_p99, v.top1_pct);
    }
    qpk_model_free(exact);
    free(random);
    return s;
}

/* Opens the input, runs the engine into the output, and reports (--requantize: what it cost). */
static int convert(cli *c, const char *in, const char *out, qpk_convert_opts *o, const char *calib_path,
                   bool calib_text)
{
    qpk_err e = {0};
    qpk_source *src = NULL;
    qpk_sink *sink = NULL;
    int32_t *calib = NULL;
    qpk_convert_result r = {0};
    const qpk_source_opts so = {.cb = o->cb};
    const qpk_sink_opts ko = {o->shard_size, o->gptq_v2, o->n_threads, o->cb, o->split_max_size,
                              o->split_max_tensors};
    double t0 = cli_now();
    qpk_status s = qpk_source_open(&src, in, &so, &e);
    if (s == QPK_OK && calib_path && calib_text)
        s = qpk_source_tokenize_file(src, calib_path, &calib, &o->calib.n_tokens, &o->calib.source_xxh3, &e);
    else if (s == QPK_OK && calib_path)
        if ((s = qpk_read_tokens(calib_path, &calib, &o->calib.n_tokens, &e)) == QPK_OK)
            o->calib.source_xxh3 = qpk_xxh3(calib, o->calib.n_tokens * sizeof *calib);
    if (s == QPK_OK && calib_path && o->calib.n_tokens == 0)
        s = qpk_err_setf(&e, QPK_E_MISMATCH, "the calibration file '%s' holds no tokens%s", calib_path,
                         calib_text ? " (its text is empty)" : "");
    if (s == QPK_OK && calib_path && (o->method != QPK_METHOD_RTN)) {
        o->calib.tokens = calib;
        o->calib.source = calib_path;
        o->calib.source_is_text = calib_text;
    }
    for (size_t i = 0; s == QPK_OK && i < qpk_source_n_inputs(src); i++)
        s = qpk_check_not_input(out, qpk_source_input(src, i), &e);
    o->keep_requantized = o->requantize;
    if (s == QPK_OK)
        s = qpk_sink_create(&sink, o->to, out, &ko, &e);
    if (s == QPK_OK)
        s = qpk_convert(src, o, sink, &r, &e); /* consumes the sink */
    if (s == QPK_OK && o->requantize)
        s = report_requantized(c, src, &r, o, calib, o->calib.n_tokens, &e);
    qpk_convert_result_free(&r);
    qpk_source_close(src);
    free(calib);
    if (s != QPK_OK) {
        if (strstr(e.msg, "requantizing") && !o->requantize) /* the library names no flag: the tool does */
            snprintf(e.msg + strlen(e.msg), sizeof e.msg - strlen(e.msg), " (--requantize)");
        return cli_fail(c, &e);
    }
    cli_progress_done(c);
    char *first = o->split_max_size || o->split_max_tensors ? first_shard(out) : NULL;
    if (!c->quiet)
        cli_wrote(first ? first : out, t0);
    free(first);
    return 0;
}

static void usage(void)
{
    char types[128]; /* the types --quant takes, from the type rows */
    qpk_quant_type_list(types, sizeof types, " | ", " | ");
    printf("Usage: qconvert MODEL_DIR -o OUT.qpk [options]\n"
           "       qconvert MODEL_DIR|IN.qpk --to gguf -o OUT.gguf [options]\n"
           "       qconvert MODEL_DIR|IN.qpk --to gptq|awq|compressed-tensors|mlx -o OUT_DIR [options]\n"
           "       qconvert IN.gguf -o OUT.qpk\n"
           "\n"
           "Converts a Hugging Face checkpoint folder of the Qwen family (qwen2: Qwen1.5,\n"
           "Qwen2, Qwen2.5, with or without YaRN; qwen2_moe; qwen3; qwen3_moe: config.json,\n"
           "model.safetensors or sharded model-*.safetensors with their index,\n"
           "tokenizer files) into one .qpk file, a GGUF file for llama.cpp, a GPTQ, AWQ\n"
           "or compressed-tensors folder for transformers, vLLM, SGLang and ExLlamaV2, or\n"
           "an MLX folder for mlx-lm. A folder that is already GPTQ, AWQ,\n"
           "compressed-tensors, AutoRound (auto-round's auto_gptq, auto_round, auto_awq\n"
           "packings) or MLX (Qwen's -GPTQ-Int4, -GPTQ-Int8, -AWQ releases,\n"
           "llm-compressor's, Intel's, mlx-community's) is read exactly, never\n"
           "requantized. A .qpk input is re-packed with its tensors as they are; so is a\n"
           "GGUF file of the family (llama.cpp's types kept, Q4_K_M stays Q4_K_M).\n"
           "The output appears only when complete.\n"
           "\n"
           "Options:\n"
           "  -o, --output PATH     output file, or folder for gptq, awq, compressed-tensors,\n"
           "                        mlx\n"
           "      --to FORMAT       qpk | gguf | gptq | awq | compressed-tensors | mlx\n"
           "                        (default:\n"
           "                        gguf when PATH ends\n"
           "                        in .gguf, else qpk).\n"
           "                        GGUF holds int8/int4s/int4 in groups of 32 as ggml's\n"
           "                        Q8_0/Q4_0/Q4_1 (--group defaults to 32), q4_k etc.\n"
           "                        as themselves; norms and biases are f32.\n"
           "                        GPTQ: int4 (sym false), int4s (sym true), int8 (8-bit);\n"
           "                        AWQ (GEMM): int4, int4s. One bit width and group size\n"
           "                        for every linear; the embedding and head stay floats.\n"
           "                        compressed-tensors (pack-quantized, vLLM's): int4,\n"
           "                        int4s, int8, int8z, one config group per scheme.\n"
           "                        MLX (mlx-lm): mlx4, mlx8, mlx4_f16, mlx8_f16 in groups\n"
           "                        of 32, 64, 128 (int4, int4s, int8, int8z, q4_1 carried\n"
           "                        as affine groups), embedding and head quantized as the\n"
           "                        linears; a scheme per module where they differ\n"
           "      --shard-size N    folders: bytes of tensors per safetensors shard, e.g.\n"
           "                        4GB (default, as transformers), 500MB, 2GiB\n"
           "      --split-max-size N      GGUF: a split set as llama.cpp's gguf-split writes\n"
           "      --split-max-tensors N   it, at most N bytes (2GB, 500MB...: tensor bytes,\n"
           "                        metadata not counted) or N tensors per shard; -o x.gguf\n"
           "                        writes x-00001-of-0000K.gguf .. K, the model's metadata\n"
           "                        in the first; llama.cpp, qverify etc. load the first\n"
           "      --gptq-format F   v1 (default: what vLLM and transformers read) | v2\n"
           "                        (zeros stored as they are; v1 stores zero - 1 and so\n"
           "                        cannot hold a zero point of 0)\n"
           "      --dtype TYPE      keep | f32 | f16 | bf16   (default keep: each tensor\n"
           "                        as stored; F64 becomes f32)\n"
           "      --quant TYPE      %s: quantize the\n"
           "                        linear weights (q, k, v, o, gate, up, down, experts) by\n"
           "                        round-to-nearest in groups along the input dimension\n"
           "                        (q*_k, iq4_xs: llama.cpp's K-quants and i-quants,\n"
           "                        super-blocks of 256, their scales searched; rows not\n"
           "                        of 256 fall back to q5_0/q5_1/q8_0/iq4_nl as\n"
           "                        llama.cpp does); the embedding (and\n"
           "                        head) become int8, norms and biases f32\n"
           "      --preset MIX      q4_k_m | q5_k_m | q6_k | q8_0 | iq4_xs | iq4_nl: every\n"
           "                        matrix's type as llama-quantize's mix of that name\n"
           "                        chooses it\n"
           "      --group G         32 | 64 | 128 (default; 32 for gguf, 64 for mlx) | row:\n"
           "                        weights per scale\n"
           "      --embed-type TYPE the embedding's and head's type (default int8 with\n"
           "                        --quant): f32, f16, bf16, int8, int4, int4s\n"
           "      --keep PAT=TYPE[/gN|/row]\n"
           "                        override tensors whose name matches PAT (a substring,\n"
           "                        or a glob with * ? [ ]); repeatable, the last match\n"
           "                        wins, e.g. --keep down_proj=int8 --keep lm_head=f16\n"
           "      --method M        rtn (default) | gptq | awq | awq+gptq | imatrix: how the\n"
           "                        --quant weights are chosen; gptq and awq calibrate\n"
           "                        layer by layer (awq+gptq: AWQ's scales, then GPTQ's\n"
           "                        error feedback on the scaled weights), imatrix weighs the K-quants' scale searches by\n"
           "                        each input's mean square (llama.cpp's imatrix), on\n"
           "      --calib FILE      UTF-8 text, tokenized with the model's tokenizer.json\n"
           "      --calib-tokens F  or raw little-endian int32 token ids\n"
           "      --calib-samples N windows drawn from the calibration data (default 64)\n"
           "      --calib-len L     tokens per window (default 512)\n"
           "      --seed S          which windows (default 0)\n"
           "      --damp X          GPTQ: Hessian dampening, fraction of its mean diagonal\n"
           "                        (default 0.01)\n"
           "      --act-order       GPTQ: columns by decreasing Hessian diagonal (groups\n"
           "                        stay static and contiguous)\n"
           "      --awq-fold-only   AWQ: choose the scales for --quant and fold them, but\n"
           "                        store the linears in f32 (an AWQ-scaled float model)\n"
           "      --requantize      gguf: requantize the linears no GGUF type holds (GPTQ\n"
           "                        act-order; 8-bit with zeros Q8_0 cannot hold) to groups\n"
           "                        of 32, and report\n"
           "                        the KL divergence it costs (on --calib TEXT if given);\n"
           "                        with --to qpk, writes the .qpk such a GGUF is made from\n"
           "      --allow-nonfinite keep NaN and infinite weights of tensors stored as floats\n"
           "                        (by default a non-finite weight is refused, named)\n"
           "      --imatrix FILE    llama.cpp's importance matrix (llama-imatrix's GGUF or\n"
           "                        legacy .dat) weighing the scale searches of ggml's\n"
           "                        types (--method imatrix without a calibration run)\n"
           "      --save-imatrix F  write the calibration run's statistics (the sum of\n"
           "                        each linear input's squares and the tokens seen) as\n"
           "                        an importance matrix llama-quantize reads (GGUF;\n"
           "                        --imatrix-dat: the legacy .dat)\n"
           "      --pad-intermediate N\n"
           "                        pad every intermediate size (dense, each expert's, the\n"
           "                        shared expert's) up to a multiple of N (unchanged if\n"
           "                        it is one) for tensor-parallel shards: zero rows of\n"
           "                        gate/up, zero columns of down, the logits unchanged;\n"
           "                        quantized padding must be whole groups of down's type;\n"
           "                        not with --method (pad the calibrated .qpk in a second\n"
           "                        conversion)\n"
           "  -t, --threads N       worker threads (default: all cores)\n"
           "  -q, --quiet           no progress or notes, only warnings and errors\n"
           "  -h, --help            this help\n"
           "      --version         print the version\n"
           "\n"
           "Exit codes: 0 ok, 2 usage, 3 bad input, 4 I/O error, 5 internal, 130 interrupted.\n", types);
}

/* ------------------------------------------------------------------ options */

/* What an option shapes: the checks refuse options that would do nothing for the input or target. */
enum { FOR_MODEL = 1, FOR_GPTQ = 2, FOR_WINDOWS = 4, FOR_FOLDER = 8, FOR_GROUP = 16, FOR_SPLIT = 32 };

typedef enum opt_id {
    O_HELP, O_VERSION, O_QUIET, O_OUTPUT, O_TO, O_SHARD_SIZE, O_GPTQ_FORMAT, O_DTYPE, O_QUANT, O_PRESET, O_GROUP,
    O_KEEP, O_EMBED_TYPE, O_METHOD, O_CALIB, O_CALIB_TOKENS, O_CALIB_SAMPLES, O_CALIB_LEN, O_SEED, O_DAMP,
    O_ACT_ORDER, O_AWQ_FOLD_ONLY, O_REQUANTIZE, O_ALLOW_NONFINITE, O_THREADS, O_PAD_INTERMEDIATE, O_IMATRIX,
    O_SAVE_IMATRIX, O_IMATRIX_DAT, O_SPLIT_SIZE, O_SPLIT_TENSORS
} opt_id;

static const struct option {
    const char *name, *alias; /* --long, -s (or NULL) */
    bool takes_value;
    unsigned shapes; /* FOR_* */
    opt_id id;
} OPTIONS[] = {
    {"--help", "-h", false, 0, O_HELP},
    {"--version", NULL, false, 0, O_VERSION},
    {"--quiet", "-q", false, 0, O_QUIET},
    {"--output", "-o", true, 0, O_OUTPUT},
    {"--to", NULL, true, 0, O_TO},
    {"--shard-size", NULL, true, FOR_FOLDER, O_SHARD_SIZE},
    {"--gptq-format", NULL, true, FOR_FOLDER, O_GPTQ_FORMAT},
    {"--split-max-size", NULL, true, FOR_SPLIT, O_SPLIT_SIZE},
    {"--split-max-tensors", NULL, true, FOR_SPLIT, O_SPLIT_TENSORS},
    {"--dtype", NULL, true, FOR_MODEL, O_DTYPE},
    {"--quant", NULL, true, FOR_MODEL, O_QUANT},
    {"--preset", NULL, true, FOR_MODEL, O_PRESET},
    {"--group", NULL, true, FOR_MODEL | FOR_GROUP, O_GROUP},
    {"--keep", NULL, true, FOR_MODEL, O_KEEP},
    {"--embed-type", NULL, true, FOR_MODEL, O_EMBED_TYPE},
    {"--method", NULL, true, FOR_MODEL, O_METHOD},
    {"--calib", NULL, true, 0, O_CALIB},
    {"--calib-tokens", NULL, true, 0, O_CALIB_TOKENS},
    {"--calib-samples", NULL, true, FOR_WINDOWS, O_CALIB_SAMPLES},
    {"--calib-len", NULL, true, FOR_WINDOWS, O_CALIB_LEN},
    {"--seed", NULL, true, FOR_WINDOWS, O_SEED},
    {"--damp", NULL, true, FOR_GPTQ, O_DAMP},
    {"--act-order", NULL, false, FOR_GPTQ, O_ACT_ORDER},
    {"--awq-fold-only", NULL, false, 0, O_AWQ_FOLD_ONLY},
    {"--requantize", NULL, false, 0, O_REQUANTIZE},
    {"--allow-nonfinite", NULL, false, FOR_MODEL, O_ALLOW_NONFINITE},
    {"--pad-intermediate", NULL, true, 0, O_PAD_INTERMEDIATE},
    {"--imatrix", NULL, true, FOR_MODEL, O_IMATRIX},
    {"--save-imatrix", NULL, true, FOR_MODEL, O_SAVE_IMATRIX},
    {"--imatrix-dat", NULL, false, FOR_MODEL, O_IMATRIX_DAT},
    {"--threads", "-t", true, 0, O_THREADS},
};

/* Everything the command line says. */
typedef struct args {
    const char *in, *out, *to;
    const char *calib_path; /* --calib (text) or --calib-tokens */
    bool calib_text, requant;
    unsigned shapes; /* FOR_* of the options given */
    qpk_convert_opts o;
    qpk_quant_rule rules[64];
    size_t n_rules, n_embed;
} args;

/* --embed-type T: rules for the embedding and the head, ahead of the user's own. */
static int add_embed_rules(cli *c, args *a, const char *v)
{
    qpk_err e = {0};
    const char *names[2] = {"model.embed_tokens.weight", "lm_head.weight"};
    memmove(a->rules + 2, a->rules, a->n_rules * sizeof *a->rules);
    for (int k = 0; k < 2; k++) {
        char text[64];
        snprintf(text, sizeof text, "%s=%s", names[k], v);
        if (qpk_quant_rule_parse(text, &a->rules[k], &e) != QPK_OK)
            return cli_usage_error(c, "--embed-type: %s", e.msg);
        a->rules[k].implied = true; /* the head's rule does nothing for a tied model: no warning */
    }
    a->n_rules += 2, a->n_embed++;
    return -1;
}

/* Applies one option (value v, NULL for a flag). Returns -1 to go on, or the exit code. */
static int set_option(cli *c, args *a, const struct option *opt, const char *v)
{
    qpk_convert_opts *o = &a->o;
    long long n;
    qpk_type t;
    qpk_err e = {0};
    switch (opt->id) {
    case O_HELP: usage(); return 0;
    case O_VERSION: printf("qconvert %s\n", QPK_VERSION_STRING); return 0;
    case O_QUIET: c->quiet = true; return -1;
    case O_OUTPUT: a->out = v; return -1;
    case O_TO:
        for (int k = QPK_OUT_QPK; k <= QPK_OUT_LAST; k++)
            if (!strcmp(v, qpk_output_name((qpk_output)k)))
                return a->to = v, -1;
        return cli_usage_error(c, "--to takes qpk, gguf, gptq, awq, compressed-tensors or mlx");
    case O_SHARD_SIZE:
        return parse_size(v, &o->shard_size)
                   ? -1
                   : cli_usage_error(c, "--shard-size takes a whole number of bytes, or one with a unit (B, KB, MB, "
                                        "GB, TB, KiB, MiB, GiB) such as 4GB, 500MB or 2GiB");
    case O_SPLIT_SIZE:
        return parse_size(v, &o->split_max_size)
                   ? -1
                   : cli_usage_error(c, "--split-max-size takes a whole number of bytes, or one with a unit (B, KB, "
                                        "MB, GB, TB, KiB, MiB, GiB) such as 2GB or 500MB");
    case O_SPLIT_TENSORS:
        if (!cli_parse_int(v, 1, 1000000, &n))
            return cli_usage_error(c, "--split-max-tensors takes a whole number from 1 to 1000000");
        return o->split_max_tensors = (uint64_t)n, -1;
    case O_GPTQ_FORMAT:
        if (strcmp(v, "v1") && strcmp(v, "v2"))
            return cli_usage_error(c, "--gptq-format takes v1 or v2");
        return o->gptq_v2 = !strcmp(v, "v2"), -1;
    case O_DTYPE:
        if (!strcmp(v, "keep"))
            return o->dtype = -1, -1;
        if (qpk_type_from_name(v, &t) && !qpk_type_is_quantized(t))
            return o->dtype = (int)t, -1;
        return cli_usage_error(c, "--dtype '%s': expected keep, f32, f16 or bf16", v);
    case O_QUANT:
        if (!qpk_type_from_name(v, &t) || !qpk_type_is_quant_target(t)) {
            char types[128];
            qpk_quant_type_list(types, sizeof types, ", ", " or ");
            return cli_usage_error(c, "--quant takes %s", types);
        }
        return o->quant = (int)t, -1;
    case O_PRESET:
        return qpk_preset_from_name(v, &o->preset) ? -1
                                                   : cli_usage_error(c, "--preset takes q4_k_m, q5_k_m, q6_k, q8_0, iq4_xs or iq4_nl");
    case O_GROUP:
        if (!strcmp(v, "row"))
            return o->group = QPK_GROUP_ROW, -1;
        if (cli_parse_int(v, 1, QPK_MAX_GROUP, &n) && qpk_group_ok(QPK_TYPE_INT4, (uint32_t)n, 0))
            return o->group = (uint32_t)n, -1; /* the rule of every type --quant takes */
        return cli_usage_error(c, "--group takes a multiple of %d (32, 64, 128, ...) or row", QPK_GROUP_QUANTUM);
    case O_KEEP:
    case O_EMBED_TYPE:
        if (a->n_rules + 2 > sizeof a->rules / sizeof *a->rules)
            return cli_usage_error(c, "too many --keep rules");
        if (opt->id == O_EMBED_TYPE)
            return add_embed_rules(c, a, v);
        if (qpk_quant_rule_parse(v, &a->rules[a->n_rules], &e) != QPK_OK)
            return cli_usage_error(c, "%s", e.msg);
        return a->n_rules++, -1;
    case O_METHOD:
        for (int k = QPK_METHOD_RTN; k <= QPK_METHOD_AWQ_GPTQ; k++)
            if (!strcmp(v, qpk_method_name((qpk_method)k)))
                return o->method = (qpk_method)k, -1;
        return cli_usage_error(c, "--method takes rtn, gptq, awq, awq+gptq or imatrix");
    case O_CALIB:
    case O_CALIB_TOKENS:
        if (a->calib_path)
            return cli_usage_error(c, "give one of --calib and --calib-tokens, once");
        return a->calib_path = v, a->calib_text = opt->id == O_CALIB, -1;
    case O_CALIB_SAMPLES:
    case O_CALIB_LEN:
        if (!cli_parse_int(v, 1, 1 << 20, &n))
            return cli_usage_error(c, "%s needs a positive count", opt->name);
        return *(opt->id == O_CALIB_LEN ? &o->calib.seq_len : &o->calib.samples) = (int)n, -1;
    case O_SEED:
        if (!cli_parse_int(v, 0, INT64_MAX, &n))
            return cli_usage_error(c, "--seed needs a non-negative number");
        return o->calib.seed = (uint64_t)n, -1;
    case O_DAMP:
        if (!cli_parse_double(v, &o->calib.damp) || !(o->calib.damp > 0 && o->calib.damp < 10))
            return cli_usage_error(c, "--damp needs a number in (0, 10)");
        return -1;
    case O_ACT_ORDER: return o->calib.act_order = true, -1;
    case O_AWQ_FOLD_ONLY: return o->calib.awq_fold_only = true, -1;
    case O_REQUANTIZE: return a->requant = true, -1;
    case O_ALLOW_NONFINITE: return o->allow_nonfinite = true, -1;
    case O_PAD_INTERMEDIATE:
        if (!cli_parse_int(v, 1, 1 << 20, &n))
            return cli_usage_error(c, "--pad-intermediate takes a multiple in 1..1048576 (e.g. 1024: 8 shards of "
                                      "groups of 128)");
        return o->pad_intermediate = n, -1;
    case O_IMATRIX: return o->imatrix = v, -1;
    case O_SAVE_IMATRIX: return o->save_imatrix = v, -1;
    case O_IMATRIX_DAT: return o->save_imatrix_dat = true, -1;
    case O_THREADS:
        if (!cli_parse_int(v, 1, 1024, &n))
            return cli_usage_error(c, "%s needs a thread count in 1..1024", opt->name);
        return o->n_threads = (int)n, -1;
    }
    return -1;
}

/* Reads the command line into a. Returns -1 to go on, or the exit code. */
static int parse(cli *c, args *a, int argc, char **argv)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const struct option *opt = NULL;
        for (size_t k = 0; k < sizeof OPTIONS / sizeof *OPTIONS && !opt; k++)
            if (!strcmp(arg, OPTIONS[k].name) || (OPTIONS[k].alias && !strcmp(arg, OPTIONS[k].alias)))
                opt = &OPTIONS[k];
        if (!opt && arg[0] == '-' && arg[1])
            return cli_usage_error(c, "unknown option '%s'", arg);
        if (!opt) {
            if (a->in)
                return cli_usage_error(c, "unexpected argument '%s'", arg);
            a->in = arg;
            continue;
        }
        const char *v = opt->takes_value ? (i + 1 < argc ? argv[++i] : NULL) : NULL;
        if (opt->takes_value && !v)
            return cli_usage_error(c, "%s needs a value", arg);
        a->shapes |= opt->shapes;
        int rc = set_option(c, a, opt, v);
        if (rc >= 0)
            return rc;
    }
    return -1;
}

/* Options that contradict the target or each other, refused before the input is opened. */
static int check_target(cli *c, args *a)
{
    qpk_convert_opts *o = &a->o;
    if (!a->in)
        return cli_usage_error(c, "missing MODEL_DIR");
    if (!a->out)
        return cli_usage_error(c, "missing -o OUT.qpk");
    size_t out_len = strlen(a->out);
    o->to = out_len >= 5 && !strcmp(a->out + out_len - 5, ".gguf") ? QPK_OUT_GGUF : QPK_OUT_QPK;
    for (int k = QPK_OUT_QPK; a->to && k <= QPK_OUT_LAST; k++)
        if (!strcmp(a->to, qpk_output_name((qpk_output)k)))
            o->to = (qpk_output)k;
    const bool to_folder = qpk_output_is_folder(o->to), group_given = a->shapes & FOR_GROUP;
    if (a->requant && o->to != QPK_OUT_GGUF && o->to != QPK_OUT_QPK)
        return cli_usage_error(c, "--requantize makes act-order linears fit GGUF: it goes with --to gguf (or --to qpk, "
                                  "for the .qpk such a GGUF is made from)");
    if ((a->shapes & FOR_FOLDER) && !to_folder)
        return cli_usage_error(c, "--shard-size and --gptq-format shape model folders: they go with --to gptq, awq, "
                                  "compressed-tensors or mlx");
    if (o->gptq_v2 && o->to != QPK_OUT_GPTQ)
        return cli_usage_error(c, "--gptq-format goes with --to gptq");
    if ((a->shapes & FOR_SPLIT) && o->to != QPK_OUT_GGUF)
        return cli_usage_error(c, "--split-max-size and --split-max-tensors split a GGUF into a set: they go with "
                                  "--to gguf");
    if (o->to == QPK_OUT_GGUF && !group_given)
        o->group = 32;
    if (o->to == QPK_OUT_MLX && !group_given)
        o->group = 64; /* mlx-lm's default */
    const bool fixed_block = o->preset || (o->quant && qpk_type_info_of((uint32_t)o->quant)->block);
    if (fixed_block && group_given)
        return cli_usage_error(c, "ggml's block types (K-quants, i-quants) and presets fix their blocks: leave out "
                                  "--group");
    if (o->quant && o->preset)
        return cli_usage_error(c, "give --quant or --preset, not both");
    if (o->to == QPK_OUT_GGUF && o->quant && !fixed_block && o->group != 32)
        return cli_usage_error(c, "GGUF's Q8_0, Q4_0 and Q4_1 hold groups of 32: leave out --group or give 32");
    return -1;
}

/* Options that do nothing for this input, refused rather than ignored. */
static int check_input(cli *c, args *a)
{
    qpk_convert_opts *o = &a->o;
    qpk_input_kind kind;
    qpk_err e = {0};
    const bool model_opts = a->shapes & FOR_MODEL, gptq_opts = a->shapes & FOR_GPTQ,
               windows = a->shapes & FOR_WINDOWS;
    if (qpk_identify(a->in, &kind, &e) != QPK_OK)
        return cli_fail(c, &e);
    if (kind != QPK_INPUT_FOLDER && kind != QPK_INPUT_QPK && kind != QPK_INPUT_GGUF) {
        qpk_err_setf(&e, QPK_E_UNSUPPORTED,
                     "'%s' is %s: qconvert reads a Hugging Face model folder, a .qpk file or a GGUF file", a->in,
                     qpk_input_kind_name(kind));
        return cli_fail(c, &e);
    }
    if (kind == QPK_INPUT_GGUF && o->to != QPK_OUT_QPK)
        return cli_usage_error(c, "%s is a GGUF: qconvert reads it into a .qpk (its tensors as they are)", a->in);
    if (kind == QPK_INPUT_QPK && o->to == QPK_OUT_QPK && !a->requant && !o->pad_intermediate)
        return cli_usage_error(c, "%s is already a .qpk: it can be re-packed as GGUF, GPTQ, AWQ, compressed-tensors or "
                                  "MLX (--to gguf|gptq|awq|compressed-tensors|mlx), or padded (--pad-intermediate)",
                               a->in);
    if (kind == QPK_INPUT_GGUF &&
        (model_opts || gptq_opts || windows || o->calib.awq_fold_only || a->calib_path || a->requant))
        return cli_usage_error(c, "a GGUF is read with its tensors as they are: the quantization options apply to a "
                                  "Hugging Face folder");
    if (kind != QPK_INPUT_FOLDER) {
        if (model_opts || gptq_opts || windows || o->calib.awq_fold_only || (a->calib_path && !a->requant))
            return cli_usage_error(c, "a .qpk is re-packed with its tensors as they are: --dtype, --quant, --group, "
                                      "--keep, --embed-type, --method and the calibration options apply to a Hugging "
                                      "Face folder");
        return -1;
    }
    if (a->n_embed > 1)
        return cli_usage_error(c, "--embed-type given twice");
    if (gptq_opts && !qpk_method_uses_gptq(o->method))
        return cli_usage_error(c, "--damp and --act-order are GPTQ's: they go with --method gptq or awq+gptq");
    if (o->calib.awq_fold_only && o->method != QPK_METHOD_AWQ)
        return cli_usage_error(c, "--awq-fold-only goes with --method awq");
    if (windows && o->method == QPK_METHOD_RTN)
        return cli_usage_error(c, "--calib-samples, --calib-len and --seed choose calibration windows: they go with "
                                  "--method gptq or awq");
    bool quantized_rule = false;
    for (size_t k = 0; k < a->n_rules; k++)
        quantized_rule |= qpk_type_is_quantized((uint32_t)a->rules[k].type);
    if ((a->shapes & FOR_GROUP) && !o->quant && !o->preset && !quantized_rule)
        return cli_usage_error(c, "--group sets the group of quantized tensors: give --quant (or a --keep rule with a "
                                  "quantized type)");
    if (o->method != QPK_METHOD_RTN && !o->quant && !o->preset)
        return cli_usage_error(c, "--method %s needs --quant or --preset", qpk_method_name(o->method));
    if (o->imatrix && o->method == QPK_METHOD_RTN)
        o->method = QPK_METHOD_IMATRIX; /* an importance matrix is what --method imatrix weighs with */
    if (o->save_imatrix_dat && !o->save_imatrix)
        return cli_usage_error(c, "--imatrix-dat chooses the legacy form of --save-imatrix's file");
    if (o->method != QPK_METHOD_RTN && !a->calib_path && !o->imatrix)
        return cli_usage_error(c, "--method %s needs calibration data: --calib TEXT or --calib-tokens FILE",
                               qpk_method_name(o->method));
    if (o->method == QPK_METHOD_RTN && a->calib_path && !a->requant)
        return cli_usage_error(c, "calibration data goes with --method gptq or awq (or --requantize, to measure on)");
    return -1;
}

int main(int argc, char **argv)
{
    cli c;
    cli_init(&c, "qconvert");
    args a = {.o = {.dtype = -1, .group = 128}};
    int rc = parse(&c, &a, argc, argv);
    if (rc < 0)
        rc = check_target(&c, &a);
    if (rc < 0)
        rc = check_input(&c, &a);
    if (rc < 0 && a.calib_path && qpk_same_file(a.out, a.calib_path))
        rc = cli_usage_error(&c, "the output '%s' is the calibration file: refusing to replace an input", a.out);
    if (rc >= 0)
        return rc;
    char *cmd = cli_command_line(argc, argv);
    a.o.command = cmd, a.o.cb = cli_callbacks(&c);
    a.o.rules = a.rules, a.o.n_rules = a.n_rules, a.o.requantize = a.requant;
    rc = convert(&c, a.in, a.out, &a.o, a.calib_path, a.calib_text);
    free(cmd);
    return rc;
}
