/*
 * Development tool, not built by CMake: linked against a llama.cpp build (by hand,
 * outside the repository), it dequantizes every tensor of GGUF files with ggml's own
 * to_float and prints the XXH3-64 of each tensor's f32 values, as JSON. Its output is
 * tests/data/ggml/expected.json, which test_ggml compares qpk's dequantization with. Its
 * first entry, "codebooks", holds the XXH3-64 of each of ggml-common.h's i-quant tables as
 * the dequantization reads them (bytes in memory): qpk stores them in an encoding of its
 * own (quant/iq_grids.c), and a few small files cannot reach every entry.
 *
 *   cc -O2 ggml_hashes.c -I$LLAMA/ggml/include -I$LLAMA/ggml/src -L$LLAMA/build/bin -lggml-base -lxxhash \
 *      -Wl,-rpath,$LLAMA/build/bin -o ggml_hashes
 *   ./ggml_hashes a.gguf b.gguf ... > expected.json
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "ggml.h"
#include "gguf.h"
#define GGML_COMMON_DECL_C
#define GGML_COMMON_IMPL_C
#include "ggml-common.h"

#define TABLE(t) {#t, t, sizeof t}
static const struct {
    const char *name;
    const void *data;
    size_t bytes;
} TABLES[] = {TABLE(iq2xxs_grid),  TABLE(iq2xs_grid),   TABLE(iq2s_grid),   TABLE(iq3xxs_grid), TABLE(iq3s_grid),
              TABLE(iq1s_grid),    TABLE(ksigns_iq2xs), TABLE(kmask_iq2xs), TABLE(kvalues_iq4nl)};

int main(int argc, char **argv)
{
    printf("{\n  \"codebooks\": {\n");
    for (size_t i = 0; i < sizeof TABLES / sizeof *TABLES; i++)
        printf("    \"%s\": {\"bytes\": %zu, \"xxh3\": \"%016llx\"}%s\n", TABLES[i].name, TABLES[i].bytes,
               (unsigned long long)XXH3_64bits(TABLES[i].data, TABLES[i].bytes), i + 1 < sizeof TABLES / sizeof *TABLES ? "," : "");
    printf("  }%s\n", argc > 1 ? "," : "");
    for (int a = 1; a < argc; a++) {
        struct ggml_context *ctx = NULL;
        struct gguf_init_params p = {.no_alloc = false, .ctx = &ctx};
        struct gguf_context *g = gguf_init_from_file(argv[a], p);
        if (!g) {
            fprintf(stderr, "cannot read %s\n", argv[a]);
            return 1;
        }
        const char *base = strrchr(argv[a], '/');
        printf("  \"%s\": {\n", base ? base + 1 : argv[a]);
        const int64_t n = gguf_get_n_tensors(g);
        for (int64_t i = 0; i < n; i++) {
            const char *name = gguf_get_tensor_name(g, i);
            struct ggml_tensor *t = ggml_get_tensor(ctx, name);
            const int64_t numel = ggml_nelements(t);
            float *f = malloc((size_t)numel * sizeof *f);
            if (t->type == GGML_TYPE_F32)
                memcpy(f, t->data, (size_t)numel * sizeof *f);
            else
                ggml_get_type_traits(t->type)->to_float(t->data, f, numel);
            printf("    \"%s\": {\"type\": \"%s\", \"xxh3\": \"%016llx\"}%s\n", name, ggml_type_name(t->type),
                   (unsigned long long)XXH3_64bits(f, (size_t)numel * sizeof *f), i + 1 < n ? "," : "");
            free(f);
        }
        printf("  }%s\n", a + 1 < argc ? "," : "");
        ggml_free(ctx);
        gguf_free(g);
    }
    printf("}\n");
    return 0;
}
