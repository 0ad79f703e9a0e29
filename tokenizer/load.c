/*
 * tokenizer.json -> qpk_tokenizer. The file is untrusted: every field we rely on is
 * checked, and every configuration we do not implement exactly is refused by name, so a
 * tokenizer that loads is one whose ids we can vouch for. What `tokenizers` itself does
 * with each field is noted where it decides our choice.
 */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"
#include "qpk_json.h"
#include "pretok.h"


/* A token string quoted for a message: control bytes escaped, cut near 48 bytes (at a
 * character boundary). */
static const char *show(const char *s, size_t n, char buf[96])
{
    size_t o = 0;
    for (size_t i = 0; i < n && o < 80; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7F || c == '\\')
            o += (size_t)snprintf(buf + o, 96 - o, "\\x%02X", c);
        else
            buf[o++] = (char)c;
        if (i + 1 < n && o >= 48 && ((unsigned char)s[i + 1] & 0xC0) != 0x80) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
    }
    buf[o] = 0;
    return buf;
}

/* obj[key], refusing a key given twice (cJSON would see the first, serde the last). */
static qpk_status field(const cJSON *obj, const char *key, const char *where, const cJSON **out,
                        qpk_err *e)
{
    *out = NULL;
    const cJSON *it;
    cJSON_ArrayForEach(it, obj)
    {
        if (!it->string || strcmp(it->string, key) != 0)
            continue;
        if (*out)
            return qpk_err_setf(e, QPK_E_CORRUPT, "%s: key '%s' appears twice", where, key);
        *out = it;
    }
    return QPK_OK;
}

static bool present(const cJSON *x)
{
    return x && !cJSON_IsNull(x);
}

