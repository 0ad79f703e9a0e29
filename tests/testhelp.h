/*
 * A tiny test helper: CHECK macros that count and report, and a summary line
 * "N passed, N failed". Each test program returns non-zero if anything failed.
 */
#ifndef QPK_TESTHELP_H
#define QPK_TESTHELP_H

#include <stdint.h>
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

/* About normal (mean 0, variance 1): twelve uniforms of an LCG less 6, from the caller's state. */
static inline double th_gauss(uint64_t *state)
{
    double s = 0;
    for (int i = 0; i < 12; i++) {
        *state = *state * 6364136223846793005ull + 1442695040888963407ull;
        s += (double)(*state >> 11) / 9007199254740992.0;
    }
    return s - 6.0;
}

static inline int th_summary(const char *name)
{
    printf("%s: %d passed, %d failed\n", name, th_passed, th_failed);
    return th_failed ? 1 : 0;
}

#endif
