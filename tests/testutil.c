/* Helpers shared by the test programs. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <unistd.h>

#include "testutil.h"
#include "qpk/quant.h"

/* Every tensor of out equals its source converted to the stored type. */
bool check_against_source(const char *dir, const char *out, int dtype)
{
    qpk_checkpoint *ck;
    qpk_file *f;
    qpk_err e = {0};
    qpk_open_opts oo = {.verify_checksums = true};
    if (qpk_checkpoint_open(&ck, dir, NULL, &e) != QPK_OK || qpk_open(&f, out, &oo, &e) != QPK_OK) {
        fprintf(stderr, "check_against_source: %s\n", e.msg);
        return false;
    }
    const qpk_config *c = qpk_checkpoint_config(ck);
    bool same = qpk_check_model(f, &e) == QPK_OK && !memcmp(c, qpk_file_config(f), sizeof *c);
    for (size_t i = 0; i < qpk_model_n_tensors(c); i++) {
        qpk_role role;
        int layer;
        char name[QPK_MAX_NAME];
        qpk_model_tensor_at(c, i, &role, &layer);
        qpk_tensor_name(name, sizeof name, role, layer);
        const qpk_st_tensor *src = qpk_checkpoint_tensor(ck, role, layer);
        const qpk_tensor *t = qpk_find_tensor(f, name);
        if (!t) {
            same = false;
            continue;
        }
        float *a = malloc(src->numel * 4 + 4), *b = malloc(src->numel * 4 + 4);
        qpk_type st = src->dtype == QPK_ST_F16 ? QPK_TYPE_F16 : src->dtype == QPK_ST_BF16 ? QPK_TYPE_BF16 : QPK_TYPE_F32;
        qpk_row_to_f32(st, src->data, a, src->numel);
        qpk_type want = dtype < 0 ? st : (qpk_type)dtype;
        same &= t->type == want;
        if (dtype < 0) {
            same &= t->nbytes == src->nbytes && !memcmp(t->data, src->data, src->nbytes);
        } else {
            /* Stored value = source rounded to nearest even in the stored type. */
            uint16_t *h = malloc(src->numel * 2 + 2);
            qpk_row_from_f32(want, a, want == QPK_TYPE_F32 ? (void *)b : (void *)h, src->numel);
            if (want != QPK_TYPE_F32)
                qpk_row_to_f32(want, h, b, src->numel);
            free(h);
            qpk_row_to_f32(t->type, t->data, a, src->numel);
            same &= !memcmp(a, b, src->numel * 4);
        }
        free(a);
        free(b);
    }
    if (!same)
        fprintf(stderr, "%s -> %s (dtype %d): tensors differ from the source\n", dir, out, dtype);
    qpk_close(f);
    qpk_checkpoint_close(ck);
    return same;
}


void rm_rf(const char *dir)
{
    DIR *d = opendir(dir);
    for (struct dirent *de; d && (de = readdir(d));) {
        if (!strcmp(de->d_name, ".") || !strcmp(de->d_name, ".."))
            continue;
        char p[4096];
        snprintf(p, sizeof p, "%s/%s", dir, de->d_name);
        if (unlink(p) != 0)
            rm_rf(p);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

char *slurp(const char *path, size_t *n)
{
    FILE *f = fopen(path, "rb");
    if (!f)
        return NULL;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)(size > 0 ? size : 0) + 1);
    *n = b ? fread(b, 1, (size_t)size, f) : 0;
    if (b)
        b[*n] = 0;
    fclose(f);
    return b;
}