/* A boolean field; absent or null -> dflt. */
static qpk_status get_bool(const cJSON *obj, const char *key, const char *where, bool dflt,
                           bool *out, qpk_err *e)
{
    const cJSON *it;
    QPK_TRY(field(obj, key, where, &it, e));
    if (!present(it)) {
        *out = dflt;
        return QPK_OK;
    }
    if (!cJSON_IsBool(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s: '%s' is not true or false", where, key);
    *out = cJSON_IsTrue(it);
    return QPK_OK;
}

/* The "type" string of a component object. */
static qpk_status get_type(const cJSON *obj, const char *where, const char **type, qpk_err *e)
{
    if (!cJSON_IsObject(obj))
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not an object", where);
    const cJSON *it;
    QPK_TRY(field(obj, "type", where, &it, e));
    if (!cJSON_IsString(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s has no \"type\" string", where);
    *type = it->valuestring;
    return QPK_OK;
}

/* An integer id in [0, QPK_TOKENIZER_MAX_ID]. */
static qpk_status get_id(const cJSON *it, const char *what, uint32_t *out, qpk_err *e)
{
    if (!cJSON_IsNumber(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s: the id is not a number", what);
    double v = it->valuedouble;
    if (v != floor(v) || v < 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s: id %g is not a non-negative integer", what, v);
    if (v > QPK_TOKENIZER_MAX_ID)
        return qpk_err_setf(e, QPK_E_LIMIT, "%s: id %.0f is past the limit %d", what, v,
                            QPK_TOKENIZER_MAX_ID);
    *out = (uint32_t)v;
    return QPK_OK;
}

/* An added token's content: not absurdly long, and valid UTF-8 (json.c has checked every
 * string of the file already; this keeps the tables' invariant local). */
static qpk_status check_str(const char *s, const char *what, qpk_err *e)
{
    size_t n = strlen(s);
    char b[96];
    if (n > QPK_TOKENIZER_MAX_TOKEN)
        return qpk_err_setf(e, QPK_E_LIMIT, "%s '%s' is %zu bytes, past the limit %d", what,
                            show(s, n, b), n, QPK_TOKENIZER_MAX_TOKEN);
    if (qpk_utf8_valid_prefix(s, n) != n)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s '%s' is not valid UTF-8", what, show(s, n, b));
    return QPK_OK;
}

/* ------------------------------------------------------- pipeline components */

static qpk_status check_normalizer(qpk_tokenizer *t, const cJSON *root, qpk_err *e)
{
    const cJSON *n;
    const char *type;
    QPK_TRY(field(root, "normalizer", "tokenizer.json", &n, e));
    t->nfc = false;
    if (!present(n))
        return QPK_OK;
    QPK_TRY(get_type(n, "normalizer", &type, e));
    if (strcmp(type, "NFC") != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "normalizer '%.64s' is not supported (qpk implements NFC or none)", type);
    t->nfc = true;
    return QPK_OK;
}

static qpk_status check_split(const cJSON *s, qpk_err *e)
{
    const cJSON *pat, *re, *beh;
    bool invert;
    QPK_TRY(field(s, "pattern", "Split pre_tokenizer", &pat, e));
    if (!cJSON_IsObject(pat))
        return qpk_err_setf(e, QPK_E_CORRUPT, "Split pre_tokenizer: 'pattern' is not an object");
    QPK_TRY(field(pat, "Regex", "Split pattern", &re, e));
    if (!re) {
        const cJSON *str;
        QPK_TRY(field(pat, "String", "Split pattern", &str, e));
        if (cJSON_IsString(str))
            return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                                "pre_tokenizer Split on the string '%.64s' is not supported "
                                "(qpk implements the Qwen2 regex)",
                                str->valuestring);
    }
    if (!cJSON_IsString(re))
        return qpk_err_setf(e, QPK_E_CORRUPT, "Split pattern has no \"Regex\" string");
    if (strcmp(re->valuestring, qpk_pretok_qwen2_pattern) != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "pre_tokenizer Split regex '%.200s' is not supported (qpk implements "
                            "only the Qwen1.5/Qwen2 pattern, compared byte for byte)",
                            re->valuestring);
    QPK_TRY(field(s, "behavior", "Split pre_tokenizer", &beh, e));
    if (!cJSON_IsString(beh) || strcmp(beh->valuestring, "Isolated") != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "pre_tokenizer Split behavior '%.32s' is not supported (qpk implements "
                            "Isolated)",
                            cJSON_IsString(beh) ? beh->valuestring : "?");
    QPK_TRY(get_bool(s, "invert", "Split pre_tokenizer", false, &invert, e));
    if (invert)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "pre_tokenizer Split with invert: true is not supported");
    return QPK_OK;
}

/* ByteLevel as a pre-tokenizer: only its byte mapping, no prefix space, no regex of its own. */
static qpk_status check_byte_level(const cJSON *b, qpk_err *e)
{
    bool prefix, regex;
    QPK_TRY(get_bool(b, "add_prefix_space", "ByteLevel pre_tokenizer", true, &prefix, e));
    QPK_TRY(get_bool(b, "use_regex", "ByteLevel pre_tokenizer", true, &regex, e));
    if (prefix)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "pre_tokenizer ByteLevel with add_prefix_space: true is not supported");
    if (regex)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "pre_tokenizer ByteLevel with use_regex: true (the GPT-2 regex) is not "
                            "supported");
    return QPK_OK;
}

static qpk_status check_pre_tokenizer(const cJSON *root, qpk_err *e)
{
    const cJSON *p, *list;
    const char *type, *t0, *t1;
    QPK_TRY(field(root, "pre_tokenizer", "tokenizer.json", &p, e));
    if (!present(p))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "no pre_tokenizer: qpk implements Sequence[Split(Qwen2 regex), ByteLevel]");
    QPK_TRY(get_type(p, "pre_tokenizer", &type, e));
    if (strcmp(type, "Sequence") != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "pre_tokenizer '%.64s' is not supported (qpk implements "
                            "Sequence[Split(Qwen2 regex), ByteLevel])",
                            type);
    QPK_TRY(field(p, "pretokenizers", "pre_tokenizer", &list, e));
    if (!cJSON_IsArray(list))
        return qpk_err_setf(e, QPK_E_CORRUPT, "pre_tokenizer Sequence has no 'pretokenizers' list");
    if (cJSON_GetArraySize(list) != 2)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "pre_tokenizer Sequence of %d steps is not supported (qpk implements "
                            "Split then ByteLevel)",
                            cJSON_GetArraySize(list));
    const cJSON *a = list->child, *b = a->next;
    QPK_TRY(get_type(a, "pre_tokenizer step 1", &t0, e));
    QPK_TRY(get_type(b, "pre_tokenizer step 2", &t1, e));
    if (strcmp(t0, "Split") != 0 || strcmp(t1, "ByteLevel") != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "pre_tokenizer Sequence[%.32s, %.32s] is not supported (qpk implements "
                            "Split then ByteLevel)",
                            t0, t1);
    QPK_TRY(check_split(a, e));
    return check_byte_level(b, e);
}

static qpk_status check_decoder(const cJSON *root, qpk_err *e)
{
    const cJSON *d, *pp;
    const char *type;
    QPK_TRY(field(root, "decoder", "tokenizer.json", &d, e));
    if (!present(d))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "no decoder: qpk implements the ByteLevel decoder");
    QPK_TRY(get_type(d, "decoder", &type, e));
    if (strcmp(type, "ByteLevel") != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "decoder '%.64s' is not supported (qpk implements ByteLevel)", type);
    /* The post-processor only adds special tokens (when asked to: we never are) and
     * adjusts offsets; its shape is all we check. */
    QPK_TRY(field(root, "post_processor", "tokenizer.json", &pp, e));
    if (present(pp))
        QPK_TRY(get_type(pp, "post_processor", &type, e));
    return QPK_OK;
}

