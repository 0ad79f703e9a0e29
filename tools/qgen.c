/* qgen: write a random-weight Hugging Face Qwen2 checkpoint of any shape. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gen.h"

static void usage(void)
{
    printf("Usage: qgen OUT_DIR [options]\n"
           "\n"
           "Writes a Hugging Face Qwen2 checkpoint with random weights: config.json,\n"
           "generation_config.json, model.safetensors (or shards and their index).\n"
           "For tests, benchmarks and the demo; the weights mean nothing.\n"
           "\n"
           "Options:\n"
           "      --preset NAME       tiny (default) | 0.5b | 1.8b | 4b | 7b | 14b | 32b | 72b\n"
           "                          (the released Qwen1.5 shapes; 32b uses GQA)\n"
           "      --hidden N          hidden_size\n"
           "      --layers N          num_hidden_layers\n"
           "      --heads N           num_attention_heads\n"
           "      --kv-heads N        num_key_value_heads (GQA when smaller than heads)\n"
           "      --intermediate N    intermediate_size\n"
           "      --vocab N           vocab_size\n"
           "      --rope-theta X      rope_theta\n"
           "      --tied | --untied   tie_word_embeddings\n"
           "      --lm-head           when tied, also store lm_head.weight (a copy)\n"
           "      --dtype T           f32 | f16 | bf16 (default bf16)\n"
           "      --shards N          split into N shards with model.safetensors.index.json\n"
           "      --seed N            random seed (default 1)\n"
           "  -q, --quiet             no progress\n"
           "  -h, --help              this help\n");
}

int main(int argc, char **argv)
{
    cli c;
    cli_init(&c, "qgen");
    const char *dir = NULL;
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp);
    /* The preset is applied first so that the other options override it, in any order. */
    for (int i = 1; i + 1 < argc; i++)
        if (!strcmp(argv[i], "--preset") && !qpk_gen_preset(argv[i + 1], &sp))
            return cli_usage_error(&c, "unknown preset '%s'", argv[i + 1]);
    qpk_config *cf = &sp.cfg;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long n = 0;
        int64_t *field = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (!strcmp(a, "--preset")) {
            i++;
        } else if (!strcmp(a, "--tied") || !strcmp(a, "--untied")) {
            cf->tie_word_embeddings = !strcmp(a, "--tied");
        } else if (!strcmp(a, "--lm-head")) {
            sp.lm_head_when_tied = true;
        } else if (!strcmp(a, "-q") || !strcmp(a, "--quiet")) {
            c.quiet = true;
        } else if (!strcmp(a, "--dtype")) {
            if (!v || (strcmp(v, "f32") && strcmp(v, "f16") && strcmp(v, "bf16")))
                return cli_usage_error(&c, "--dtype takes f32, f16 or bf16");
            sp.dtype = !strcmp(v, "f32") ? QPK_ST_F32 : !strcmp(v, "f16") ? QPK_ST_F16 : QPK_ST_BF16;
            i++;
        } else if (!strcmp(a, "--rope-theta")) {
            if (!cli_parse_double(v, &cf->rope_theta) || !(cf->rope_theta > 0))
                return cli_usage_error(&c, "--rope-theta takes a positive number");
            i++;
        } else if (!strcmp(a, "--shards") || !strcmp(a, "--seed")) {
            if (!cli_parse_int(v, !strcmp(a, "--seed") ? 0 : 1, !strcmp(a, "--seed") ? (1LL << 62) : 9999, &n))
                return cli_usage_error(&c, "%s takes a number", a);
            if (!strcmp(a, "--seed"))
                sp.seed = (uint64_t)n;
            else
                sp.n_shards = (int)n;
            i++;
        } else if ((!strcmp(a, "--hidden") && (field = &cf->hidden_size)) ||
                   (!strcmp(a, "--layers") && (field = &cf->n_layers)) ||
                   (!strcmp(a, "--heads") && (field = &cf->n_heads)) ||
                   (!strcmp(a, "--kv-heads") && (field = &cf->n_kv_heads)) ||
                   (!strcmp(a, "--intermediate") && (field = &cf->intermediate_size)) ||
                   (!strcmp(a, "--vocab") && (field = &cf->vocab_size))) {
            if (!cli_parse_int(v, 1, 1LL << 24, &n))
                return cli_usage_error(&c, "%s takes a positive number", a);
            *field = n;
            i++;
        } else if (a[0] == '-' && a[1]) {
            return cli_usage_error(&c, "unknown option '%s'", a);
        } else if (!dir) {
            dir = a;
        } else {
            return cli_usage_error(&c, "unexpected argument '%s'", a);
        }
    }
    if (!dir)
        return cli_usage_error(&c, "missing OUT_DIR");
    if (cf->n_heads && cf->hidden_size % cf->n_heads == 0)
        cf->head_dim = cf->hidden_size / cf->n_heads;
    for (int i = 0; i < cf->n_eos; i++)
        if (cf->eos_token_ids[i] >= cf->vocab_size)
            cf->eos_token_ids[i] = cf->vocab_size - 1;
    if (cf->bos_token_id >= cf->vocab_size)
        cf->bos_token_id = -1;
    qpk_callbacks cb = cli_callbacks(&c);
    qpk_err e = {0};
    if (qpk_gen_write(&sp, dir, &cb, &e) != QPK_OK)
        return cli_fail(&c, &e);
    cli_progress_done(&c);
    return 0;
}
