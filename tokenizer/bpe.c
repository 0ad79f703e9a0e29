/*
 * Byte-level BPE: the hash maps behind it, the merge loop of `tokenizers`' Word::merge_all
 * (a min-heap of (rank, position) over a linked list of symbols, stale entries skipped),
 * and a cache of whole pieces, since real text repeats its words.
 */
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* --------------------------------------------------------------- byte level */

/*
 * bytes_to_unicode: printable bytes (! .. ~, ¡ .. ¬, ® .. ÿ) stand for themselves; the
 * other 68, in byte order, take U+0100 onwards (0x00..0x20 -> U+0100..U+0120,
 * 0x7F..0xA0 -> U+0121..U+0142, 0xAD -> U+0143).
 */
uint32_t qpk_tok_byte_char(uint8_t b)
{
    if (b <= 0x20)
        return 0x100u + b;
    if (b >= 0x7F && b <= 0xA0)
        return 0x121u + (b - 0x7Fu);
    if (b == 0xAD)
        return 0x143;
    return b;
}

int qpk_tok_char_byte(uint32_t cp)
{
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xFF && cp != 0xAD))
        return (int)cp;
    if (cp >= 0x100 && cp <= 0x120)
        return (int)(cp - 0x100);
    if (cp >= 0x121 && cp <= 0x142)
        return (int)(cp - 0x121 + 0x7F);
    if (cp == 0x143)
        return 0xAD;
    return -1;
}

/* ---------------------------------------------------------------- hash maps */

uint64_t qpk_tok_hash(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t h = 0x9E3779B97F4A7C15ull ^ (n * 0xFF51AFD7ED558CCDull);
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
        h ^= h >> 31;
        s += 8, n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, s, n);
    h = (h ^ w) * 0x94D049BB133111EBull;
    return h ^ (h >> 29);
}

/* Slots hold the hash's high half as a tag, so probing rarely touches the strings. */
int32_t qpk_tok_map_find(const qpk_tokenizer *t, const char *s, size_t n)
{
    if (!t->map)
        return -1;
    uint64_t h = qpk_tok_hash(s, n), tag = h >> 32 << 32;
    for (uint32_t i = (uint32_t)h & t->map_mask;; i = (i + 1) & t->map_mask) {
        uint64_t v = t->map[i];
        if (v == 0)
            return -1;
        if ((v & ~0xFFFFFFFFull) != tag)
            continue;
        uint32_t id = (uint32_t)v - 1;
        if (t->str[id].len == n && memcmp(t->pool + t->str[id].off, s, n) == 0)
            return (int32_t)id;
    }
}

bool qpk_tok_map_insert(qpk_tokenizer *t, uint32_t id)
{
    const char *s = t->pool + t->str[id].off;
    size_t n = t->str[id].len;
    uint64_t h = qpk_tok_hash(s, n), tag = h >> 32 << 32;
    for (uint32_t i = (uint32_t)h & t->map_mask;; i = (i + 1) & t->map_mask) {
        uint64_t v = t->map[i];
        if (v == 0) {
            t->map[i] = tag | (id + 1);
            return true;
        }
        uint32_t o = (uint32_t)v - 1;
        if ((v & ~0xFFFFFFFFull) == tag && t->str[o].len == n &&
            memcmp(t->pool + t->str[o].off, s, n) == 0)
            return false;
    }
}

bool qpk_tok_pair_insert(qpk_tokenizer *t, uint32_t a, uint32_t b, uint32_t rank, uint32_t merged)
{
    uint64_t key = (uint64_t)a << 32 | b;
    for (uint32_t i = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->pair_mask;;
         i = (i + 1) & t->pair_mask) {
        pair_slot *s = &t->pairs[i];
        if (s->key == key)
            return false;
        if (s->key == PAIR_EMPTY) {
            s->key = key, s->rank = rank, s->merged = merged;
            return true;
        }
    }
}

bool qpk_tok_ids_push(tok_ids *a, int32_t id)
{
    if (a->n == a->cap) {
        size_t c = a->cap ? 2 * a->cap : 1024;
        int32_t *v = realloc(a->v, c * sizeof *v);
        if (!v)
            return false;
        a->v = v, a->cap = c;
    }
    a->v[a->n++] = id;
    return true;
}

/* ---------------------------------------------------------------- the cache */

/*
 * Pieces of up to CACHE_MAX_PIECE bytes and their ids. Bounded: when it fills up it is
 * emptied and refills with what the text uses now. Owned by one encode call at a time
 * (the atomic flag); a call that finds it taken simply does not use it.
 */
#define CACHE_SLOTS (1u << 17)
#define CACHE_KEY_BYTES (1u << 21)
#define CACHE_IDS (1u << 19)
#define CACHE_MAX_PIECE 255

typedef struct cache_slot {
    uint64_t hash;
    uint32_t key, ids; /* offsets into keys / ids */
    uint16_t key_len, n_ids; /* n_ids 0: free slot */
} cache_slot;

