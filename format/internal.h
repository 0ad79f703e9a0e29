/* Byte-level helpers and constants private to the format library. */
#ifndef QPK_FORMAT_INTERNAL_H
#define QPK_FORMAT_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "qpk_private.h"

/* Layout constants of .qpk v1 (FORMAT.md is the normative text). */
#define QPK_MAGIC "QPKF\r\n\x1a\n"
#define QPK_MAGIC_LEN 8
#define QPK_FORMAT_VERSION 5u /* the newest this build reads and writes; versions 1 and 2 read as ever */
#define QPK_HEADER_SIZE 64u
#define QPK_SECTION_ENTRY_SIZE 32u
#define QPK_TENSOR_ENTRY_SIZE 80u
#define QPK_TENSORS_PREFIX 16u
#define QPK_BLOB_RECORD_SIZE 32u
#define QPK_MAX_SECTIONS 16u
#define QPK_DEFAULT_ALIGNMENT 64u
#define QPK_MAX_ALIGNMENT (1u << 20)
#define QPK_MAX_BLOBS 64u
#define QPK_MAX_BLOB_BYTES (256ull << 20)
#define QPK_SECTION_CRITICAL 1u

enum { QPK_SECTION_META = 1, QPK_SECTION_TENSORS = 2, QPK_SECTION_FILES = 3 };
enum { QPK_BLOB_ZLIB = 1 };

static inline uint32_t rd_u32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}
static inline uint64_t rd_u64(const uint8_t *p)
{
    return (uint64_t)rd_u32(p) | (uint64_t)rd_u32(p + 4) << 32;
}
static inline void wr_u32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline void wr_u64(uint8_t *p, uint64_t v)
{
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static inline uint64_t align_up(uint64_t x, uint64_t a) { return (x + a - 1) & ~(a - 1); }

/* Name rule shared by reader and writer: 1..255 bytes of printable ASCII, no space. */
static inline int qpk_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > 255)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

/* Checks that meta is a JSON object with the keys every .qpk has; fills cfg and *version (1 or 2). */
qpk_status qpk_meta_validate(const char *meta, size_t len, qpk_config *cfg, uint32_t *version, qpk_err *e);

#endif
