/*
 * What qpk's libraries (and its own tools) share that is not public API: the error
 * forwarding macro, the type table itself (so that kernels fold a type's layout into
 * constants), mapped input and atomic output files. Never installed: include/qpk/ is
 * the API another runtime sees.
 */
#ifndef QPK_PRIVATE_H
#define QPK_PRIVATE_H

#include "qpk/format.h"
#include "qpk_blocks.h"

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
 * constant type gets the numbers at compile time. The quant library keeps the rest of a
 * row, what computes (grids, reference dequantization and quantization, packing), in
 * QPK_QUANT_TRAITS (quant/traits.h), keyed by the same ids: format/ does not link quant/.
 * file_type is llama.cpp's LLAMA_FTYPE (0 ALL_F32, 1 MOSTLY_F16, 2 MOSTLY_Q4_0, ...).
 */
static const qpk_type_info QPK_TYPE_TABLE[QPK_TYPE_COUNT_] = {
#define AT(S, field) ((int32_t)offsetof(S, field))
/* Plain types: elements of `bytes`; ggml's type of the same bytes. */
#define PLAIN(n, bytes, ggml, gname, ftype, ver)                                                                 \
    {.name = n, .elem_bytes = bytes, .ggml_type = ggml, .scale_at = {-1, -1}, .ggml_name = gname, .file_type = ftype, \
     .version = ver}
    [QPK_TYPE_F32] = PLAIN("f32", 4, 0, "F32", 0, 1),
    [QPK_TYPE_F16] = PLAIN("f16", 2, 1, "F16", 1, 1),
    [QPK_TYPE_BF16] = PLAIN("bf16", 2, 30, "BF16", 32, 1),
    [QPK_TYPE_I32] = PLAIN("i32", 4, -1, NULL, 0, 2), /* input permutations, which GGUF has no place for */
/* Group types: the head struct H (f16 d first), then the codes; in GGUF, ggml's blocks of 32. */
/* Every group type is a GPTQ folder's grid (one f16 scale, one zero point per group); the 4-bit ones AWQ's too. */
#define GROUP(n, b, H, ggml, gname, ftype, quant, ver)                                                           \
    {.name = n, .bits = b, .head_bytes = sizeof(H), .ggml_type = ggml, .scale_at = {AT(H, d), -1},              \
     .ggml_name = gname, .file_type = ftype, .quant_target = quant, .version = ver,                             \
     .folders = QPK_FOLDER_GPTQ | QPK_FOLDER_CT | ((b) == 4 ? QPK_FOLDER_AWQ : 0)}
    [QPK_TYPE_INT8] = GROUP("int8", 8, qpk_head_int8, 8, "Q8_0", 7, true, 1),
    [QPK_TYPE_INT4] = GROUP("int4", 4, qpk_head_int4, 3, NULL, 3, true, 1), /* to Q4_1 with m = -d z */
    [QPK_TYPE_INT4S] = GROUP("int4s", 4, qpk_head_int4s, 2, "Q4_0", 2, true, 1),
    /* To Q8_0 when every q - z fits int8. Imported GPTQ checkpoints' type: qpk's own 8 bits are int8. */
    [QPK_TYPE_INT8Z] = GROUP("int8z", 8, qpk_head_int8z, 8, NULL, 7, false, 2),
/* ggml's: the struct S of blk weights at `bits` per code; f16 scales at d (and s1). Version 2 brought them all;
 * no folder layout holds them (sub-block scales, offsets instead of zero points). */
#define GGML(n, b, S, blk, ggml, gname, ftype, quant, s1)                                                        \
    {.name = n, .bits = b, .head_bytes = sizeof(S) - (blk) * (b) / 8, .block = blk, .ggml_type = ggml,           \
     .scale_at = {AT(S, d), s1}, .ggml_name = gname, .file_type = ftype, .quant_target = quant, .version = 2}
    [QPK_TYPE_Q4_1] = GGML("q4_1", 4, qpk_block_q4_1, 32, 3, "Q4_1", 3, true, AT(qpk_block_q4_1, m)),
    [QPK_TYPE_Q5_0] = GGML("q5_0", 5, qpk_block_q5_0, 32, 6, "Q5_0", 8, true, -1),
    [QPK_TYPE_Q5_1] = GGML("q5_1", 5, qpk_block_q5_1, 32, 7, "Q5_1", 9, true, AT(qpk_block_q5_1, m)),
    /* Q2_K and Q3_K are read, never written: qpk has no quantizer for them. */
    [QPK_TYPE_Q2_K] = GGML("q2_k", 2, qpk_block_q2_k, 256, 10, "Q2_K", 10, false, AT(qpk_block_q2_k, dmin)),
    [QPK_TYPE_Q3_K] = GGML("q3_k", 3, qpk_block_q3_k, 256, 11, "Q3_K", 12 /* _M */, false, -1),
    /* _M: the mix most files of mostly Q4_K (Q5_K) are */
    [QPK_TYPE_Q4_K] = GGML("q4_k", 4, qpk_block_q4_k, 256, 12, "Q4_K", 15, true, AT(qpk_block_q4_k, dmin)),
    [QPK_TYPE_Q5_K] = GGML("q5_k", 5, qpk_block_q5_k, 256, 13, "Q5_K", 17, true, AT(qpk_block_q5_k, dmin)),
    [QPK_TYPE_Q6_K] = GGML("q6_k", 6, qpk_block_q6_k, 256, 14, "Q6_K", 18, true, -1),
/* bits: the whole bits per weight (the codes' share of the block; the rest counts as head). at: the f16 scale's offset,
 * nibbles: spread over four u16s' top nibbles there (IQ1_M, which has no d). */
#define IQUANT_AT(n, b, S, blk, ggml, gname, ftype, quant, at, nibbles)                                              \
    {.name = n, .bits = b, .head_bytes = sizeof(S) - (blk) * (b) / 8, .block = blk, .ggml_type = ggml,           \
     .scale_at = {at, -1}, .scale_nibbles = nibbles, .ggml_name = gname, .file_type = ftype, .quant_target = quant, \
     .version = 5}
#define IQUANT(n, b, S, blk, ggml, gname, ftype, quant)                                                           \
    IQUANT_AT(n, b, S, blk, ggml, gname, ftype, quant, AT(S, d), false)
    /* i-quants (version 5): IQ4_NL is also llama-quantize's type for the rows of IQ4_XS and the lower i-quants that
     * are not whole super-blocks. */
    [QPK_TYPE_IQ4_NL] = IQUANT("iq4_nl", 4, qpk_block_iq4_nl, 32, 20, "IQ4_NL", 25, true),
    [QPK_TYPE_IQ4_XS] = IQUANT("iq4_xs", 4, qpk_block_iq4_xs, 256, 23, "IQ4_XS", 30, true),
    /* The lower ones, read only too; file types are llama.cpp's presets of each name (IQ3_S: 26, not IQ3_M's 27). */
    [QPK_TYPE_IQ2_XXS] = IQUANT("iq2_xxs", 2, qpk_block_iq2_xxs, 256, 16, "IQ2_XXS", 19, false),
    [QPK_TYPE_IQ2_XS] = IQUANT("iq2_xs", 2, qpk_block_iq2_xs, 256, 17, "IQ2_XS", 20, false),
    [QPK_TYPE_IQ2_S] = IQUANT("iq2_s", 2, qpk_block_iq2_s, 256, 22, "IQ2_S", 28, false),
    [QPK_TYPE_IQ3_XXS] = IQUANT("iq3_xxs", 3, qpk_block_iq3_xxs, 256, 18, "IQ3_XXS", 23, false),
    [QPK_TYPE_IQ3_S] = IQUANT("iq3_s", 3, qpk_block_iq3_s, 256, 21, "IQ3_S", 26, false),
    [QPK_TYPE_IQ1_S] = IQUANT("iq1_s", 1, qpk_block_iq1_s, 256, 19, "IQ1_S", 24, false),
    [QPK_TYPE_IQ1_M] = IQUANT_AT("iq1_m", 1, qpk_block_iq1_m, 256, 29, "IQ1_M", 31, false, AT(qpk_block_iq1_m, scales),
                                 true),
    [QPK_TYPE_TQ1_0] = IQUANT("tq1_0", 1, qpk_block_tq1_0, 256, 34, "TQ1_0", 36, false),
    [QPK_TYPE_TQ2_0] = IQUANT("tq2_0", 2, qpk_block_tq2_0, 256, 35, "TQ2_0", 37, false),
/* MLX's affine groups (version 4): scale and bias, then int4's or int8z's codes; only MLX folders hold them as they
 * are. GGUF takes them as Q4_1 (a 4-bit group of 32 with f16 s and b is one, byte for byte) or Q8_0, exactly where
 * the values fit (model/gguf_export.c). */
#define AFFINE(n, nbits, bf16, ggml, ftype)                                                                      \
    {.name = n, .bits = nbits, .head_bytes = sizeof(qpk_head_affine), .ggml_type = ggml,                            \
     .scale_at = {AT(qpk_head_affine, s), AT(qpk_head_affine, b)}, .scale_bf16 = bf16, .file_type = ftype,       \
     .quant_target = true, .version = 4, .folders = QPK_FOLDER_MLX}
    [QPK_TYPE_MLX4] = AFFINE("mlx4", 4, true, 3, 3),
    [QPK_TYPE_MLX8] = AFFINE("mlx8", 8, true, 8, 7),
    [QPK_TYPE_MLX4_F16] = AFFINE("mlx4_f16", 4, false, 3, 3),
    [QPK_TYPE_MLX8_F16] = AFFINE("mlx8_f16", 8, false, 8, 7),
#undef AT
#undef AFFINE
#undef PLAIN
#undef GROUP
#undef GGML
#undef IQUANT
#undef IQUANT_AT
};

