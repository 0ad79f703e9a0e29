/* Reads stdin and exits 0 if it is one strict JSON value (qpk's reader: UTF-8, no duplicate keys), else 1. */
#include <stdio.h>
#include <stdlib.h>

#include "qpk_json.h"

int main(void)
{
    size_t cap = 1 << 16, n = 0, k;
    char *buf = malloc(cap);
    while (buf && (k = fread(buf + n, 1, cap - n, stdin)) > 0)
        if ((n += k) == cap)
            buf = realloc(buf, cap *= 2);
    qpk_err e = {0};
    if (!buf || qpk_json_check("stdin", buf, n, &e) != QPK_OK) {
        fprintf(stderr, "json_check: %s\n", buf ? e.msg : "out of memory");
        return 1;
    }
    free(buf);
    return 0;
}
