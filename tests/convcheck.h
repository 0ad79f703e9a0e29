#ifndef QPK_TESTS_CONVCHECK_H
#define QPK_TESTS_CONVCHECK_H

#include <stdbool.h>

#include "qpk/convert.h"

/*
 * True if `out` holds exactly the model of folder `dir`: the config, every tensor,
 * each equal to its source rounded (ties to even) to the stored type; with
 * dtype -1 (keep) the bytes themselves must match.
 */
bool check_against_source(const char *dir, const char *out, int dtype);

#endif
