/*
 * qpk/gguf.h - GGUF v3 files, the format of llama.cpp and ggml (spec: docs/gguf.md of
 * ggml-org/ggml): a streaming, atomic, deterministic writer and a reader that
 * validates every length and offset before exposing anything.
 *
 * Layout: "GGUF", u32 version, u64 tensor count, u64 key-value count; the key-values
 * (string key, u32 value type, value); the tensor infos (string name, u32 n_dims,
 * u64 ne[n_dims] with the contiguous dimension first, u32 ggml type, u64 offset from
 * the data start); zero padding to general.alignment (32 when absent); the data,
 * each tensor at a multiple of the alignment. Strings are u64 length + bytes.
 */
#ifndef QPK_GGUF_H
#define QPK_GGUF_H

#include "qpk/format.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Value types of GGUF key-values. */
typedef enum qpk_gguf_type {
    QPK_GGUF_U8 = 0, QPK_GGUF_I8 = 1, QPK_GGUF_U16 = 2, QPK_GGUF_I16 = 3,
    QPK_GGUF_U32 = 4, QPK_GGUF_I32 = 5, QPK_GGUF_F32 = 6, QPK_GGUF_BOOL = 7,
    QPK_GGUF_STRING = 8, QPK_GGUF_ARRAY = 9, QPK_GGUF_U64 = 10, QPK_GGUF_I64 = 11,
    QPK_GGUF_F64 = 12, QPK_GGUF_TYPE_COUNT_
} qpk_gguf_type;

/* The ggml tensor types qpk reads and writes (the reader knows the sizes of more, see gguf_types.c). */
enum {
    QPK_GGML_F32 = 0, QPK_GGML_F16 = 1, QPK_GGML_Q4_0 = 2, QPK_GGML_Q4_1 = 3,
    QPK_GGML_Q5_0 = 6, QPK_GGML_Q5_1 = 7, QPK_GGML_Q8_0 = 8,
    QPK_GGML_Q2_K = 10, QPK_GGML_Q3_K = 11, QPK_GGML_Q4_K = 12, QPK_GGML_Q5_K = 13, QPK_GGML_Q6_K = 14,
    QPK_GGML_BF16 = 30
};

/*
 * The qpk type (and group) that holds a ggml type's bytes as they are: F32/F16/BF16,
 * Q8_0 = int8 and Q4_0 = int4s in groups of 32, Q4_1 .. Q6_K as qpk's types of the same
 * name. False for a ggml type qpk does not compute with.
 */
QPK_API bool qpk_type_of_ggml(uint32_t ggml_type, uint32_t *type, uint32_t *group);

/* "F32", "Q4_0", ...; NULL for a type whose layout this build does not know. */
QPK_API const char *qpk_ggml_type_name(uint32_t type);
/* Bytes of a tensor of this type with ne[0] (contiguous) .. ne[n_dims-1], overflow-checked. */
QPK_API qpk_status qpk_ggml_nbytes(uint32_t type, int n_dims, const uint64_t *ne, uint64_t *out, qpk_err *e);

/* ================================================================== writer == */

typedef struct qpk_gguf_writer qpk_gguf_writer;

QPK_API qpk_status qpk_gguf_writer_create(qpk_gguf_writer **out, const char *path, qpk_err *e);
QPK_API void qpk_gguf_writer_discard(qpk_gguf_writer *w); /* nothing appears at the path; NULL-safe */

/*
 * Makes the output a split set as llama.cpp's gguf-split writes one: PATH less ".gguf", then
 * -00001-of-0000N.gguf .. N (given model.gguf: model-00001-of-00003.gguf ...), a new shard when the
 * current one holds max_tensors tensors or the next tensor (padded) would take its tensor bytes
 * past max_bytes (0: no such limit; a larger tensor gets a shard of its own). Every key-value
 * goes into the first shard, and split.no (u16), split.count (u16), split.tensors.count (i32)
 * into every one. Nothing appears at PATH; the shards appear at finish, each renamed into place
 * only once all are complete. Before the first qpk_gguf_write.
 * @return QPK_OK, QPK_E_INVALID_ARG (after the data began, or no limit given)
 */
QPK_API qpk_status qpk_gguf_writer_split(qpk_gguf_writer *w, uint64_t max_bytes, uint64_t max_tensors, qpk_err *e);

/* Key-values, written in the order given (keys: ASCII, up to 65535 bytes). */
QPK_API qpk_status qpk_gguf_kv_string(qpk_gguf_writer *w, const char *key, const char *s, size_t len, qpk_err *e);
QPK_API qpk_status qpk_gguf_kv_u32(qpk_gguf_writer *w, const char *key, uint32_t v, qpk_err *e);
QPK_API qpk_status qpk_gguf_kv_u64(qpk_gguf_writer *w, const char *key, uint64_t v, qpk_err *e);
QPK_API qpk_status qpk_gguf_kv_f32(qpk_gguf_writer *w, const char *key, float v, qpk_err *e);
QPK_API qpk_status qpk_gguf_kv_bool(qpk_gguf_writer *w, const char *key, bool v, qpk_err *e);
QPK_API qpk_status qpk_gguf_kv_i32_array(qpk_gguf_writer *w, const char *key, const int32_t *v, uint64_t n, qpk_err *e);
/* An array of n strings, string i given by get(ud, i, &len). */
QPK_API qpk_status qpk_gguf_kv_string_array(qpk_gguf_writer *w, const char *key, uint64_t n,
                                    const char *(*get)(void *ud, uint64_t i, size_t *len), void *ud, qpk_err *e);

