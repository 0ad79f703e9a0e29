/* Random-weight Hugging Face Qwen2 checkpoints of any shape (tests, benchmarks, demo). */
#ifndef QPK_TOOLS_GEN_H
#define QPK_TOOLS_GEN_H

#include "qpk/convert.h"

typedef struct qpk_gen_spec {
    qpk_config cfg;           /* shape, tie flag, rope_theta, eps, token ids */
    qpk_st_dtype dtype;       /* F32, F16 or BF16 */
    int n_shards;             /* 1: model.safetensors; more: model-0000i-of-0000N + index */
    bool lm_head_when_tied;   /* also store lm_head.weight (a copy of the embedding) */
    uint64_t seed;
} qpk_gen_spec;

/* A spec for a named preset ("tiny", "0.5b", "1.8b", "4b", "7b", "14b", "32b", "72b"). */
bool qpk_gen_preset(const char *name, qpk_gen_spec *spec);
/* The preset names, NULL-terminated. */
extern const char *const QPK_GEN_PRESETS[];

/* Writes config.json, generation_config.json and the safetensors file(s) into dir (created if absent). */
qpk_status qpk_gen_write(const qpk_gen_spec *spec, const char *dir, const qpk_callbacks *cb, qpk_err *e);

#endif
