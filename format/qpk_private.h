/*
 * What qpk's libraries share that is not public API: the type table itself (so that
 * kernels fold a type's layout into constants), and, in later sections, the plumbing
 * the format library offers its siblings. Never installed; include/qpk/ is the API.
 */
#ifndef QPK_PRIVATE_H
#define QPK_PRIVATE_H

#include "qpk/format.h"

/* The one way qpk code forwards a failure: evaluate, and return the status if it is not QPK_OK. */
#define QPK_TRY(expr)                                                                                            \
    do {                                                                                                         \
        qpk_status qpk_try_ = (expr);                                                                            \
        if (qpk_try_ != QPK_OK)                                                                                  \
            return qpk_try_;                                                                                     \
    } while (0)

/*
 * One row per type (FORMAT.md section 6 is the normative description of each layout);
 * qpk_type_info_of() hands the rows out. Static so that a kernel indexing it with a
 * constant type gets the numbers at compile time.
 */
static const qpk_type_info QPK_TYPE_TABLE[QPK_TYPE_COUNT_] = {
    /*                     name     elem bits head block ggml */
    [QPK_TYPE_F32] = {"f32", 4, 0, 0, 0, 0},
    [QPK_TYPE_F16] = {"f16", 2, 0, 0, 0, 1},
    [QPK_TYPE_BF16] = {"bf16", 2, 0, 0, 0, 30},
    [QPK_TYPE_INT8] = {"int8", 0, 8, 2, 0, 8},   /* f16 d; at G = 32 ggml's Q8_0 */
    [QPK_TYPE_INT4] = {"int4", 0, 4, 4, 0, 3},   /* f16 d, u8 z, u8 0; to Q4_1 with m = -d z */
    [QPK_TYPE_INT4S] = {"int4s", 0, 4, 2, 0, 2}, /* f16 d; at G = 32 ggml's Q4_0 */
};

#endif