/* ---------------------------------------------------------------- the model */

static qpk_status check_model_flags(qpk_tokenizer *t, const cJSON *m, qpk_err *e)
{
    const char *type = "BPE";
    const cJSON *it;
    QPK_TRY(field(m, "type", "model", &it, e));
    if (it) { /* very old files leave the type out */
        if (!cJSON_IsString(it))
            return qpk_err_setf(e, QPK_E_CORRUPT, "model 'type' is not a string");
        type = it->valuestring;
    }
    if (strcmp(type, "BPE") != 0)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "model type '%.64s' is not supported (qpk implements byte-level BPE)",
                            type);
    QPK_TRY(field(m, "dropout", "model", &it, e));
    if (present(it) && !(cJSON_IsNumber(it) && it->valuedouble == 0))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "BPE dropout is not supported (it makes tokenization random)");
    static const char *const empty_strings[] = {"continuing_subword_prefix", "end_of_word_suffix"};
    for (int i = 0; i < 2; i++) {
        QPK_TRY(field(m, empty_strings[i], "model", &it, e));
        if (present(it) && !cJSON_IsString(it))
            return qpk_err_setf(e, QPK_E_CORRUPT, "model '%s' is not a string", empty_strings[i]);
        if (present(it) && it->valuestring[0])
            return qpk_err_setf(e, QPK_E_UNSUPPORTED, "BPE %s '%.32s' is not supported",
                                empty_strings[i], it->valuestring);
    }
    /* unk_token and fuse_unk only act on a character missing from the vocabulary, and we
     * insist that all 256 byte-level symbols are there: they cannot change the ids. */
    QPK_TRY(field(m, "unk_token", "model", &it, e));
    if (present(it) && !cJSON_IsString(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "model 'unk_token' is not a string");
    bool flag;
    QPK_TRY(get_bool(m, "fuse_unk", "model", false, &flag, e));
    QPK_TRY(get_bool(m, "byte_fallback", "model", false, &flag, e));
    if (flag)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "BPE byte_fallback: true is not supported");
    return get_bool(m, "ignore_merges", "model", false, &t->ignore_merges, e);
}

typedef struct added_tok {
    uint32_t id;
    bool special;
    const char *content;
} added_tok;

static qpk_status parse_added(const cJSON *it, uint32_t i, added_tok *a, qpk_err *e)
{
    char where[64];
    snprintf(where, sizeof where, "added token %u", i);
    if (!cJSON_IsObject(it))
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s is not an object", where);
    const cJSON *id, *content;
    QPK_TRY(field(it, "id", where, &id, e));
    QPK_TRY(field(it, "content", where, &content, e));
    if (!cJSON_IsString(content))
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s has no 'content' string", where);
    if (!id)
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s has no 'id'", where);
    QPK_TRY(get_id(id, where, &a->id, e));
    QPK_TRY(check_str(content->valuestring, "added token", e));
    a->content = content->valuestring;
    char b[96];
    if (!a->content[0])
        return qpk_err_setf(e, QPK_E_CORRUPT, "%s has empty content", where);
    /* AddedToken's defaults: single_word, lstrip, rstrip, special false; normalized true. */
    static const char *const must_be_false[] = {"single_word", "lstrip", "rstrip", "normalized"};
    for (int k = 0; k < 4; k++) {
        bool v;
        QPK_TRY(get_bool(it, must_be_false[k], where, k == 3, &v, e));
        if (v)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                                "added token '%s' (id %u) has %s: true%s, which qpk does not "
                                "implement",
                                show(a->content, strlen(a->content), b), a->id, must_be_false[k],
                                k == 3 ? " (the default when absent)" : "");
    }
    return get_bool(it, "special", where, false, &a->special, e);
}

/* added_tokens (read by cJSON: a few dozen entries), checked but not yet added. */
static qpk_status plan_added(const cJSON *list, added_tok **out, uint32_t *n_out, uint32_t *max_id,
                             size_t *bytes, qpk_err *e)
{
    *out = NULL;
    *n_out = 0;
    if (!present(list))
        return QPK_OK;
    if (!cJSON_IsArray(list))
        return qpk_err_setf(e, QPK_E_CORRUPT, "'added_tokens' is not a list");
    int n = cJSON_GetArraySize(list);
    if (n == 0)
        return QPK_OK;
    added_tok *a = calloc((size_t)n, sizeof *a);
    if (!a)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    *out = a;
    const cJSON *it;
    uint32_t i = 0;
    cJSON_ArrayForEach(it, list)
    {
        QPK_TRY(parse_added(it, i, &a[i], e));
        if (a[i].id > *max_id)
            *max_id = a[i].id;
        *bytes += strlen(a[i].content);
        *n_out = ++i;
    }
    return QPK_OK;
}

