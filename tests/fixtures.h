/* Locating ../shared/fixtures: a skip locally, a failure under CI (CI=true). */
#ifndef QPK_TESTS_FIXTURES_H
#define QPK_TESTS_FIXTURES_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define TEST_SKIPPED 77 /* ctest's SKIP_RETURN_CODE */

/* The fixtures folder, or NULL after printing why (then exit with fixtures_missing()). */
static inline const char *fixtures_dir(void)
{
    const char *d = getenv("QPK_FIXTURES");
    struct stat sb;
    if (d && stat(d, &sb) == 0 && S_ISDIR(sb.st_mode))
        return d;
    fprintf(stderr, "fixtures not found at '%s' (set QPK_FIXTURES)\n", d ? d : "(unset)");
    return NULL;
}

static inline int fixtures_missing(void)
{
    const char *ci = getenv("CI");
    if (ci && strcmp(ci, "true") == 0) {
        fprintf(stderr, "CI=true: missing fixtures are a failure\n");
        return 1;
    }
    return TEST_SKIPPED;
}

#endif
