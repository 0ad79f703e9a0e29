/*
 * libFuzzer target: an importance matrix, either form (llama-imatrix's GGUF, or the legacy
 * .dat), read as qpk_imatrix_read reads a file. What passes must hold what the API promises:
 * names unique and found, every value finite and not negative, shapes positive; and it must
 * write back in both forms and read back to the same entries (the GGUF form exactly).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qpk/imatrix.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qpk_imatrix *m = NULL;
    qpk_err e;
    if (qpk_imatrix_read_memory(&m, data, size, &e) != QPK_OK)
        return 0;
    for (size_t i = 0; i < m->n; i++) {
        const qpk_imatrix_entry *x = &m->entries[i];
        if (x->n_per_row < 1 || x->n_mat < 1 || qpk_imatrix_find(m, x->name) != x)
            __builtin_trap();
        for (int64_t k = 0; k < x->n_per_row * x->n_mat; k++)
            if (!isfinite(x->sum2[k]) || x->sum2[k] < 0)
                __builtin_trap();
        for (int64_t k = 0; k < x->n_mat; k++)
            if (!isfinite(x->counts[k]) || x->counts[k] < 0)
                __builtin_trap();
    }
    if (m->n <= 64) { /* small ones round-trip through a file */
        char path[64];
        snprintf(path, sizeof path, "/tmp/fuzz-imatrix-%d.gguf", (int)getpid());
        qpk_imatrix *back = NULL;
        if (qpk_imatrix_write(m, path, false, &e) == QPK_OK && qpk_imatrix_read(&back, path, &e) == QPK_OK) {
            if (back->n != m->n)
                __builtin_trap();
            for (size_t i = 0; i < m->n; i++)
                if (strcmp(back->entries[i].name, m->entries[i].name) ||
                    memcmp(back->entries[i].sum2, m->entries[i].sum2,
                           (size_t)(m->entries[i].n_per_row * m->entries[i].n_mat) * sizeof(float)))
                    __builtin_trap();
        }
        qpk_imatrix_free(back);
        unlink(path);
    }
    qpk_imatrix_free(m);
    return 0;
}
