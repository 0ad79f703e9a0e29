/* libFuzzer target: the .qpk reader, checksum verification and embedded files. */
#include <stdlib.h>

#include "qpk/format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qpk_file *f;
    qpk_err e;
    if (qpk_open_memory(&f, data, size, NULL, &e) != QPK_OK)
        return 0;
    for (size_t i = 0; i < qpk_n_tensors(f); i++) {
        const qpk_tensor *t = qpk_tensor_at(f, i);
        qpk_verify_tensor(f, i, &e); /* reads every byte of the tensor */
        if (qpk_find_tensor(f, t->name) != t)
            __builtin_trap();
    }
    qpk_check_model(f, &e);
    for (size_t i = 0; i < qpk_n_blobs(f); i++) {
        uint64_t n;
        const char *name = qpk_blob_name(f, i, &n);
        if (n > (1u << 24))
            continue; /* the limit is 256 MiB; keep the fuzzer's memory small */
        void *buf = malloc(n ? (size_t)n : 1);
        size_t len;
        qpk_blob_read(f, name, buf, (size_t)n, &len, &e);
        free(buf);
    }
    size_t ml;
    qpk_metadata(f, &ml);
    qpk_close(f);
    return 0;
}