/*
 * The types a folder layout (QPK_FOLDER_GPTQ or QPK_FOLDER_AWQ) holds, by their rows'
 * `folders`, in id order as "int4, int4s or int8" (those a conversion quantizes to when
 * quant), written into buf as snprintf would; returns the whole list's length.
 */
size_t qpk_folder_type_list(unsigned folder, bool quant, char *buf, size_t cap);

/* Weights per ggml block of the types with a group (Q8_0, Q4_0, Q4_1): groups travel through GGUF as such blocks. */
#define QPK_GGML_GROUP 32

/* -------------------------------------------------------------------- UTF-8 */

/* Writes cp (a scalar value) as UTF-8; returns the byte count. */
size_t qpk_utf8_put(uint32_t cp, char *out);

/* Length of the well-formed UTF-8 sequence at s (n bytes available), or 0. */
size_t qpk_utf8_char(const char *s, size_t n);

/* Length of the longest prefix of s that is valid UTF-8 (== n when all of it is). */
size_t qpk_utf8_valid_prefix(const char *s, size_t n);

/*
 * Copies s to out replacing every maximal subpart of an ill-formed sequence with U+FFFD,
 * exactly as Python's bytes.decode("utf-8", errors="replace") (the Unicode "best
 * practice" of chapter 3, U+FFFD substitution of maximal subparts). out must hold 3 * n
 * bytes. Returns the length written.
 */
