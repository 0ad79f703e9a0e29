/*
 * qpk/safetensors.h - the safetensors byte format, read (validated, mapped) and written
 * (sharded as transformers saves, atomically). A byte format like .qpk and GGUF: the
 * model layer (qpk/model.h) reads Hugging Face folders and writes GPTQ/AWQ folders with it.
 */
#ifndef QPK_SAFETENSORS_H
#define QPK_SAFETENSORS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qpk/format.h"

#ifdef __cplusplus
extern "C" {
#endif


/* Every dtype of the safetensors spec, so any valid file parses; weights accept F64..BF16. */
typedef enum qpk_st_dtype {
    QPK_ST_F64, QPK_ST_F32, QPK_ST_F16, QPK_ST_BF16,
    QPK_ST_I64, QPK_ST_I32, QPK_ST_I16, QPK_ST_I8,
    QPK_ST_U64, QPK_ST_U32, QPK_ST_U16, QPK_ST_U8,
    QPK_ST_BOOL, QPK_ST_F8_E4M3, QPK_ST_F8_E5M2,
    QPK_ST_DTYPE_COUNT_
} qpk_st_dtype;

QPK_API const char *qpk_st_dtype_name(qpk_st_dtype d); /* "BF16", ... */
QPK_API size_t qpk_st_dtype_size(qpk_st_dtype d);

#define QPK_ST_MAX_DIMS 8
#define QPK_ST_MAX_HEADER 100000000u /* bytes of JSON header accepted */

typedef struct qpk_st_tensor {
    const char *name;
    qpk_st_dtype dtype;
    int ndim;
    int64_t shape[QPK_ST_MAX_DIMS];
    uint64_t numel;
    uint64_t nbytes;
    const void *data; /* into the mapping; valid until the file is closed */
} qpk_st_tensor;

typedef struct qpk_safetensors qpk_safetensors;

/*
 * Maps and validates one .safetensors file: header length (<= 100,000,000 and
 * inside the file), UTF-8 JSON, known dtypes, every span inside the data area,
 * equal to numel x dtype size, no overlaps or holes, no duplicate names.
 */
QPK_API qpk_status qpk_st_open(qpk_safetensors **out, const char *path, qpk_err *e);
/* The same over a caller-owned buffer (kept until close). */
QPK_API qpk_status qpk_st_open_memory(qpk_safetensors **out, const void *buf, size_t size, qpk_err *e);
QPK_API void qpk_st_close(qpk_safetensors *st); /* NULL-safe */
QPK_API size_t qpk_st_n_tensors(const qpk_safetensors *st);
QPK_API const qpk_st_tensor *qpk_st_tensor_at(const qpk_safetensors *st, size_t i); /* sorted by name */
QPK_API const qpk_st_tensor *qpk_st_find(const qpk_safetensors *st, const char *name);
QPK_API uint64_t qpk_st_file_size(const qpk_safetensors *st);

/*
 * Writing safetensors as transformers saves them: one model.safetensors, or shards
 * model-0000i-of-0000N.safetensors with model.safetensors.index.json. The tensors are
 * declared first (name, dtype, shape, bytes, shard: shards numbered from 0, in order);
 * their bytes then stream in, in order, in pieces of any size. Every file appears
 * atomically; metadata {"format": "pt"}.
 */
typedef struct qpk_st_entry {
    char name[256];
    qpk_st_dtype dtype;
    int ndim;
    int64_t shape[4];
    uint64_t nbytes;
    int shard;
} qpk_st_entry;

typedef struct qpk_st_set qpk_st_set;

/* Shards in order, each at most max_bytes of tensor data (a larger tensor alone in its own). */
QPK_API void qpk_st_assign_shards(qpk_st_entry *t, size_t n, uint64_t max_bytes);
QPK_API qpk_status qpk_st_set_create(qpk_st_set **out, const char *dir, const qpk_st_entry *t, size_t n, qpk_err *e);
QPK_API qpk_status qpk_st_set_write(qpk_st_set *s, const void *data, size_t n, qpk_err *e);
/* The format every shard's header names in its __metadata__ ("pt" unless set; mlx-lm writes "mlx"); before any write. */
QPK_API void qpk_st_set_format(qpk_st_set *s, const char *format);
/* Commits the last shard and, for several, the index; frees s whatever the outcome. */
QPK_API qpk_status qpk_st_set_finish(qpk_st_set *s, qpk_err *e);
QPK_API void qpk_st_set_discard(qpk_st_set *s); /* NULL-safe; committed shards stay */
/* A small file dir/name with these bytes, atomically. */
QPK_API qpk_status qpk_write_text_file(const char *dir, const char *name, const char *text, size_t n, qpk_err *e);

#ifdef __cplusplus
}
#endif
#endif /* QPK_SAFETENSORS_H */