/* ------------------------------------------------------------ the big tables */

/* Where model.vocab and model.merges sit in the text (NULL: absent). */
typedef struct spans {
    const char *vocab, *vocab_end, *merges, *merges_end;
} spans;

/* Reads an object key into *kb (growing it). */
static bool read_key(qpk_jreader *r, char **kb, size_t *kcap)
{
    return qpk_jr_string(r, kb, kcap, 0, NULL) && qpk_jr_expect(r, ':', "expected ':'");
}

/* The members of model: records where vocab and merges are, skips the rest. */
static bool scan_model(qpk_jreader *r, spans *sp, char **kb, size_t *kcap)
{
    r->p++; /* '{' */
    if (qpk_jr_peek(r) == '}') {
        r->p++;
        return true;
    }
    for (;;) {
        if (!read_key(r, kb, kcap))
            return false;
        const char **start = strcmp(*kb, "vocab") == 0    ? &sp->vocab
                             : strcmp(*kb, "merges") == 0 ? &sp->merges
                                                          : NULL;
        if (start && *start)
            return qpk_jr_fail(r, QPK_E_CORRUPT, start == &sp->vocab ? "model: key 'vocab' given twice"
                                                                 : "model: key 'merges' given twice");
        char c = qpk_jr_peek(r);
        const char *v = r->p;
        /* read_vocab and read_merges validate these strictly when they read them */
        if (!(start && (c == '{' || c == '[') ? qpk_jr_skip_brackets(r) : qpk_jr_skip(r, 2)))
            return false;
        if (start) {
            *start = v;
            *(start == &sp->vocab ? &sp->vocab_end : &sp->merges_end) = r->p;
        }
        char d = qpk_jr_peek(r);
        if (d != ',' && d != '}')
            return qpk_jr_fail(r, QPK_E_CORRUPT, "expected ',' or '}'");
        r->p++;
        if (d == '}')
            return true;
    }
}

/*
 * Validates the whole document as strict JSON (json.h) and finds model.vocab and
 * model.merges, so that cJSON never sees them.
 */
static qpk_status scan_document(const char *json, size_t len, spans *sp, qpk_err *e)
{
    qpk_jreader r = {.base = json, .p = json, .end = json + len, .e = e, .doc = "tokenizer.json"};
    char *kb = NULL;
    size_t kcap = 0;
    bool ok, seen_model = false;
    memset(sp, 0, sizeof *sp);
    if (qpk_jr_peek(&r) != '{') {
        ok = qpk_jr_skip(&r, 0); /* build() refuses a value that is not an object */
    } else {
        r.p++;
        ok = true;
        if (qpk_jr_peek(&r) == '}')
            r.p++;
        else
            for (;;) {
                if (!(ok = read_key(&r, &kb, &kcap)))
                    break;
                if (strcmp(kb, "model") == 0 && qpk_jr_peek(&r) == '{') {
                    if (seen_model) {
                        ok = qpk_jr_fail(&r, QPK_E_CORRUPT, "key 'model' given twice");
                        break;
                    }
                    seen_model = true;
                    ok = scan_model(&r, sp, &kb, &kcap);
                } else {
                    ok = qpk_jr_skip(&r, 1);
                }
                char d = qpk_jr_peek(&r);
                if (!ok || (d != ',' && d != '}')) {
                    ok = ok ? qpk_jr_fail(&r, QPK_E_CORRUPT, "expected ',' or '}'") : false;
                    break;
                }
                r.p++;
                if (d == '}')
                    break;
            }
    }
    free(kb);
    qpk_jr_free(&r);
    if (!ok)
        return r.status;
    if (qpk_jr_peek(&r) != 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.json has bytes after its JSON value (byte %td)",
                            r.p - json);
    return QPK_OK;
}

/* The document with the vocab and merges values replaced by 0, for cJSON. */
static char *without_tables(const char *json, size_t len, const spans *sp, size_t *out_len)
{
    const char *cut[2][2] = {{sp->vocab, sp->vocab_end}, {sp->merges, sp->merges_end}};
    if (cut[0][0] && cut[1][0] && cut[1][0] < cut[0][0]) {
        const char *a = cut[0][0], *b = cut[0][1];
        cut[0][0] = cut[1][0], cut[0][1] = cut[1][1], cut[1][0] = a, cut[1][1] = b;
    }
    char *out = malloc(len + 2), *o = out;
    if (!out)
        return NULL;
    const char *p = json;
    for (int i = 0; i < 2; i++) {
        if (!cut[i][0])
            continue;
        memcpy(o, p, (size_t)(cut[i][0] - p));
        o += cut[i][0] - p;
        *o++ = '0';
        p = cut[i][1];
    }
    memcpy(o, p, (size_t)(json + len - p));
    o += json + len - p;
    *out_len = (size_t)(o - out);
    return out;
}