size_t qpk_utf8_repair(const char *s, size_t n, char *out);

/* A malloc'd, NUL-terminated copy of s repaired as qpk_utf8_repair does (NULL on OOM): for strings
 * from outside (paths, command lines) that go into JSON or GGUF, which must be UTF-8. */
char *qpk_utf8_dup(const char *s);

/* ------------------------------------------------------------ mapped input */

/* "a folder", "a FIFO", "a character device", ... for a st_mode. */
const char *qpk_file_kind(unsigned mode);
/*
 * Opens path for reading without blocking, and only if it is a regular file: anything
 * else (a folder, a FIFO, a device, a socket) is refused naming its kind. *missing (may
 * be NULL) tells whether it does not exist; *size (may be NULL) gets its size.
 */
qpk_status qpk_open_regular(const char *path, int *fd, uint64_t *size, bool *missing, qpk_err *e);
/* A whole regular file of at most max bytes into a malloc'd, NUL-terminated buffer. */
qpk_status qpk_read_whole(const char *path, size_t max, char **data, size_t *len, bool *missing, qpk_err *e);
/* What a path given as a model or a reference is, by its kind and its first bytes. */
typedef enum qpk_input_kind {
    QPK_INPUT_OTHER = 0,
    QPK_INPUT_FOLDER,      /* a Hugging Face model folder, presumably */
    QPK_INPUT_QPK,         /* starts with the .qpk magic */
    QPK_INPUT_GGUF,        /* starts with "GGUF" */
    QPK_INPUT_SAFETENSORS, /* a header length, then '{' */
} qpk_input_kind;
/* Fails for what cannot be opened, or is neither a folder nor a regular file (by its kind). */
qpk_status qpk_identify(const char *path, qpk_input_kind *kind, qpk_err *e);
const char *qpk_input_kind_name(qpk_input_kind k); /* "a GGUF file", ... */

