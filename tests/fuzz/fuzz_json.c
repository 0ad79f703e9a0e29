/* libFuzzer target: the strict JSON reader every qpk JSON input goes through, and cJSON behind it. */
#include <stdlib.h>
#include <string.h>

#include "qpk_json.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qpk_err e;
    cJSON *root;
    /* What passes the check must parse, and hold no duplicate key: cJSON agrees on every value. */
    if (qpk_json_parse("fuzz", (const char *)data, size, &root, &e) != QPK_OK)
        return 0;
    if (!root)
        __builtin_trap();
    char *again = cJSON_PrintUnformatted(root);
    if (again && qpk_json_check("again", again, strlen(again), &e) != QPK_OK)
        __builtin_trap(); /* cJSON's own output of an accepted document is accepted */
    free(again);
    cJSON_Delete(root);
    return 0;
}