/* Declares the next tensor (all are declared before any data). ne: contiguous dimension first. */
QPK_API qpk_status qpk_gguf_add_tensor(qpk_gguf_writer *w, const char *name, uint32_t type, int n_dims,
                               const uint64_t *ne, qpk_err *e);
/* The data of the declared tensors, in order, in pieces of any size. */
QPK_API qpk_status qpk_gguf_write(qpk_gguf_writer *w, const void *data, size_t n, qpk_err *e);
/* Checks every tensor got all its bytes, then commits (atomically). Frees w. */
QPK_API qpk_status qpk_gguf_finish(qpk_gguf_writer *w, qpk_err *e);

/* ================================================================== reader == */

typedef struct qpk_gguf qpk_gguf;

typedef struct qpk_gguf_value {
    uint32_t type; /* a qpk_gguf_type */
    union {
        uint64_t u;  /* U8..U64, BOOL */
        int64_t i;   /* I8..I64 */
        double f;    /* F32, F64 */
    } num;
    const char *str; /* STRING: bytes in the file (not NUL-terminated) */
    uint64_t len;    /* STRING: bytes; ARRAY: elements */
    uint32_t elem_type;       /* ARRAY: the elements' type */
    const uint8_t *elems;     /* ARRAY of numbers: the raw little-endian elements */
    size_t kv;                /* which key-value this is (for qpk_gguf_array_string) */
} qpk_gguf_value;

typedef struct qpk_gguf_tensor {
    const char *name; /* NUL-terminated copy */
    uint32_t type;
    int n_dims;
    uint64_t ne[4];
    uint64_t offset; /* absolute, in the file */
    uint64_t nbytes;
    const void *data;
    uint32_t shard;  /* which file of a split set holds it (0-based; 0 for a single file) */
} qpk_gguf_tensor;

/*
 * Maps and validates a GGUF file: magic, version (2 or 3), counts against limits,
 * every string and array inside the file, known value types (arrays of arrays are
 * refused), the alignment, every tensor's name, dims, type, size, alignment, and
 * range inside the file, without overlaps.
 */
QPK_API qpk_status qpk_gguf_open(qpk_gguf **out, const char *path, qpk_err *e);
QPK_API qpk_status qpk_gguf_open_memory(qpk_gguf **out, const void *buf, size_t size, qpk_err *e);
/*
 * Split sets, as llama.cpp's gguf-split writes them: NAME-00001-of-0000N.gguf .. N, each a GGUF
 * with split.no (u16, 0-based), split.count (u16) and split.tensors.count (i32, the whole set's
 * tensors); the model's key-values are the first shard's. qpk_gguf_open given the first shard
 * opens the others by that naming rule and returns one handle: the first shard's key-values,
 * every shard's tensors (qpk_gguf_tensor.shard says which file; offsets are in that file). It
 * refuses, before exposing anything, a later shard given as the path (naming the first), a
 * missing shard, a repeated or misplaced one (split.no not its position), a shard of another
 * set (split.count or split.tensors.count disagreeing), a tensor in two shards, and a set whose
 * tensors do not add up to split.tensors.count. A single file that is a set's first shard
 * (qpk_gguf_open_memory) is refused as incomplete; a set of one is a plain file.
 * qpk_gguf_open_set_memory does the same over n buffers, bufs[i] being shard i+1.
 * @return QPK_OK, QPK_E_MISMATCH (shards that are not one set), QPK_E_INVALID_ARG (not the
 *         first shard), QPK_E_CORRUPT, QPK_E_IO (a shard that cannot be read)...
 */
QPK_API qpk_status qpk_gguf_open_set_memory(qpk_gguf **out, const void *const *bufs, const size_t *sizes, size_t n,
                                            qpk_err *e);
/* Files the handle reads: split.count for a split set, else 1. */
QPK_API size_t qpk_gguf_n_shards(const qpk_gguf *g);
QPK_API void qpk_gguf_close(qpk_gguf *g); /* NULL-safe */

QPK_API uint32_t qpk_gguf_version(const qpk_gguf *g);
QPK_API uint64_t qpk_gguf_file_size(const qpk_gguf *g); /* a split set: all its files' bytes */
QPK_API uint32_t qpk_gguf_alignment(const qpk_gguf *g);
QPK_API size_t qpk_gguf_n_kv(const qpk_gguf *g);
/* Key i (NUL-terminated copy) and its value. */
QPK_API const char *qpk_gguf_kv_at(const qpk_gguf *g, size_t i, qpk_gguf_value *v);
/* The value of key, or false if absent (a binary search of an index built at open). */
QPK_API bool qpk_gguf_find(const qpk_gguf *g, const char *key, qpk_gguf_value *v);
/* Element i of a STRING array value. */
QPK_API const char *qpk_gguf_array_string(const qpk_gguf *g, const qpk_gguf_value *v, uint64_t i, uint64_t *len);
QPK_API size_t qpk_gguf_n_tensors(const qpk_gguf *g);
QPK_API const qpk_gguf_tensor *qpk_gguf_tensor_at(const qpk_gguf *g, size_t i);
QPK_API const qpk_gguf_tensor *qpk_gguf_find_tensor(const qpk_gguf *g, const char *name);

#ifdef __cplusplus
}
#endif
#endif /* QPK_GGUF_H */
