/*
 * A small random Hugging Face checkpoint of one Qwen-family architecture, for
 * llamacpp_test.sh: rows of 256 (K-quant super-blocks), vocabulary 320 (tests/data/tiny256's
 * tokenizer, padded), f32 weights, so a GGUF of it is exact and llama.cpp's logits can be
 * compared with qpk's without a quantizer in between. Each architecture is set up to use
 * what llama.cpp reads for it: YaRN with an attention factor of its own (rope.scaling.
 * attn_factor), an untied head and a shared expert (qwen2moe), heads wider than
 * hidden / heads (qwen3, qwen3moe), 8 experts (llama-quantize's 8-expert rules).
 *
 *   family_gen OUT_DIR qwen2-yarn|qwen2moe|qwen3|qwen3moe [SEED]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gen.h"

int main(int argc, char **argv)
{
    if (argc != 3 && argc != 4) {
        fprintf(stderr, "usage: family_gen OUT_DIR qwen2-yarn|qwen2moe|qwen3|qwen3moe [SEED]\n");
        return 2;
    }
    const char *arch = argv[2];
    qpk_gen_spec sp;
    qpk_gen_preset("tiny", &sp);
    qpk_config *c = &sp.cfg;
    c->hidden_size = 256, c->n_layers = 2, c->n_heads = 4, c->n_kv_heads = 2, c->head_dim = 64;
    c->intermediate_size = 256, c->vocab_size = 320, c->max_position_embeddings = 32768;
    c->n_eos = 1, c->eos_token_ids[0] = 266, c->bos_token_id = -1; /* tiny256's <|endoftext|> */
    sp.dtype = QPK_ST_F32;
    if (!strcmp(arch, "qwen2-yarn")) {
        /* Qwen2.5's long-context setting, with positions past a short pretrained context so that
         * every part of the ramp matters; an attention factor that is not the default 1 + 0.1 ln 4. */
        c->arch = QPK_ARCH_QWEN2;
        c->max_position_embeddings = 4 * 64;
        c->yarn = (qpk_yarn){.factor = 4, .attention_factor = 1.25, .beta_fast = 32, .beta_slow = 1,
                             .original_max_position_embeddings = 64};
    } else if (!strcmp(arch, "qwen2moe")) {
        c->arch = QPK_ARCH_QWEN2_MOE, c->tie_word_embeddings = false;
        c->n_experts = 4, c->n_experts_used = 2, c->moe_intermediate_size = 128;
        c->shared_expert_intermediate_size = 256, c->decoder_sparse_step = 1;
    } else if (!strcmp(arch, "qwen3")) {
        c->arch = QPK_ARCH_QWEN3, c->head_dim = 128;
    } else if (!strcmp(arch, "qwen3moe")) {
        c->arch = QPK_ARCH_QWEN3_MOE, c->head_dim = 128, c->tie_word_embeddings = false;
        c->n_experts = 8, c->n_experts_used = 2, c->moe_intermediate_size = 256, c->decoder_sparse_step = 1;
        c->norm_topk_prob = true;
    } else {
        fprintf(stderr, "family_gen: unknown architecture '%s'\n", arch);
        return 2;
    }
    /* Seeds whose routers have no near-tie on the 2 x 128 tokens llamacpp_test.sh evaluates: the
     * k-th and (k+1)-th router logits differ by more than 1e-3 everywhere (measured with qpk's
     * runtime), 100x what llama.cpp's F16 KV cache moves them by (~1e-5): a tie there would
     * route a token differently in the two runtimes and compare two different computations. */
    sp.seed = argc == 4 ? strtoull(argv[3], NULL, 10) : c->arch == QPK_ARCH_QWEN2_MOE ? 4 : 9;
    qpk_err e = {0};
    if (qpk_config_check(c, &e) != QPK_OK || qpk_gen_write(&sp, argv[1], NULL, &e) != QPK_OK) {
        fprintf(stderr, "family_gen: %s\n", e.msg);
        return 1;
    }
    return 0;
}
