/*
 * The tokenizer's internals, shared by load.c (tokenizer.json -> tables), bpe.c (hash
 * maps, the merge loop, the piece cache) and tokenizer.c (encode, decode, accessors).
 */
#ifndef QPK_TOKENIZER_INTERNAL_H
#define QPK_TOKENIZER_INTERNAL_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "qpk/tokenizer.h"
#include "qpk_private.h"
#include "unicode.h"

/* Per-id flags. */
enum { TOK_VOCAB = 1, TOK_ADDED = 2, TOK_SPECIAL = 4 };

#define NO_STR UINT32_MAX

/* (left id, right id) -> (rank, merged id), open addressing. */
typedef struct pair_slot {
    uint64_t key; /* left << 32 | right; PAIR_EMPTY when free */
    uint32_t rank, merged;
} pair_slot;
#define PAIR_EMPTY UINT64_MAX

/* A byte trie of the added tokens' contents, for leftmost-longest matching. */
typedef struct trie_node {
    uint32_t child;   /* first child (0: none; node 0 is the root) */
    uint32_t sibling; /* next child of the same parent */
    int32_t token;    /* id of the added token ending here, or -1 */
    uint8_t byte;
} trie_node;

typedef struct bpe_cache bpe_cache;

typedef struct tok_str {
    uint32_t off, len;
} tok_str;

struct qpk_tokenizer {
    uint32_t n_ids;    /* 1 + largest id */
    tok_str *str;      /* per id: its string in pool (off NO_STR: no token) */
    uint8_t *flags;    /* per id: TOK_* */
    char *pool;        /* every token string, NUL-terminated */
    size_t pool_len, pool_cap;

    uint64_t *map; /* string -> hash tag << 32 | (id + 1) (0: empty), over every token */
    uint32_t map_mask;

    uint32_t n_vocab; /* entries of model.vocab (what tokenizers calls the vocab size) */
    uint32_t n_merges;
    uint32_t (*merges)[2]; /* by rank: left and right ids */
    pair_slot *pairs;
    uint32_t pair_mask;
    uint32_t byte_id[256]; /* the id of each byte's byte-level symbol */
    bool ignore_merges;
    bool nfc;

    trie_node *trie;
    uint64_t added_first[4]; /* bitmap of the added tokens' first bytes */
    uint32_t n_trie;
    uint32_t n_added;

    bpe_cache *cache; /* mutable behind a const tokenizer: see bpe.c */
};

/* GPT-2's bytes_to_unicode: the code point standing for each byte. */
uint32_t qpk_tok_byte_char(uint8_t b);
/* Inverse: the byte a code point stands for, or -1. */
int qpk_tok_char_byte(uint32_t cp);

uint64_t qpk_tok_hash(const void *p, size_t n);

/* String map over t->pool. find returns the id or -1. */
int32_t qpk_tok_map_find(const qpk_tokenizer *t, const char *s, size_t n);
/* Inserts id (whose string is already in the pool); false if the string is there already. */
bool qpk_tok_map_insert(qpk_tokenizer *t, uint32_t id);

/* The merge of (a, b), or NULL. */
static inline const pair_slot *tok_pair_find(const qpk_tokenizer *t, uint32_t a, uint32_t b)
{
    uint64_t key = (uint64_t)a << 32 | b;
    uint32_t i = (uint32_t)((key * 0x9E3779B97F4A7C15ull) >> 32) & t->pair_mask;
    for (;; i = (i + 1) & t->pair_mask) {
        const pair_slot *s = &t->pairs[i];
        if (s->key == key)
            return s;
        if (s->key == PAIR_EMPTY)
            return NULL;
    }
}
/* Inserts a merge; false if the pair is already there. */
bool qpk_tok_pair_insert(qpk_tokenizer *t, uint32_t a, uint32_t b, uint32_t rank, uint32_t merged);

/* Growable id array. */
typedef struct tok_ids {
    int32_t *v;
    size_t n, cap;
} tok_ids;
bool qpk_tok_ids_push(tok_ids *a, int32_t id);

/* Working memory of one encode call. */
typedef struct tok_work {
    tok_ids out;
    qpk_nfc_buf nfc;
    char *repaired;
    /* BPE */
    uint32_t *sym;
    int32_t *prev, *next;
    size_t sym_cap;
    struct heap_item *heap;
    size_t heap_n, heap_cap;
    char *bl; /* a piece in byte-level form (ignore_merges) */
    size_t bl_cap;
    bpe_cache *cache; /* the shared cache if this call owns it, else NULL */
} tok_work;

/* Appends the BPE ids of one pre-tokenized piece (raw bytes). false on out-of-memory. */
bool qpk_tok_bpe_piece(const qpk_tokenizer *t, tok_work *w, const unsigned char *p, size_t n);

/* Takes the shared piece cache if no other call holds it (allocating it on first use). */
void qpk_tok_cache_acquire(const qpk_tokenizer *t, tok_work *w);
void qpk_tok_cache_release(const qpk_tokenizer *t, tok_work *w);
void qpk_tok_cache_free(bpe_cache *c);
bpe_cache *qpk_tok_cache_new(void);

void qpk_tok_work_free(tok_work *w);

#endif
