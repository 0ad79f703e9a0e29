/* qverify: perplexity of a model, and its logits compared with a reference. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "qpk/verify.h"

static void usage(void)
{
    printf("Usage: qverify MODEL [--tokens FILE | --text FILE] [--ref REF] [options]\n"
           "\n"
           "MODEL is a .qpk file, a Hugging Face model folder (read in memory, no\n"
           "conversion file written) or a GGUF file (its tensors computed with\n"
           "exactly as ggml dequantizes them; its tokenizer from its tokenizer.ggml keys).\n"
           "\n"
           "  --tokens FILE     raw little-endian int32 token ids: perplexity in llama.cpp's\n"
           "                    convention (non-overlapping chunks of -c tokens, each from an\n"
           "                    empty cache, no BOS, the second half of each chunk scored)\n"
           "  --text FILE       UTF-8 text, tokenized with MODEL's tokenizer (a .qpk's\n"
           "                    embedded tokenizer.json, or the folder's) as one string,\n"
           "                    special-token strings kept as text; then as --tokens\n"
           "  --ref REF         a reference to compare the logits with:\n"
           "                    - a reference-logits .safetensors file (tensors tokens [S, T],\n"
           "                      logits [S, T, V]): its token sequences are evaluated and all\n"
           "                      positions compared; --tokens is not used;\n"
           "                    - another model (.qpk, HF folder or GGUF), run on the --tokens\n"
           "                      chunks; the scored positions are compared.\n"
           "\n"
           "Options:\n"
           "  -c, --ctx N       chunk length in tokens (default 512)\n"
           "      --score-all   score every position after the first of each chunk\n"
           "      --chunks N    use only the first N chunks (or reference sequences)\n"
           "  -t, --threads N   threads (default: all cores); results do not depend on it\n"
           "      --scalar      use the scalar kernels (for testing)\n"
           "      --json        print one JSON object (schema in README) instead of text\n"
           "  -q, --quiet       no per-chunk perplexity line\n"
           "\n"
           "Gates (exit status 1, naming the gate, when one fails):\n"
           "      --max-kld X   mean KL divergence at most X\n"
           "      --min-top1 P  top-1 agreement at least P percent\n"
           "      --max-abs D   largest absolute logit difference at most D\n"
           "      --max-dppl R  |ppl - ppl_ref| / ppl_ref at most R (0.01 = 1%%)\n"
           "      --max-ppl X   perplexity at most X\n"
           "\n"
           "Exit codes: 0 ok, 1 a gate failed, 2 usage, 3 bad input, 4 I/O error,\n"
           "5 internal, 130 interrupted.\n");
}

static void on_chunk(void *ud, int chunk, int n_chunks, double ppl)
{
    cli *c = ud;
    if (c->quiet)
        return;
    cli_progress_done(c);
    printf("%s[%d]%.4f", chunk ? "," : "", chunk + 1, ppl);
    if (chunk + 1 == n_chunks)
        printf("\n");
    fflush(stdout);
}

static void add_num(cJSON *o, const char *key, double v)
{
    if (isnan(v))
        cJSON_AddNullToObject(o, key);
    else
        cJSON_AddNumberToObject(o, key, v);
}

static void print_json(const qpk_verify_result *r, const char *model, const char *ref, const char *kernels,
                       int threads, cJSON *failed)
{
    cJSON *o = cJSON_CreateObject();
    char *safe = cli_json_safe(model, strlen(model));
    cJSON_AddStringToObject(o, "model", safe ? safe : "");
    free(safe);
    if (ref && (safe = cli_json_safe(ref, strlen(ref)))) {
        cJSON_AddStringToObject(o, "ref", safe);
        free(safe);
    } else
        cJSON_AddNullToObject(o, "ref");
    cJSON_AddNumberToObject(o, "n_ctx", r->n_ctx);
    cJSON_AddNumberToObject(o, "n_chunks", r->n_chunks);
    cJSON_AddNumberToObject(o, "n_tokens", (double)r->n_tokens);
    cJSON_AddNumberToObject(o, "n_scored", (double)r->n_scored);
    cJSON_AddNumberToObject(o, "n_compared", (double)r->n_compared);
    add_num(o, "ppl", r->ppl);
    add_num(o, "ppl_stderr", r->ppl_stderr);
    add_num(o, "ppl_ref", r->ppl_ref);
    add_num(o, "ppl_ref_stderr", r->ppl_ref_stderr);
    add_num(o, "dppl_rel", r->dppl_rel);
    add_num(o, "max_abs_diff", r->max_abs_diff);
    add_num(o, "mean_abs_diff", r->mean_abs_diff);
    add_num(o, "top1_pct", r->top1_pct);
    add_num(o, "kld_mean", r->kld_mean);
    add_num(o, "kld_p50", r->kld_p50);
    add_num(o, "kld_p90", r->kld_p90);
    add_num(o, "kld_p99", r->kld_p99);
    add_num(o, "kld_p999", r->kld_p999);
    add_num(o, "kld_max", r->kld_max);
    add_num(o, "dp_mean", r->dp_mean);
    cJSON_AddStringToObject(o, "kernels", kernels);
    cJSON_AddNumberToObject(o, "threads", threads);
    cJSON_AddNumberToObject(o, "seconds", r->seconds);
    cJSON_AddItemToObject(o, "gates_failed", failed);
    char *s = cJSON_Print(o);
    printf("%s\n", s);
    free(s);
    cJSON_Delete(o);
}

static void print_text(const qpk_verify_result *r, bool compared)
{
    printf("tokens         %llu evaluated in %d chunk(s) of %d; %llu scored, %llu compared (%.1f s)\n",
           (unsigned long long)r->n_tokens, r->n_chunks, r->n_ctx, (unsigned long long)r->n_scored,
           (unsigned long long)r->n_compared, r->seconds);
    printf("perplexity     %.4f +/- %.4f\n", r->ppl, r->ppl_stderr);
    if (!compared)
        return;
    printf("reference ppl  %.4f +/- %.4f  (change %+.4f%%)\n", r->ppl_ref, r->ppl_ref_stderr, 100.0 * r->dppl_rel);
    printf("logits         max |diff| %.4g, mean |diff| %.4g\n", r->max_abs_diff, r->mean_abs_diff);
    printf("top-1          %.3f%% agreement\n", r->top1_pct);
    printf("KL divergence  mean %.6g; p50 %.4g, p90 %.4g, p99 %.4g, p99.9 %.4g, max %.4g\n", r->kld_mean, r->kld_p50,
           r->kld_p90, r->kld_p99, r->kld_p999, r->kld_max);
    printf("delta p        mean %+.6f (probability of the correct token, model - reference)\n", r->dp_mean);
}

int main(int argc, char **argv)
{
    cli c;
    cli_init(&c, "qverify");
    const char *model_path = NULL, *tokens_path = NULL, *text_path = NULL, *ref_path = NULL;
    bool json = false, gate_set[QPK_GATE_COUNT_] = {false};
    double gate_limit[QPK_GATE_COUNT_] = {0};
    qpk_verify_opts o = {.n_ctx = 512};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long n;
        int g = -1;
        for (int k = 0; k < QPK_GATE_COUNT_; k++)
            if (!strncmp(a, "--", 2) && !strcmp(a + 2, qpk_gate_name((qpk_gate)k)))
                g = k;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (!strcmp(a, "--version")) {
            printf("qverify %s\n", QPK_VERSION_STRING);
            return 0;
        } else if (g >= 0) {
            if (!cli_parse_double(v, &gate_limit[g]) || !isfinite(gate_limit[g]))
                return cli_usage_error(&c, "%s needs a number", a);
            gate_set[g] = true, i++;
        } else if (!strcmp(a, "--tokens") || !strcmp(a, "--text") || !strcmp(a, "--ref")) {
            if (!v)
                return cli_usage_error(&c, "%s needs a path", a);
            *(!strcmp(a, "--tokens") ? &tokens_path : !strcmp(a, "--text") ? &text_path : &ref_path) = v, i++;
        } else if (!strcmp(a, "-c") || !strcmp(a, "--ctx")) {
            if (!cli_parse_int(v, 2, 1 << 24, &n))
                return cli_usage_error(&c, "%s needs a chunk length of at least 2", a);
            o.n_ctx = (int)n, i++;
        } else if (!strcmp(a, "--chunks")) {
            if (!cli_parse_int(v, 1, 1 << 30, &n))
                return cli_usage_error(&c, "--chunks needs a positive count");
            o.max_chunks = (int)n, i++;
        } else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) {
            if (!cli_parse_int(v, 1, 1024, &n))
                return cli_usage_error(&c, "%s needs a thread count in 1..1024", a);
            o.n_threads = (int)n, i++;
        } else if (!strcmp(a, "--score-all")) {
            o.score_all = true;
        } else if (!strcmp(a, "--scalar")) {
            o.scalar = true;
        } else if (!strcmp(a, "--json")) {
            json = true;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            c.quiet = true;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(&c, "unknown option '%s'", a);
        } else if (!model_path) {
            model_path = a;
        } else {
            return cli_usage_error(&c, "unexpected argument '%s'", a);
        }
    }
    if (!model_path)
        return cli_usage_error(&c, "missing MODEL");
    if (tokens_path && text_path)
        return cli_usage_error(&c, "give --tokens or --text, not both");
    const char *input_path = tokens_path ? tokens_path : text_path; /* the evaluation input, either kind */
    if (!input_path && !ref_path)
        return cli_usage_error(&c, "nothing to measure: give --tokens FILE (or --text FILE) and/or --ref REF");
    if (json)
        c.quiet = true;
    qpk_callbacks cb = cli_callbacks(&c);
    qpk_err e = {0};
    qpk_source *model = NULL, *ref = NULL;
    int32_t *tokens = NULL;
    size_t n_tokens = 0;
    qpk_verify_result r;
    o.cb = cb, o.on_chunk = on_chunk;
    qpk_model *mm = NULL, *rm = NULL; /* the runtime models over the two sources */
    const qpk_source_opts mo = {.cb = cb}, ro = {.allow_logits = true, .cb = cb};
    qpk_status s = qpk_source_open(&model, model_path, &mo, &e);
    if (s == QPK_OK && ref_path)
        s = qpk_source_open(&ref, ref_path, &ro, &e);
    bool logits_ref = ref && qpk_source_kind_of(ref) == QPK_SOURCE_LOGITS;
    if (s == QPK_OK && logits_ref && input_path) {
        qpk_source_close(model), qpk_source_close(ref);
        return cli_usage_error(&c, "%s does not apply to a reference-logits file (its own tokens are used)",
                               tokens_path ? "--tokens" : "--text");
    }
    if (s == QPK_OK && ref && !logits_ref && !input_path) {
        qpk_source_close(model), qpk_source_close(ref);
        return cli_usage_error(&c, "comparing with another model needs --tokens FILE or --text FILE");
    }
    for (int g = 0; g < QPK_GATE_COUNT_ && s == QPK_OK; g++)
        if (gate_set[g] && qpk_gate_needs_ref((qpk_gate)g) && !ref) {
            qpk_source_close(model);
            return cli_usage_error(&c, "--%s needs --ref", qpk_gate_name((qpk_gate)g));
        }
    if (s == QPK_OK && tokens_path)
        s = qpk_read_tokens(tokens_path, &tokens, &n_tokens, &e);
    if (s == QPK_OK && text_path)
        s = qpk_source_tokenize_file(model, text_path, &tokens, &n_tokens, NULL, &e);
    if (s == QPK_OK && !c.quiet) {
        printf("qverify: ");
        cli_print_msg(stdout, model_path);
        if (ref_path) {
            printf(" vs ");
            cli_print_msg(stdout, ref_path);
        }
        putchar('\n');
    }
    if (s == QPK_OK)
        s = qpk_model_from_source(&mm, model, &e);
    if (s == QPK_OK && ref && !logits_ref)
        s = qpk_model_from_source(&rm, ref, &e);
    if (s == QPK_OK)
        s = logits_ref ? qpk_verify_ref_file(mm, qpk_source_logits(ref), &o, &r, &e)
                       : qpk_verify_tokens(mm, rm, tokens, n_tokens, &o, &r, &e);
    free(tokens);
    qpk_model_free(mm);
    qpk_model_free(rm);
    qpk_source_close(model);
    qpk_source_close(ref);
    if (s != QPK_OK)
        return cli_fail(&c, &e);
    cli_progress_done(&c);
    cJSON *failed = cJSON_CreateArray();
    char lines[QPK_GATE_COUNT_][160];
    int n_failed = 0;
    for (int g = 0; g < QPK_GATE_COUNT_; g++) {
        double value;
        if (!gate_set[g] || qpk_gate_passes((qpk_gate)g, gate_limit[g], &r, &value))
            continue;
        cJSON_AddItemToArray(failed, cJSON_CreateString(qpk_gate_name((qpk_gate)g)));
        snprintf(lines[n_failed++], sizeof lines[0], "gate failed: --%s %g (measured %g)", qpk_gate_name((qpk_gate)g),
                 gate_limit[g], value);
    }
    if (json) { /* takes ownership of failed */
        print_json(&r, model_path, ref_path, o.scalar ? "scalar" : qpk_kernels_best()->name,
                   o.n_threads ? o.n_threads : (int)sysconf(_SC_NPROCESSORS_ONLN), failed);
    } else {
        print_text(&r, ref != NULL);
        cJSON_Delete(failed);
    }
    for (int i = 0; i < n_failed; i++)
        fprintf(stderr, "qverify: %s\n", lines[i]);
    return n_failed ? QPK_EXIT_CHECK_FAILED : QPK_EXIT_OK;
}
