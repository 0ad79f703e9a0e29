/* libFuzzer target: the safetensors header parser and validator. */
#include "qpk/convert.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qpk_safetensors *st;
    qpk_err e;
    if (qpk_st_open_memory(&st, data, size, &e) != QPK_OK)
        return 0;
    /* Touch every byte a valid file exposes: a bad span would fault under ASan here. */
    volatile uint8_t sink = 0;
    for (size_t i = 0; i < qpk_st_n_tensors(st); i++) {
        const qpk_st_tensor *t = qpk_st_tensor_at(st, i);
        for (uint64_t k = 0; k < t->nbytes; k++)
            sink ^= ((const uint8_t *)t->data)[k];
        if (qpk_st_find(st, t->name) != t)
            __builtin_trap();
    }
    (void)sink;
    qpk_st_close(st);
    return 0;
}
