/* Helpers shared inside the convert library. */
#ifndef QPK_CONVERT_INTERNAL_H
#define QPK_CONVERT_INTERNAL_H

#include "qpk/convert.h"
#include "qpk/quant.h"
#include "model_private.h"
#include "qpk_private.h"

/*
 * The type (and group) tensor `name` of role `role` is quantized to under options o:
 * what round-to-nearest writes, and what GPTQ and AWQ calibrate for.
 */
qpk_status qpk_tensor_plan(const qpk_convert_opts *o, const qpk_config *c, const qpk_st_tensor *src, qpk_role role,
                           int layer, const char *name, uint32_t *type, uint32_t *group, qpk_err *e);
/* How a planned tensor is finally stored: an AWQ fold-only run keeps its folded linears in f32. */
void qpk_tensor_stored(const qpk_convert_opts *o, qpk_role role, uint32_t *type, uint32_t *group);

/* ------------------------------------------------ calibration (calibrate.c) */

typedef struct qpk_calib qpk_calib;
typedef struct qpk_calib_times {
    double gather, quantize, forward; /* seconds, summed over layers (forward: the quantized layers' passes) */
} qpk_calib_times;

/* Draws the calibration windows and embeds them; ready for layer 0. src: a float Hugging Face folder. */
qpk_status qpk_calib_begin(qpk_calib **out, qpk_source *src, const qpk_convert_opts *o, qpk_pool *pool,
                           qpk_err *e);
/* The calibration's statistics so far as llama.cpp's importance matrix (opts save_imatrix), or NULL. */
const struct qpk_imatrix *qpk_calib_imatrix(const qpk_calib *c);
/* Calibrates and quantizes layer l (layers in order, from 0); times (may be NULL) accumulate. */
qpk_status qpk_calib_layer(qpk_calib *c, int l, qpk_calib_times *times, qpk_err *e);
/* The stored form of tensor r of the layer last calibrated (valid until the next layer). */
void qpk_calib_tensor(const qpk_calib *c, qpk_role r, uint32_t *type, uint32_t *group, const void **bytes,
                      size_t *nbytes);
/*
 * Which layer makes the next layer's calibration inputs: the quantized one for GPTQ (its
 * error feedback is fitted to what the quantized model feeds each layer, as GPTQModel
 * does), the float one for AWQ, AWQ+GPTQ and imatrix (as AutoAWQ and llama-imatrix do),
 * whose float forward during the statistics then serves for both. AWQ+GPTQ's second
 * pass was a third of its run; without it its KL divergence moved by 3.4% at most (README).
 */
bool qpk_calib_feeds_float(qpk_method m);
/* The resolved parameters it runs with. */
const qpk_calib_params *qpk_calib_params_of(const qpk_calib *c);
/* Experts of the sparse layers calibrated so far, and those that fell back to round-to-nearest
 * (fewer routed calibration tokens than the floor in calibrate.c). */
void qpk_calib_experts(const qpk_calib *c, int64_t *calibrated, int64_t *rtn);
void qpk_calib_end(qpk_calib *c); /* NULL-safe */
double qpk_seconds(void);

#endif