typedef struct ventry {
    uint32_t off, len, id;
} ventry;

/* model.vocab: its strings go straight into the pool, its (string, id) pairs into *list. */
static qpk_status read_vocab(qpk_tokenizer *t, const char *json, const spans *sp, ventry **list,
                             uint32_t *n_out, uint32_t *max_id, qpk_err *e)
{
    if (!sp->vocab || *sp->vocab != '{')
        return qpk_err_setf(e, QPK_E_CORRUPT, "model has no 'vocab' object");
    qpk_jreader r = {.base = json, .p = sp->vocab + 1, .end = sp->vocab_end, .e = e, .doc = "tokenizer.json"};
    size_t n = 0, cap = 0;
    ventry *v = NULL;
    bool more = qpk_jr_peek(&r) != '}';
    if (!more)
        r.p++;
    while (more) {
        if (n == cap) {
            cap = cap ? 2 * cap : 65536;
            ventry *nv = realloc(v, cap * sizeof *v);
            if (!nv) /* v stays the caller's to free, as *list */
                return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for the vocabulary");
            v = nv;
        }
        size_t len;
        uint64_t id;
        *list = v;
        if (!qpk_jr_string(&r, &t->pool, &t->pool_cap, t->pool_len, &len))
            return r.status;
        char b[96];
        const char *str = t->pool + t->pool_len;
        if (len > QPK_TOKENIZER_MAX_TOKEN)
            return qpk_err_setf(e, QPK_E_LIMIT, "vocab token '%s' is %zu bytes, past the limit %d",
                                show(str, len, b), len, QPK_TOKENIZER_MAX_TOKEN);
        if (!qpk_jr_expect(&r, ':', "expected ':'"))
            return r.status;
        if (!qpk_jr_uint(&r, QPK_TOKENIZER_MAX_ID, &id, "id not an integer in [0, 16777215]"))
            return qpk_err_prefix(e, r.status, "vocab token '%s'", show(str, len, b));
        v[n++] = (ventry){(uint32_t)t->pool_len, (uint32_t)len, (uint32_t)id};
        t->pool_len += len + 1;
        if ((uint32_t)id > *max_id)
            *max_id = (uint32_t)id;
        char d = qpk_jr_peek(&r);
        if (d != ',' && d != '}')
            return qpk_jr_fail(&r, QPK_E_CORRUPT, "expected ',' or '}'"), r.status;
        r.p++;
        more = d == ',';
    }
    *list = v;
    *n_out = (uint32_t)n;
    if (qpk_jr_peek(&r) != 0)
        return qpk_jr_fail(&r, QPK_E_CORRUPT, "unexpected character"), r.status;
    if (n == 0)
        return qpk_err_setf(e, QPK_E_CORRUPT, "the vocabulary is empty");
    return QPK_OK;
}

static bool pool_reserve(qpk_tokenizer *t, size_t more)
{
    if (t->pool_len + more <= t->pool_cap)
        return true;
    size_t c = t->pool_cap ? t->pool_cap : 4096;
    while (c < t->pool_len + more)
        c *= 2;
    char *p = realloc(t->pool, c);
    if (!p)
        return false;
    t->pool = p, t->pool_cap = c;
    return true;
}

static qpk_status alloc_tables(qpk_tokenizer *t, uint32_t max_id, size_t n_str, size_t trie_nodes,
                               qpk_err *e)
{
    t->n_ids = max_id + 1;
    size_t slots = 16;
    while (slots < n_str + n_str / 2)
        slots *= 2;
    t->map_mask = (uint32_t)slots - 1;
    t->map = calloc(slots, sizeof *t->map);
    t->str = malloc(t->n_ids * sizeof *t->str);
    t->flags = calloc(t->n_ids, 1);
    t->trie = calloc(trie_nodes, sizeof *t->trie);
    if (!t->map || !t->str || !t->flags || !t->trie)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %u token ids", t->n_ids);
    for (uint32_t i = 0; i < t->n_ids; i++)
        t->str[i] = (tok_str){NO_STR, 0};
    t->trie[0].token = -1;
    t->n_trie = 1;
    return QPK_OK;
}

