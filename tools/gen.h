/* Random-weight Hugging Face checkpoints of the Qwen family, of any shape (tests, benchmarks, demo). */
#ifndef QPK_TOOLS_GEN_H
#define QPK_TOOLS_GEN_H

#include "qpk/convert.h"

typedef struct qpk_gen_spec {
    qpk_config cfg;           /* architecture, shape, tie flag, rope, experts, token ids */
    qpk_st_dtype dtype;       /* F32, F16 or BF16 */
    int n_shards;             /* 1: model.safetensors; more: model-0000i-of-0000N + index */
    bool lm_head_when_tied;   /* also store lm_head.weight (a copy of the embedding) */
    bool config_only;         /* write config.json and generation_config.json, no weights */
    uint64_t seed;
} qpk_gen_spec;

/* A spec for a named preset (QPK_GEN_PRESETS); false for an unknown name. */
bool qpk_gen_preset(const char *name, qpk_gen_spec *spec);
/* The i-th preset's name (NULL past the last), and what a preset is (the model whose config.json it copies). */
const char *qpk_gen_preset_name(size_t i);
const char *qpk_gen_preset_about(const char *name);

/*
 * Gives c transformers' "yarn" rope scaling with this factor and pretrained context
 * (original <= 0: max_position_embeddings), the other parameters at their defaults.
 */
qpk_status qpk_gen_set_yarn(qpk_config *c, double factor, int64_t original, qpk_err *e);

/* Writes config.json, generation_config.json and the safetensors file(s) into dir (created if absent). */
qpk_status qpk_gen_write(const qpk_gen_spec *spec, const char *dir, const qpk_callbacks *cb, qpk_err *e);

#endif
