/* qgen: write a random-weight Hugging Face checkpoint of the Qwen family, of any shape. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "gen.h"

static void usage(void)
{
    printf("Usage: qgen OUT_DIR [options]\n"
           "\n"
           "Writes a Hugging Face checkpoint of the Qwen family with random weights:\n"
           "config.json, generation_config.json, model.safetensors (or shards and their\n"
           "index), each expert of a mixture-of-experts model a tensor of its own as the\n"
           "Hugging Face checkpoints store them. For tests, benchmarks and the demo; the\n"
           "weights mean nothing.\n"
           "\n"
           "Options:\n"
           "      --preset NAME       a released shape or a tiny one (default tiny):\n");
    for (size_t i = 0; qpk_gen_preset_name(i); i++)
        printf("        %-18s %s\n", qpk_gen_preset_name(i), qpk_gen_preset_about(qpk_gen_preset_name(i)));
    printf("      --arch A            qwen2 | qwen2_moe | qwen3 | qwen3_moe (default: the preset's)\n"
           "      --hidden N          hidden_size\n"
           "      --layers N          num_hidden_layers\n"
           "      --heads N           num_attention_heads\n"
           "      --kv-heads N        num_key_value_heads (GQA when smaller than heads)\n"
           "      --head-dim N        head_dim (default: qwen3 presets' own, else hidden / heads)\n"
           "      --intermediate N    intermediate_size (dense layers)\n"
           "      --vocab N           vocab_size\n"
           "      --max-position N    max_position_embeddings\n"
           "      --rope-theta X      rope_theta\n"
           "      --yarn FACTOR       rope_scaling {type yarn, factor FACTOR}\n"
           "      --yarn-original L   its original_max_position_embeddings (default: max positions)\n"
           "      --attention-bias    qwen3 family: biases on q/k/v/o\n"
           "      --tied | --untied   tie_word_embeddings\n"
           "      --lm-head           when tied, also store lm_head.weight (a copy)\n"
           "Mixture of experts (qwen2_moe, qwen3_moe; a dense preset made MoE by --arch gets 8\n"
           "experts, top 2, experts and the shared one as wide as --intermediate):\n"
           "      --experts N         num_experts\n"
           "      --experts-used K    num_experts_per_tok\n"
           "      --moe-intermediate N  moe_intermediate_size (each expert's)\n"
           "      --shared-intermediate N  shared_expert_intermediate_size (qwen2_moe)\n"
           "      --norm-topk | --no-norm-topk  norm_topk_prob\n"
           "      --sparse-step N     decoder_sparse_step\n"
           "      --mlp-only L,L,...  mlp_only_layers: dense layers (\"\" for none)\n"
           "Files:\n"
           "      --dtype T           f32 | f16 | bf16 (default bf16)\n"
           "      --shards N          split into N shards with model.safetensors.index.json\n"
           "      --config-only       write config.json and generation_config.json, no weights\n"
           "      --seed N            random seed (default 1)\n"
           "  -q, --quiet             no progress\n"
           "  -h, --help              this help\n");
}

static bool is_qwen3(qpk_arch a) { return a == QPK_ARCH_QWEN3 || a == QPK_ARCH_QWEN3_MOE; }
static bool is_moe(qpk_arch a) { return a == QPK_ARCH_QWEN2_MOE || a == QPK_ARCH_QWEN3_MOE; }

/* "3,5,7" (or "" for none) into a layer bitset; false on anything else. */
static bool parse_layers(const char *s, uint64_t bits[QPK_MAX_LAYERS / 64])
{
    memset(bits, 0, QPK_MAX_LAYERS / 64 * sizeof *bits);
    if (!s)
        return false;
    while (*s) {
        char *end;
        long v = strtol(s, &end, 10);
        if (end == s || *s < '0' || *s > '9' || v >= QPK_MAX_LAYERS || (*end && *end != ','))
            return false;
        bits[v / 64] |= 1ull << (v % 64);
        s = *end ? end + 1 : end;
        if (*end && !*s)
            return false; /* a trailing comma */
    }
    return true;
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
            return cli_usage_error(&c, "unknown preset '%s' (qgen --help lists them)", argv[i + 1]);
    qpk_config *cf = &sp.cfg;
    const qpk_arch preset_arch = cf->arch;
    const qpk_yarn preset_yarn = cf->yarn;
    qpk_arch arch = cf->arch;
    bool head_dim_given = false, attention_bias = false, mlp_only_given = false;
    const char *moe_flag = NULL, *shared_flag = NULL; /* the first such option given, for messages */
    double yarn = 0;
    long long yarn_original = 0;
    uint64_t mlp_only[QPK_MAX_LAYERS / 64];
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        long long n = 0;
        int64_t *field = NULL;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
            usage();
            return 0;
        } else if (!strcmp(a, "--preset")) {
            if (!v)
                return cli_usage_error(&c, "--preset takes a name (qgen --help lists them)");
            i++;
        } else if (!strcmp(a, "--arch")) {
            int k = 0;
            while (k < QPK_ARCH_COUNT_ && !(v && !strcmp(v, qpk_arch_name((qpk_arch)k))))
                k++;
            if (k == QPK_ARCH_COUNT_)
                return cli_usage_error(&c, "--arch takes qwen2, qwen2_moe, qwen3 or qwen3_moe");
            arch = (qpk_arch)k;
            i++;
        } else if (!strcmp(a, "--tied") || !strcmp(a, "--untied")) {
            cf->tie_word_embeddings = !strcmp(a, "--tied");
        } else if (!strcmp(a, "--lm-head")) {
            sp.lm_head_when_tied = true;
        } else if (!strcmp(a, "--config-only")) {
            sp.config_only = true;
        } else if (!strcmp(a, "--attention-bias")) {
            attention_bias = true;
        } else if (!strcmp(a, "--norm-topk") || !strcmp(a, "--no-norm-topk")) {
            cf->norm_topk_prob = !strcmp(a, "--norm-topk");
            moe_flag = moe_flag ? moe_flag : a;
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
        } else if (!strcmp(a, "--yarn")) {
            if (!cli_parse_double(v, &yarn) || !(yarn >= 1) || yarn > 1024)
                return cli_usage_error(&c, "--yarn takes a factor from 1 to 1024");
            i++;
        } else if (!strcmp(a, "--yarn-original")) {
            if (!cli_parse_int(v, 1, 1LL << 24, &yarn_original))
                return cli_usage_error(&c, "--yarn-original takes a positive number of positions");
            i++;
        } else if (!strcmp(a, "--mlp-only")) {
            if (!parse_layers(v, mlp_only))
                return cli_usage_error(&c, "--mlp-only takes layer numbers separated by commas, or \"\" for none");
            mlp_only_given = true;
            moe_flag = moe_flag ? moe_flag : a;
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
                   (!strcmp(a, "--head-dim") && (field = &cf->head_dim)) ||
                   (!strcmp(a, "--intermediate") && (field = &cf->intermediate_size)) ||
                   (!strcmp(a, "--vocab") && (field = &cf->vocab_size)) ||
                   (!strcmp(a, "--max-position") && (field = &cf->max_position_embeddings)) ||
                   (!strcmp(a, "--experts") && (field = &cf->n_experts)) ||
                   (!strcmp(a, "--experts-used") && (field = &cf->n_experts_used)) ||
                   (!strcmp(a, "--moe-intermediate") && (field = &cf->moe_intermediate_size)) ||
                   (!strcmp(a, "--sparse-step") && (field = &cf->decoder_sparse_step)) ||
                   (!strcmp(a, "--shared-intermediate") && (field = &cf->shared_expert_intermediate_size))) {
            if (!cli_parse_int(v, 1, 1LL << 24, &n))
                return cli_usage_error(&c, "%s takes a positive number", a);
            *field = n;
            head_dim_given |= field == &cf->head_dim;
            if (field == &cf->shared_expert_intermediate_size)
                shared_flag = shared_flag ? shared_flag : a;
            else if (field == &cf->n_experts || field == &cf->n_experts_used || field == &cf->moe_intermediate_size ||
                     field == &cf->decoder_sparse_step)
                moe_flag = moe_flag ? moe_flag : a;
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
    cf->arch = arch;
    /* Options that the architecture has no key for would be dropped from config.json without a word. */
    if (!is_moe(arch) && (moe_flag || shared_flag))
        return cli_usage_error(&c, "%s applies to qwen2_moe and qwen3_moe, not %s", moe_flag ? moe_flag : shared_flag,
                               qpk_arch_name(arch));
    if (arch == QPK_ARCH_QWEN3_MOE && shared_flag)
        return cli_usage_error(&c, "%s applies to qwen2_moe: qwen3_moe has no shared expert", shared_flag);
    if (attention_bias && !is_qwen3(arch))
        return cli_usage_error(&c, "--attention-bias applies to qwen3 and qwen3_moe (the qwen2 family always has "
                               "q/k/v biases and never an o_proj bias)");
    cf->attention_bias = attention_bias;
    if (!is_moe(arch)) {
        cf->n_experts = cf->n_experts_used = cf->moe_intermediate_size = cf->shared_expert_intermediate_size = 0;
        cf->decoder_sparse_step = 0, cf->norm_topk_prob = false;
        memset(cf->mlp_only_layers, 0, sizeof cf->mlp_only_layers);
    } else {
        /* A dense preset made sparse: a small mixture, each expert as wide as the dense MLP. */
        cf->n_experts = cf->n_experts ? cf->n_experts : 8;
        cf->n_experts_used = cf->n_experts_used ? cf->n_experts_used : (cf->n_experts < 2 ? cf->n_experts : 2);
        cf->moe_intermediate_size = cf->moe_intermediate_size ? cf->moe_intermediate_size : cf->intermediate_size;
        if (arch == QPK_ARCH_QWEN3_MOE)
            cf->shared_expert_intermediate_size = 0;
        else if (!cf->shared_expert_intermediate_size)
            cf->shared_expert_intermediate_size = cf->intermediate_size;
        cf->decoder_sparse_step = cf->decoder_sparse_step ? cf->decoder_sparse_step : 1;
        if (mlp_only_given)
            memcpy(cf->mlp_only_layers, mlp_only, sizeof mlp_only);
        for (int l = 0; l < QPK_MAX_LAYERS; l++)
            if (l >= cf->n_layers && (cf->mlp_only_layers[l / 64] >> (l % 64) & 1)) {
                if (mlp_only_given)
                    return cli_usage_error(&c, "--mlp-only names layer %d, but the model has %lld layers", l,
                                           (long long)cf->n_layers);
                cf->mlp_only_layers[l / 64] &= ~(1ull << (l % 64)); /* a preset's, past --layers */
            }
    }
    /* Qwen3's config.json states head_dim; Qwen2's derive it, so it follows --hidden and --heads. */
    if (!head_dim_given && !(is_qwen3(arch) && is_qwen3(preset_arch))) {
        if (cf->hidden_size % cf->n_heads != 0)
            return cli_usage_error(&c, "hidden size %lld is not a multiple of %lld heads: give --head-dim",
                                   (long long)cf->hidden_size, (long long)cf->n_heads);
        cf->head_dim = cf->hidden_size / cf->n_heads;
    }
    for (int i = 0; i < cf->n_eos; i++)
        if (cf->eos_token_ids[i] >= cf->vocab_size)
            cf->eos_token_ids[i] = cf->vocab_size - 1;
    if (cf->bos_token_id >= cf->vocab_size)
        cf->bos_token_id = -1;
    qpk_err e = {0};
    if (yarn_original && !yarn && !preset_yarn.factor)
        return cli_usage_error(&c, "--yarn-original goes with --yarn (or a preset with YaRN)");
    if (yarn || yarn_original) {
        long long L = yarn_original ? yarn_original : yarn ? 0 : preset_yarn.original_max_position_embeddings;
        if (qpk_gen_set_yarn(cf, yarn ? yarn : preset_yarn.factor, L, &e) != QPK_OK)
            return cli_usage_error(&c, "the options describe no model qpk reads: %s", e.msg);
    }
    /* The options are the input: a model the parser refuses is a usage error, said in config.json's words. */
    char *text = qpk_config_to_json(cf);
    qpk_config check;
    qpk_status s = text ? qpk_config_parse(&check, text, strlen(text), &e)
                        : qpk_err_setf(&e, QPK_E_NOMEM, "out of memory");
    free(text);
    if (s == QPK_E_NOMEM)
        return cli_fail(&c, &e);
    if (s != QPK_OK)
        return cli_usage_error(&c, "the options describe no model qpk reads: %s", e.msg);
    qpk_callbacks cb = cli_callbacks(&c);
    if (qpk_gen_write(&sp, dir, &cb, &e) != QPK_OK)
        return cli_fail(&c, &e);
    cli_progress_done(&c);
    return 0;
}
