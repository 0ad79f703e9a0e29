/*
 * libFuzzer target: the GPTQ/AWQ/compressed-tensors readers. The first byte chooses what the rest is:
 *   bit 7 set: config.json text, for quantization_config parsing (compressed-tensors' config
 *   groups and AutoRound's extra_config schemes matched against a few module names too);
 *   bits 5-6 both set: a compressed-tensors linear (bit 0 8-bit, bit 2 symmetric, bit 3
 *   actorder group), tensors L.weight_packed, L.weight_zero_point, L.weight_scale,
 *   L.weight_g_idx, L.weight_shape;
 *   bit 6 alone: an MLX module (bit 0 8-bit), tensors L.weight, L.scales, L.biases;
 *   else: a layout (bits 0-1 method/bits, 2 sym, 3 desc_act, 4 v2; byte 1 the group
 *   code; bytes 2-3 the linear's outputs / 8 and inputs / 32, small) then a safetensors
 *   file holding L.qweight, L.qzeros, L.scales and perhaps L.g_idx, which are checked,
 *   imported, and decoded: every weight must come out finite.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model_private.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qpk_err e;
    if (size < 1)
        return 0;
    if (data[0] & 0x80) {
        static qpk_hfq q;
        if (qpk_hfq_parse((const char *)data + 1, size - 1, NULL, 0, &q, &e) != QPK_OK || q.method == QPK_HFQ_NONE)
            return 0;
        if (q.bits != 4 && q.bits != 8)
            __builtin_trap(); /* a parse that passes gives a layout the importer knows */
        for (int k = 0; k < q.n_mlx; k++)
            if ((q.mlx[k].bits && q.mlx[k].bits != 4 && q.mlx[k].bits != 8) || !q.mlx[k].name[0])
                __builtin_trap();
        if (q.method == QPK_HFQ_MLX) {
            int k;
            qpk_mlx_module_scheme(&q, "model.layers.0.self_attn.q_proj", &k);
            if (k < -1 || k >= q.n_mlx)
                __builtin_trap();
            qpk_mlx_check_used(&q, &e);
            qpk_hfq_free(&q);
            return 0;
        }
        for (int k = 0; k < q.n_ct; k++)
            if ((q.ct[k].bits != 4 && q.ct[k].bits != 8) || (q.ct[k].group <= 0 && q.ct[k].group != -1))
                __builtin_trap();
        static const char *const NAMES[] = {"model.layers.0.self_attn.q_proj", "model.layers.11.mlp.down_proj",
                                            "model.layers.3.mlp.experts.7.up_proj", "lm_head", ""};
        if (q.autoround && (q.method == QPK_HFQ_CT || q.n_ct < 1 || strcmp(q.ct[0].targets[0], "Linear")))
            __builtin_trap(); /* AutoRound: a GPTQ/AWQ layout, the config's scheme first */
        for (size_t i = 0; q.n_ct && i < sizeof NAMES / sizeof *NAMES; i++) {
            int k;
            if (qpk_hfq_ct_scheme(&q, NAMES[i], &k, &e) == QPK_OK && (k < -1 || k >= q.n_ct))
                __builtin_trap();
        }
        if (q.method == QPK_HFQ_CT)
            qpk_hfq_ct_check_used(&q, &e);
        return 0;
    }
    if (size < 4)
        return 0;
    static const int64_t GROUPS[4] = {32, 64, 128, -1};
    const bool ct = (data[0] & 0x60) == 0x60, mlx = (data[0] & 0x60) == 0x40;
    static qpk_hfq q;
    memset(&q, 0, sizeof q);
    if (mlx)
        q = (qpk_hfq){.method = QPK_HFQ_MLX, .bits = data[0] & 1 ? 8 : 4, .group = 32 << (data[1] % 3)};
    else if (ct)
        q = (qpk_hfq){.method = QPK_HFQ_CT,
                      .bits = data[0] & 1 ? 8 : 4,
                      .group = GROUPS[data[1] & 3],
                      .sym = data[0] >> 2 & 1,
                      .desc_act = (data[0] >> 3 & 1) && (data[1] & 3) != 3};
    else
        q = (qpk_hfq){.method = (data[0] & 3) == 3 ? QPK_HFQ_AWQ : QPK_HFQ_GPTQ,
                 .bits = (data[0] & 3) == 1 ? 8 : 4,
                 .group = GROUPS[data[1] & 3],
                 .sym = data[0] >> 2 & 1,
                 .desc_act = data[0] >> 3 & 1,
                 .v2 = data[0] >> 4 & 1};
    qpk_safetensors *st;
    if (qpk_st_open_memory(&st, data + 4, size - 4, &e) != QPK_OK)
        return 0;
    qpk_qlinear l = {.q = &q,
                     .qweight = qpk_st_find(st, ct ? "L.weight_packed" : mlx ? "L.weight" : "L.qweight"),
                     .qzeros = qpk_st_find(st, ct ? "L.weight_zero_point" : mlx ? "L.biases" : "L.qzeros"),
                     .scales = qpk_st_find(st, ct ? "L.weight_scale" : "L.scales"),
                     .g_idx = qpk_st_find(st, ct ? "L.weight_g_idx" : "L.g_idx"),
                     .shape = ct ? qpk_st_find(st, "L.weight_shape") : NULL,
                     .rows = 8 * (1 + (data[2] & 15)),
                     .cols = 32 * (1 + (data[3] & 15))};
    strcpy(l.name, "L");
    if (qpk_qlinear_init(&l, &e) == QPK_OK) {
        size_t row = qpk_type_row_bytes(l.type, l.group, l.cols);
        uint8_t *blocks = malloc(row * (size_t)l.rows);
        float *w = malloc((size_t)l.cols * sizeof *w);
        if (blocks && w && qpk_qlinear_rows(&l, 0, l.rows, blocks, &e) == QPK_OK)
            for (int64_t r = 0; r < l.rows; r++) {
                qpk_dequantize_row(l.type, l.group, blocks + (size_t)r * row, l.cols, w);
                for (int64_t i = 0; i < l.cols; i++)
                    if (!isfinite(w[i]))
                        __builtin_trap();
            }
        free(blocks), free(w);
    }
    qpk_qlinear_free(&l);
    qpk_st_close(st);
    return 0;
}
