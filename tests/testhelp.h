/*
 * A tiny test helper: CHECK macros that count and report, and a summary line
 * "N passed, N failed". Each test program returns non-zero if anything failed.
 */
#ifndef QPK_TESTHELP_H
#define QPK_TESTHELP_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int th_passed, th_failed;

#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (cond) {                                                                                \
            th_passed++;                                                                           \
        } else {                                                                                   \
            th_failed++;                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond);               \
        }                                                                                          \
    } while (0)

#define CHECKF(cond, ...)                                                                          \
    do {                                                                                           \
        if (cond) {                                                                                \
            th_passed++;                                                                           \
        } else {                                                                                   \
            th_failed++;                                                                           \
            fprintf(stderr, "%s:%d: CHECK failed: %s: ", __FILE__, __LINE__, #cond);               \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fputc('\n', stderr);                                                                   \
        }                                                                                          \
    } while (0)

/* A call returned `want` and its message contains `substr`. */
#define CHECK_ERR(got, want, err, substr)                                                          \
    CHECKF((got) == (want) && strstr((err).msg, (substr)) != NULL,                                 \
           "status %d (want %d), message \"%s\" (want \"%s\")", (int)(got), (int)(want), (err).msg, \
           (substr))

static inline int th_summary(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, th_passed, th_failed);
    return th_failed ? 1 : 0;
}

#endif
