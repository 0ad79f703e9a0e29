/* libFuzzer target: config.json parsing, and the normalized JSON it writes back. */
#include <stdlib.h>
#include <string.h>

#include "qpk/format.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    qpk_config c, again;
    qpk_err e;
    if (qpk_config_parse(&c, (const char *)data, size, &e) != QPK_OK)
        return 0;
    /* Whatever parses must survive its own normalized form unchanged. */
    char *j = qpk_config_to_json(&c);
    if (!j)
        return 0;
    if (qpk_config_parse(&again, j, strlen(j), &e) != QPK_OK || memcmp(&c, &again, sizeof c) != 0)
        __builtin_trap();
    for (size_t i = 0; i < qpk_model_n_tensors(&c) && i < 64; i++) {
        qpk_role role;
        int layer;
        char name[QPK_MAX_NAME];
        qpk_model_tensor_at(&c, i, &role, &layer);
        qpk_tensor_name(name, sizeof name, role, layer);
        qpk_role r2;
        int l2;
        if (!qpk_tensor_role(&c, name, &r2, &l2) || r2 != role || l2 != layer)
            __builtin_trap();
    }
    free(j);
    return 0;
}