struct bpe_cache {
    atomic_flag busy;
    cache_slot *slots;
    char *keys;
    int32_t *ids;
    size_t used, keys_len, ids_len;
};

bpe_cache *qpk_tok_cache_new(void)
{
    bpe_cache *c = calloc(1, sizeof *c);
    if (c)
        atomic_flag_clear(&c->busy);
    return c;
}

void qpk_tok_cache_free(bpe_cache *c)
{
    if (!c)
        return;
    free(c->slots);
    free(c->keys);
    free(c->ids);
    free(c);
}

void qpk_tok_cache_acquire(const qpk_tokenizer *t, tok_work *w)
{
    bpe_cache *c = t->cache;
    w->cache = NULL;
    if (!c || atomic_flag_test_and_set_explicit(&c->busy, memory_order_acquire))
        return;
    if (!c->slots) {
        c->slots = calloc(CACHE_SLOTS, sizeof *c->slots);
        c->keys = malloc(CACHE_KEY_BYTES);
        c->ids = malloc(CACHE_IDS * sizeof *c->ids);
        if (!c->slots || !c->keys || !c->ids) { /* run uncached; try again next time */
            free(c->slots), free(c->keys), free(c->ids);
            c->slots = NULL, c->keys = NULL, c->ids = NULL;
            atomic_flag_clear_explicit(&c->busy, memory_order_release);
            return;
        }
    }
    w->cache = c;
}

void qpk_tok_cache_release(const qpk_tokenizer *t, tok_work *w)
{
    if (w->cache)
        atomic_flag_clear_explicit(&t->cache->busy, memory_order_release);
    w->cache = NULL;
}

static const cache_slot *cache_find(const bpe_cache *c, const unsigned char *p, size_t n,
                                    uint64_t h)
{
    for (uint32_t i = (uint32_t)h & (CACHE_SLOTS - 1);; i = (i + 1) & (CACHE_SLOTS - 1)) {
        const cache_slot *s = &c->slots[i];
        if (s->n_ids == 0)
            return NULL;
        if (s->hash == h && s->key_len == n && memcmp(c->keys + s->key, p, n) == 0)
            return s;
    }
}

static void cache_put(bpe_cache *c, const unsigned char *p, size_t n, uint64_t h,
                      const int32_t *ids, size_t n_ids)
{
    if (n_ids == 0 || n_ids > CACHE_MAX_PIECE)
        return;
    if (c->used >= CACHE_SLOTS / 4 * 3 || c->keys_len + n > CACHE_KEY_BYTES ||
        c->ids_len + n_ids > CACHE_IDS) {
        memset(c->slots, 0, CACHE_SLOTS * sizeof *c->slots);
        c->used = c->keys_len = c->ids_len = 0;
    }
    uint32_t i = (uint32_t)h & (CACHE_SLOTS - 1);
    while (c->slots[i].n_ids != 0)
        i = (i + 1) & (CACHE_SLOTS - 1);
    cache_slot *s = &c->slots[i];
    s->hash = h;
    s->key = (uint32_t)c->keys_len;
    s->key_len = (uint16_t)n;
    s->ids = (uint32_t)c->ids_len;
    s->n_ids = (uint16_t)n_ids;
    memcpy(c->keys + c->keys_len, p, n);
    memcpy(c->ids + c->ids_len, ids, n_ids * sizeof *ids);
    c->keys_len += n;
    c->ids_len += n_ids;
    c->used++;
}

/* ------------------------------------------------------------------ merging */

struct heap_item {
    uint64_t key; /* rank << 32 | position: the smallest pops first */
    uint32_t merged;
};

static bool heap_push(tok_work *w, uint32_t rank, uint32_t pos, uint32_t merged)
{
    if (w->heap_n == w->heap_cap) {
        size_t c = w->heap_cap ? 2 * w->heap_cap : 256;
        struct heap_item *h = realloc(w->heap, c * sizeof *h);
        if (!h)
            return false;
        w->heap = h, w->heap_cap = c;
    }
    struct heap_item x = {(uint64_t)rank << 32 | pos, merged};
    size_t i = w->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (w->heap[parent].key <= x.key)
            break;
        w->heap[i] = w->heap[parent];
        i = parent;
    }
    w->heap[i] = x;
    return true;
}

static struct heap_item heap_pop(tok_work *w)
{
    struct heap_item top = w->heap[0], x = w->heap[--w->heap_n];
    size_t i = 0, n = w->heap_n;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= n)
            break;
        if (c + 1 < n && w->heap[c + 1].key < w->heap[c].key)
            c++;
        if (x.key <= w->heap[c].key)
            break;
        w->heap[i] = w->heap[c];
        i = c;
    }
    if (n)
        w->heap[i] = x;
    return top;
}

