#ifndef QPK_TESTS_TESTUTIL_H
#define QPK_TESTS_TESTUTIL_H

#include <stdbool.h>
#include <stddef.h>

#include "qpk/convert.h"

/*
 * True if `out` holds exactly the model of folder `dir`: the config, every tensor,
 * each equal to its source rounded (ties to even) to the stored type; with
 * dtype -1 (keep) the bytes themselves must match.
 */
bool check_against_source(const char *dir, const char *out, int dtype);

/* Removes a folder and the files in it (one level, as the tests make them). */
void rm_rf(const char *dir);

/* The whole file, NUL-terminated, malloc'd; NULL if it cannot be read. */
char *slurp(const char *path, size_t *n);

#endif