static qpk_status fill_vocab(qpk_tokenizer *t, const ventry *v, uint32_t n, qpk_err *e)
{
    char b1[96], b2[96];
    for (uint32_t i = 0; i < n; i++) {
        uint32_t id = v[i].id;
        if (t->str[id].off != NO_STR)
            return qpk_err_setf(e, QPK_E_CORRUPT, "vocab: id %u is given to both '%s' and '%s'", id,
                                show(t->pool + t->str[id].off, t->str[id].len, b1),
                                show(t->pool + v[i].off, v[i].len, b2));
        t->str[id].off = v[i].off;
        t->str[id].len = v[i].len;
        t->flags[id] = TOK_VOCAB;
        if (!qpk_tok_map_insert(t, id))
            return qpk_err_setf(e, QPK_E_CORRUPT, "vocab: token '%s' appears twice",
                                show(t->pool + v[i].off, v[i].len, b1));
    }
    t->n_vocab = n;
    /* Every byte must have its symbol: tokenizers would silently drop a missing one. */
    for (int byte = 0; byte < 256; byte++) {
        char s[4];
        size_t len = qpk_utf8_put(qpk_tok_byte_char((uint8_t)byte), s);
        int32_t id = qpk_tok_map_find(t, s, len);
        if (id < 0)
            return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                                "the vocabulary lacks the byte-level symbol '%.*s' of byte 0x%02X "
                                "(qpk needs all 256)",
                                (int)len, s, byte);
        t->byte_id[byte] = (uint32_t)id;
    }
    return QPK_OK;
}

static int32_t vocab_id(const qpk_tokenizer *t, const char *s, size_t n)
{
    int32_t id = qpk_tok_map_find(t, s, n);
    return id >= 0 && (t->flags[id] & TOK_VOCAB) ? id : -1;
}

/*
 * One merge into buf as a then b, contiguous (so buf[0..an+bn) is their concatenation):
 * "a b" with exactly one space, as tokenizers splits it, or ["a", "b"]. *skip for the
 * "#version" lines tokenizers leaves out of the "a b" form.
 */
static bool read_merge(qpk_jreader *r, bool legacy, char **buf, size_t *cap, size_t *an, size_t *bn,
                       bool *skip)
{
    *skip = false;
    char c = qpk_jr_peek(r);
    if (c != '"' && c != '[')
        return r->failed ? false : qpk_jr_fail(r, QPK_E_CORRUPT, "a merge is neither \"a b\" nor [\"a\", \"b\"]");
    if (c != (legacy ? '"' : '['))
        return qpk_jr_fail(r, QPK_E_CORRUPT,
                       legacy ? "merge is not a string like the first" : "merge is not a pair like the first");
    if (!legacy) {
        r->p++;
        if (!qpk_jr_string(r, buf, cap, 0, an) || !qpk_jr_expect(r, ',', "merge is not a pair of strings") ||
            !qpk_jr_string(r, buf, cap, *an, bn) || !qpk_jr_expect(r, ']', "merge is not a pair of strings"))
            return false;
        return true;
    }
    const char *at = r->p;
    size_t n;
    if (!qpk_jr_string(r, buf, cap, 0, &n))
        return false;
    if (n >= 8 && memcmp(*buf, "#version", 8) == 0) {
        *skip = true;
        return true;
    }
    char *sp = memchr(*buf, ' ', n);
    if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp - *buf) - 1)) {
        r->p = at;
        return qpk_jr_fail(r, QPK_E_CORRUPT, "merge is not two tokens and one space");
    }
    *an = (size_t)(sp - *buf);
    *bn = n - *an - 1;
    memmove(sp, sp + 1, *bn);
    return true;
}