/* Whether a and b name the same existing file (device and inode, not names). */
bool qpk_same_file(const char *a, const char *b);
/* QPK_E_INVALID_ARG when output out is the same file as input in, naming both. */
qpk_status qpk_check_not_input(const char *out, const char *in, qpk_err *e);

/*
 * Maps the regular file at path read-only (*data NULL for an empty file). advice is an
 * madvise() hint (0: none). The readers' shared way in; undo with qpk_unmap_file.
 */
qpk_status qpk_map_file(const char *path, int advice, const void **data, size_t *size, qpk_err *e);
void qpk_unmap_file(const void *data, size_t size); /* NULL-safe */

/* Whether path is a readable file whose first n (<= 16) bytes are magic. */
bool qpk_file_starts_with(const char *path, const void *magic, size_t n);

/*
 * Shard no (0-based) of a GGUF split set of count, named as llama.cpp names them:
 * "PREFIX-%05d-of-%05d.gguf" with no + 1. Malloc'd; NULL when out of memory.
 */
char *qpk_gguf_split_path(const char *prefix, uint32_t no, uint32_t count);

/* ------------------------------------------------------------ atomic output */

/*
 * A file that appears at its path complete or not at all: written to an unnamed
 * temporary in the same folder, fsync'd and renamed into place by commit. Used by
 * the .qpk writer and by every other writer in qpk (GGUF, generated checkpoints).
 */
typedef struct qpk_outfile qpk_outfile;

qpk_status qpk_outfile_create(qpk_outfile **out, const char *path, qpk_err *e);
/* Appends n bytes (buffered). After any failure every later call fails too. */
qpk_status qpk_outfile_write(qpk_outfile *o, const void *p, size_t n, qpk_err *e);
/* Appends zero bytes up to the next multiple of align (a power of two). */
qpk_status qpk_outfile_pad(qpk_outfile *o, uint64_t align, qpk_err *e);
/* Overwrites bytes already appended (a header written last). */
qpk_status qpk_outfile_pwrite(qpk_outfile *o, const void *p, size_t n, uint64_t off, qpk_err *e);
uint64_t qpk_outfile_tell(const qpk_outfile *o);
const char *qpk_outfile_path(const qpk_outfile *o);
/*
 * Flushes and fsyncs what was written and frees the buffer: o is complete, waiting for its
 * commit (a set of files renamed only once every one of them is complete). No write after it.
 */
qpk_status qpk_outfile_sync(qpk_outfile *o, qpk_err *e);
/* Flushes, fsyncs, renames over the path, fsyncs the folder; frees o whatever the outcome. */
qpk_status qpk_outfile_commit(qpk_outfile *o, qpk_err *e);
/* Drops everything written; nothing appears at the path. NULL-safe. */
void qpk_outfile_discard(qpk_outfile *o);

/*
 * A folder that appears at its path complete or not at all: its files are written into
 * a hidden folder beside it (.NAME.qpk-tmp.PID.XXXXXX), which commit fsyncs and renames
 * into place. An existing folder at the path is replaced only when empty: a folder
 * holding anything is refused, never deleted. The temporaries of processes killed
 * before they could clean up are removed by the next output into the same folder.
 */
typedef struct qpk_outdir qpk_outdir;

qpk_status qpk_outdir_create(qpk_outdir **out, const char *path, qpk_err *e);
/* The hidden folder files go into until commit. */
const char *qpk_outdir_tmp(const qpk_outdir *d);
/* fsyncs the files and the folder, renames it into place, fsyncs the parent; frees d whatever the outcome. */
qpk_status qpk_outdir_commit(qpk_outdir *d, qpk_err *e);
/* Removes the hidden folder and what it holds; nothing appears at the path. NULL-safe. */
void qpk_outdir_discard(qpk_outdir *d);

/*
 * A linear's input permutation (FORMAT.md section 5): n int32 values, each input in
 * [0, n) exactly once. Every consumer relies on this check (qpk_check_model, the runtime).
 */
qpk_status qpk_check_permutation(const void *perm, int64_t n, const char *name, qpk_err *e);

/* XXH3-64 of a buffer, as the format uses it (seed 0). */
uint64_t qpk_xxh3(const void *data, size_t n);

#endif