static bool push_pair(const qpk_tokenizer *t, tok_work *w, int32_t left)
{
    int32_t right = w->next[left];
    if (right < 0)
        return true;
    const pair_slot *m = tok_pair_find(t, w->sym[left], w->sym[right]);
    return !m || heap_push(w, m->rank, (uint32_t)left, m->merged);
}

#define DEAD UINT32_MAX

/* The merge loop proper over n >= 2 bytes; appends the ids to w->out. */
static bool merge_all(const qpk_tokenizer *t, tok_work *w, const unsigned char *p, size_t n)
{
    if (n > w->sym_cap) {
        size_t c = n < 64 ? 64 : n;
        uint32_t *s = realloc(w->sym, c * sizeof *s);
        if (s)
            w->sym = s;
        int32_t *pr = realloc(w->prev, c * sizeof *pr);
        if (pr)
            w->prev = pr;
        int32_t *nx = realloc(w->next, c * sizeof *nx);
        if (nx)
            w->next = nx;
        if (!s || !pr || !nx)
            return false;
        w->sym_cap = c;
    }
    for (size_t i = 0; i < n; i++) {
        w->sym[i] = t->byte_id[p[i]];
        w->prev[i] = (int32_t)i - 1;
        w->next[i] = i + 1 < n ? (int32_t)i + 1 : -1;
    }
    w->heap_n = 0;
    for (size_t i = 0; i + 1 < n; i++)
        if (!push_pair(t, w, (int32_t)i))
            return false;
    while (w->heap_n) {
        struct heap_item top = heap_pop(w);
        int32_t pos = (int32_t)(uint32_t)top.key;
        int32_t right = w->next[pos];
        if (w->sym[pos] == DEAD || right < 0)
            continue;
        /* Stale entry: the pair here changed since it was queued. Like tokenizers we
         * compare the merged id only; it identifies the pair, since a symbol only grows
         * rightwards and the merged string is their concatenation. */
        const pair_slot *m = tok_pair_find(t, w->sym[pos], w->sym[right]);
        if (!m || m->merged != top.merged)
            continue;
        w->sym[pos] = m->merged;
        w->sym[right] = DEAD;
        w->next[pos] = w->next[right];
        if (w->next[pos] >= 0)
            w->prev[w->next[pos]] = pos;
        if ((w->prev[pos] >= 0 && !push_pair(t, w, w->prev[pos])) || !push_pair(t, w, pos))
            return false;
    }
    for (int32_t i = 0; i >= 0; i = w->next[i]) /* symbol 0 never dies: it only absorbs */
        if (!qpk_tok_ids_push(&w->out, (int32_t)w->sym[i]))
            return false;
    return true;
}

/* ignore_merges: a piece that is itself a vocabulary token is that token. */
static int32_t whole_piece(const qpk_tokenizer *t, tok_work *w, const unsigned char *p, size_t n)
{
    if (2 * n > w->bl_cap) {
        char *b = realloc(w->bl, 2 * n);
        if (!b)
            return -2;
        w->bl = b, w->bl_cap = 2 * n;
    }
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        k += qpk_utf8_put(qpk_tok_byte_char(p[i]), w->bl + k);
    int32_t id = qpk_tok_map_find(t, w->bl, k);
    return id >= 0 && (t->flags[id] & TOK_VOCAB) ? id : -1;
}

bool qpk_tok_bpe_piece(const qpk_tokenizer *t, tok_work *w, const unsigned char *p, size_t n)
{
    if (n == 1)
        return qpk_tok_ids_push(&w->out, (int32_t)t->byte_id[p[0]]);
    uint64_t h = 0;
    bool cacheable = w->cache && n <= CACHE_MAX_PIECE;
    if (cacheable) {
        h = qpk_tok_hash(p, n);
        const cache_slot *s = cache_find(w->cache, p, n, h);
        if (s) {
            for (uint32_t i = 0; i < s->n_ids; i++)
                if (!qpk_tok_ids_push(&w->out, w->cache->ids[s->ids + i]))
                    return false;
            return true;
        }
    }
    size_t first = w->out.n;
    if (t->ignore_merges) {
        int32_t id = whole_piece(t, w, p, n);
        if (id == -2)
            return false;
        if (id >= 0) {
            if (!qpk_tok_ids_push(&w->out, id))
                return false;
            if (cacheable)
                cache_put(w->cache, p, n, h, w->out.v + first, 1);
            return true;
        }
    }
    if (!merge_all(t, w, p, n))
        return false;
    if (cacheable)
        cache_put(w->cache, p, n, h, w->out.v + first, w->out.n - first);
    return true;
}

void qpk_tok_work_free(tok_work *w)
{
    free(w->out.v);
    qpk_nfc_buf_free(&w->nfc);
    free(w->repaired);
    free(w->sym);
    free(w->prev);
    free(w->next);
    free(w->heap);
    free(w->bl);
    memset(w, 0, sizeof *w);
}