/* model.merges, into t->merges (by rank) and the pair map. */
static qpk_status read_merges(qpk_tokenizer *t, const char *json, const spans *sp, qpk_err *e)
{
    if (!sp->merges || *sp->merges != '[')
        return qpk_err_setf(e, QPK_E_CORRUPT, "model has no 'merges' list");
    qpk_jreader r = {.base = json, .p = sp->merges + 1, .end = sp->merges_end, .e = e, .doc = "tokenizer.json"};
    uint32_t (*m)[3] = NULL; /* left, right, merged */
    size_t n = 0, cap = 0, bcap = 0;
    char *buf = NULL, ba[96], bb[96], bm[96];
    qpk_status s = QPK_OK;
    bool legacy = qpk_jr_peek(&r) == '"', more = qpk_jr_peek(&r) != ']';
    if (!more)
        r.p++;
    while (more && s == QPK_OK) {
        size_t an = 0, bn = 0;
        bool skip;
        if (!read_merge(&r, legacy, &buf, &bcap, &an, &bn, &skip)) {
            s = r.status;
            break;
        }
        char d = qpk_jr_peek(&r);
        if (d != ',' && d != ']') {
            qpk_jr_fail(&r, QPK_E_CORRUPT, "expected ',' or ']'");
            s = r.status;
            break;
        }
        r.p++;
        more = d == ',';
        if (skip)
            continue;
        int32_t ia = vocab_id(t, buf, an), ib = vocab_id(t, buf + an, bn), im = -1;
        if (ia >= 0 && ib >= 0)
            im = vocab_id(t, buf, an + bn);
        if (ia < 0 || ib < 0 || im < 0) {
            s = qpk_err_setf(e, QPK_E_CORRUPT, "merge %zu ('%s', '%s'): '%s' is not in the vocabulary",
                             n, show(buf, an, ba), show(buf + an, bn, bb),
                             ia < 0 ? ba : ib < 0 ? bb : show(buf, an + bn, bm));
            break;
        }
        if (n == cap) {
            cap = cap ? 2 * cap : 65536;
            void *nm = realloc(m, cap * sizeof *m);
            if (!nm) {
                s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory for the merges");
                break;
            }
            m = nm;
        }
        m[n][0] = (uint32_t)ia, m[n][1] = (uint32_t)ib, m[n][2] = (uint32_t)im;
        n++;
    }
    free(buf);
    if (s == QPK_OK && qpk_jr_peek(&r) != 0)
        s = (qpk_jr_fail(&r, QPK_E_CORRUPT, "unexpected character"), r.status);
    size_t slots = 16;
    while (s == QPK_OK && slots < n + n / 2)
        slots *= 2;
    if (s == QPK_OK) {
        t->pairs = malloc(slots * sizeof *t->pairs);
        t->merges = malloc((n ? n : 1) * sizeof *t->merges);
        if (!t->pairs || !t->merges)
            s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory for %zu merges", n);
    }
    if (s == QPK_OK) {
        memset(t->pairs, 0xFF, slots * sizeof *t->pairs);
        t->pair_mask = (uint32_t)slots - 1;
    }
    for (uint32_t i = 0; s == QPK_OK && i < n; i++) {
        if (!qpk_tok_pair_insert(t, m[i][0], m[i][1], i, m[i][2])) {
            s = qpk_err_setf(e, QPK_E_CORRUPT, "merges %u and %u are both ('%s', '%s')",
                             tok_pair_find(t, m[i][0], m[i][1])->rank, i,
                             show(t->pool + t->str[m[i][0]].off, t->str[m[i][0]].len, ba),
                             show(t->pool + t->str[m[i][1]].off, t->str[m[i][1]].len, bb));
            break;
        }
        t->merges[i][0] = m[i][0], t->merges[i][1] = m[i][1];
        t->n_merges = i + 1;
    }
    free(m);
    return s;
}

/* Appends a string (room reserved beforehand) and its NUL; returns its offset. */
static uint32_t pool_add(qpk_tokenizer *t, const char *s, size_t n)
{
    uint32_t off = (uint32_t)t->pool_len;
    memcpy(t->pool + off, s, n);
    t->pool[off + n] = 0;
    t->pool_len += n + 1;
    return off;
}

/* --------------------------------------------------------------- added tokens */

static void trie_insert(qpk_tokenizer *t, const unsigned char *s, size_t n, uint32_t id)
{
    uint32_t node = 0;
    t->added_first[s[0] >> 6] |= 1ull << (s[0] & 63);
    for (size_t i = 0; i < n; i++) {
        uint32_t c = t->trie[node].child;
        while (c && t->trie[c].byte != s[i])
            c = t->trie[c].sibling;
        if (!c) {
            c = t->n_trie++;
            t->trie[c].byte = s[i];
            t->trie[c].token = -1;
            t->trie[c].sibling = t->trie[node].child;
            t->trie[node].child = c;
        }
        node = c;
    }
    t->trie[node].token = (int32_t)id;
}

/*
 * Adds one added token, as tokenizers' deserializer does: in file order, each gets the id
 * of a token with the same content if there is one, else the next id after the vocabulary
 * and the added tokens so far. tokenizers only warns when that differs from the id in the
 * file; then its ids are not the file's, and we refuse rather than guess which is meant.
 */
static qpk_status add_token(qpk_tokenizer *t, const added_tok *a, int64_t *max_added, qpk_err *e)
{
    uint32_t id = a->id;
    const char *content = a->content;
    size_t n = strlen(content);
    char b1[96], b2[96];
    int32_t have = qpk_tok_map_find(t, content, n);
    if (have >= 0 && (t->flags[have] & TOK_ADDED))
        return qpk_err_setf(e, QPK_E_CORRUPT, "added token '%s' is listed twice",
                            show(content, n, b1));
    uint32_t want;
    if (have >= 0) {
        want = (uint32_t)have;
    } else {
        int64_t m = *max_added;
        want = m < 0 || (m < t->n_vocab && t->n_vocab != 0) ? t->n_vocab : (uint32_t)m + 1;
    }
    if (id != want)
        return qpk_err_setf(e, QPK_E_UNSUPPORTED,
                            "added token '%s' has id %u, but tokenizers would give it id %u "
                            "(it renumbers added tokens in file order)",
                            show(content, n, b1), id, want);
    if (have < 0 && t->str[id].off != NO_STR)
        return qpk_err_setf(e, QPK_E_CORRUPT, "added token '%s' takes id %u of vocabulary token '%s'",
                            show(content, n, b1), id,
                            show(t->pool + t->str[id].off, t->str[id].len, b2));
    if (have < 0) {
        t->str[id].off = pool_add(t, content, n);
        t->str[id].len = (uint32_t)n;
        qpk_tok_map_insert(t, id);
    }
    t->flags[id] |= TOK_ADDED | (a->special ? TOK_SPECIAL : 0);
    if ((int64_t)id > *max_added)
        *max_added = id;
    trie_insert(t, (const unsigned char *)content, n, id);
    t->n_added++;
    return QPK_OK;
}

