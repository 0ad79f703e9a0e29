/*
 * retype IN OUT TENSOR TYPE: writes a copy of the .qpk IN with tensor TENSOR stored as
 * TYPE (at its fixed block, or in groups of 32), its data zero bytes of the size the type
 * needs (every scale 0: well formed), every hash recomputed and the format version raised
 * to the type's. The hostile tests' way to a file that is well formed and says whatever
 * the test wants; exits 0 on success, 1 with a message on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qpk/format.h"

static int fail(const char *what, const qpk_err *e)
{
    fprintf(stderr, "retype: %s%s%s\n", what, e ? ": " : "", e ? e->msg : "");
    return 1;
}

int main(int argc, char **argv)
{
    qpk_type type;
    if (argc != 5 || !qpk_type_from_name(argv[4], &type))
        return fail("usage: retype IN OUT TENSOR TYPE (a type name such as int8 or q4_k)", NULL);
    const qpk_type_info *ti = qpk_type_info_of(type);
    const uint32_t group = ti->elem_bytes ? 0 : ti->block ? ti->block : 32;
    qpk_file *f = NULL;
    qpk_writer *w = NULL;
    qpk_err e = {0};
    if (qpk_open(&f, argv[1], NULL, &e) != QPK_OK || qpk_writer_create(&w, argv[2], &e) != QPK_OK)
        return fail("cannot copy", &e);
    bool found = false, ok = true;
    for (size_t i = 0; ok && i < qpk_n_tensors(f); i++) {
        const qpk_tensor *t = qpk_tensor_at(f, i);
        const bool hit = !strcmp(t->name, argv[3]);
        uint64_t n = t->nbytes;
        found |= hit;
        ok = !hit || qpk_tensor_nbytes(type, group, t->ndim, t->dims, &n, &e) == QPK_OK;
        uint8_t *b = ok ? calloc(n ? n : 1, 1) : NULL;
        if (b && !hit)
            memcpy(b, t->data, n);
        ok = b && qpk_writer_begin_tensor(w, t->name, hit ? type : t->type, hit ? group : t->group_size, t->ndim,
                                          t->dims, &e) == QPK_OK &&
             qpk_writer_write(w, b, n, &e) == QPK_OK && qpk_writer_end_tensor(w, &e) == QPK_OK;
        free(b);
    }
    size_t len;
    const char *meta = qpk_metadata(f, &len);
    char *m = malloc(len + 1), *v;
    if (ok && m) {
        memcpy(m, meta, len), m[len] = '\0';
        if (ti->version > qpk_file_version(f) && (v = strstr(m, "\"format_version\":")) != NULL)
            v[strlen("\"format_version\":")] = (char)('0' + ti->version);
    }
    if (!ok || !found || !m)
        qpk_writer_discard(w); /* nothing appears */
    else
        ok = qpk_writer_finish(w, m, len, &e) == QPK_OK;
    free(m);
    qpk_close(f);
    if (!found)
        return fail("no such tensor", NULL);
    return ok ? 0 : fail("cannot write", &e);
}