static qpk_status load_model(qpk_tokenizer *t, const char *json, const spans *sp,
                             const cJSON *root, qpk_err *e)
{
    const cJSON *m, *added_list;
    QPK_TRY(field(root, "model", "tokenizer.json", &m, e));
    if (!cJSON_IsObject(m))
        return qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.json has no 'model' object");
    QPK_TRY(check_model_flags(t, m, e));
    QPK_TRY(field(root, "added_tokens", "tokenizer.json", &added_list, e));
    ventry *vocab = NULL;
    added_tok *added = NULL;
    uint32_t n_vocab = 0, n_added = 0, max_id = 0;
    size_t added_bytes = 0;
    qpk_status s = read_vocab(t, json, sp, &vocab, &n_vocab, &max_id, e);
    if (s == QPK_OK)
        s = plan_added(added_list, &added, &n_added, &max_id, &added_bytes, e);
    if (s == QPK_OK && !pool_reserve(t, added_bytes + n_added))
        s = qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    if (s == QPK_OK)
        s = alloc_tables(t, max_id, (size_t)n_vocab + n_added, added_bytes + 1, e);
    if (s == QPK_OK)
        s = fill_vocab(t, vocab, n_vocab, e);
    free(vocab);
    if (s == QPK_OK)
        s = read_merges(t, json, sp, e);
    int64_t max_added = -1; /* the largest added id so far, from which tokenizers counts on */
    for (uint32_t i = 0; s == QPK_OK && i < n_added; i++)
        s = add_token(t, &added[i], &max_added, e);
    free(added);
    return s;
}

/* ------------------------------------------------------------------- loading */

static qpk_status build(qpk_tokenizer *t, const char *json, const spans *sp, const cJSON *root,
                        qpk_err *e)
{
    if (!cJSON_IsObject(root))
        return qpk_err_setf(e, QPK_E_CORRUPT, "tokenizer.json is not a JSON object");
    const cJSON *v;
    QPK_TRY(field(root, "version", "tokenizer.json", &v, e));
    if (v && !(cJSON_IsString(v) && strcmp(v->valuestring, "1.0") == 0))
        return qpk_err_setf(e, QPK_E_UNSUPPORTED, "tokenizer.json version '%.32s' (expected \"1.0\")",
                            cJSON_IsString(v) ? v->valuestring : "?");
    QPK_TRY(check_normalizer(t, root, e));
    QPK_TRY(check_pre_tokenizer(root, e));
    QPK_TRY(check_decoder(root, e));
    QPK_TRY(load_model(t, json, sp, root, e));
    t->cache = qpk_tok_cache_new();
    if (!t->cache)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    return QPK_OK;
}

qpk_status qpk_tokenizer_load(qpk_tokenizer **out, const char *json, size_t len, qpk_err *e)
{
    if (!out || (!json && len))
        return qpk_err_setf(e, QPK_E_INVALID_ARG, "qpk_tokenizer_load: NULL argument");
    *out = NULL;
    if (len > QPK_TOKENIZER_MAX_JSON)
        return qpk_err_setf(e, QPK_E_LIMIT, "tokenizer.json is %zu bytes, past the limit %u", len,
                            QPK_TOKENIZER_MAX_JSON);
    spans sp;
    QPK_TRY(scan_document(json, len, &sp, e));
    size_t small_len = 0;
    char *small = without_tables(json, len, &sp, &small_len);
    if (!small)
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    cJSON *root = cJSON_ParseWithLength(small, small_len);
    free(small);
    if (!root) /* the scan accepted it, so only memory can be short */
        return qpk_err_setf(e, QPK_E_NOMEM, "out of memory parsing tokenizer.json");
    qpk_tokenizer *t = calloc(1, sizeof *t);
    qpk_status s = t ? build(t, json, &sp, root, e) : qpk_err_setf(e, QPK_E_NOMEM, "out of memory");
    cJSON_Delete(root);
    if (s != QPK_OK) {
        qpk_tokenizer_free(t);
        return s;
    }
    *out = t;
    return QPK_OK;
}

void qpk_tokenizer_free(qpk_tokenizer *t)
{
    if (!t)
        return;
    free(t->str);
    free(t->flags);
    free(t->pool);
    free(t->map);
    free(t->merges);
    free(t->pairs);
    free(t->trie);
    qpk_tok_cache_free(t->cache);
    free(t);
}
