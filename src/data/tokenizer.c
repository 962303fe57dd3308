/* SPDX-License-Identifier: MIT */
/*
 * tokenizer.c: byte-level BPE: training, encoding, decoding and the file format.
 *
 * Text is first cut into chunks ("words") by a fixed GPT-2-like rule (pretok_next),
 * and merges never cross a chunk boundary. Training counts unique chunks, then
 * learns merges with an incremental pair table (pair -> count, pair -> chunks that
 * hold it) and a lazy max-heap, so one merge costs only the chunks it touches.
 * Encoding applies merges by rank inside each chunk with a small per-chunk heap.
 * Chunks are at most TOK_MAX_CHUNK bytes, which bounds every token's length and
 * keeps per-chunk work on fixed-size stack arrays. Format: docs/DATA.md.
 */
#include "data/tokenizer.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/file.h"
#include "base/mem.h"

#define TOK_MAGIC        0x424D5054u /* "TPMB" as little-endian bytes */
#define TOK_VERSION      1u
#define TOK_PRETOK       1u /* id of the chunking rule in pretok_next() */
#define TOK_HEADER_BYTES 32
#define TOK_MAX_VOCAB    (1 << 20)
#define TOK_MAX_CHUNK    255 /* also the longest token, so llm.c's uint8 length fits */
#define TOK_N_BYTES      256

#define PAIR_KEY(_l, _r) (((uint64_t)(uint32_t)(_l) << 32) | (uint32_t)(_r))
#define MAP_EMPTY        UINT64_MAX

struct tpm_tokenizer {
    int       V;   /* 256 + n_merges + 1 */
    int       eot; /* V - 1 */
    int       n_merges;
    int32_t  *merges;    /* (n_merges, 2): merge i makes token 256 + i */
    uint32_t *tok_off;   /* (V) offset of each token's bytes in tok_bytes */
    uint8_t  *tok_len;   /* (V) 0 for eot */
    char     *tok_bytes; /* all tokens' bytes back to back */
    uint64_t *rank_keys; /* open-addressing map (left, right) -> merge index */
    int32_t  *rank_vals;
    size_t    rank_mask;
};

/* ------------------------------------------------------------------------------------------ */
/* small helpers                                                                              */

static uint64_t mix64(uint64_t z)
{
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Make room for @p need elements of @p elem bytes, doubling; mem.h has no realloc. */
static tpm_status_t grow(void **ptr, size_t *cap, size_t need, size_t elem)
{
    size_t ncap = *cap ? *cap : 16;
    size_t nbytes;
    void  *p;

    if (need <= *cap) {
        return TPM_OK;
    }
    while (ncap < need) {
        if (ncap > SIZE_MAX / 2) {
            tpm_log_error("tokenizer: table of %zu elements overflows", need);
            return TPM_ERR_OVERFLOW;
        }
        ncap *= 2;
    }
    if (tpm_mul_size(ncap, elem, &nbytes) != TPM_OK) {
        tpm_log_error("tokenizer: table of %zu x %zu bytes overflows", ncap, elem);
        return TPM_ERR_OVERFLOW;
    }
    TPM_CHECK(tpm_malloc(nbytes, &p));
    if (*ptr != NULL) {
        memcpy(p, *ptr, *cap * elem);
        tpm_free(*ptr);
    }
    *ptr = p;
    *cap = ncap;
    return TPM_OK;
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* ------------------------------------------------------------------------------------------ */
/* u64 -> int32 open-addressing map (pair keys never equal MAP_EMPTY: ids are < 2^31)         */

typedef struct {
    uint64_t *keys;
    int32_t  *vals;
    size_t    mask; /* capacity - 1, capacity a power of two */
    size_t    n;
} u64map_t;

static tpm_status_t u64map_init(u64map_t *m, size_t expect)
{
    size_t cap = 64;

    while (cap < 2 * expect) {
        cap *= 2;
    }
    m->keys = NULL;
    m->vals = NULL;
    TPM_CHECK(tpm_calloc(cap, sizeof(*m->keys), (void **)&m->keys));
    if (tpm_calloc(cap, sizeof(*m->vals), (void **)&m->vals) != TPM_OK) {
        tpm_free(m->keys);
        return TPM_ERR_NO_MEMORY;
    }
    memset(m->keys, 0xff, cap * sizeof(*m->keys));
    m->mask = cap - 1;
    m->n    = 0;
    return TPM_OK;
}

static void u64map_cleanup(u64map_t *m)
{
    tpm_free(m->keys);
    tpm_free(m->vals);
    m->keys = NULL;
    m->vals = NULL;
}

static int32_t u64map_get(const u64map_t *m, uint64_t key)
{
    size_t i = (size_t)mix64(key) & m->mask;

    while (m->keys[i] != MAP_EMPTY) {
        if (m->keys[i] == key) {
            return m->vals[i];
        }
        i = (i + 1) & m->mask;
    }
    return -1;
}

static void u64map_insert_raw(uint64_t *keys, int32_t *vals, size_t mask, uint64_t key, int32_t v)
{
    size_t i = (size_t)mix64(key) & mask;

    while (keys[i] != MAP_EMPTY) {
        i = (i + 1) & mask;
    }
    keys[i] = key;
    vals[i] = v;
}

/* Insert a key known to be absent; grows at half load. */
static tpm_status_t u64map_put(u64map_t *m, uint64_t key, int32_t val)
{
    if (2 * (m->n + 1) > m->mask + 1) {
        u64map_t nm;

        TPM_CHECK(u64map_init(&nm, m->mask + 1));
        for (size_t i = 0; i <= m->mask; i++) {
            if (m->keys[i] != MAP_EMPTY) {
                u64map_insert_raw(nm.keys, nm.vals, nm.mask, m->keys[i], m->vals[i]);
            }
        }
        nm.n = m->n;
        u64map_cleanup(m);
        *m = nm;
    }
    u64map_insert_raw(m->keys, m->vals, m->mask, key, val);
    m->n++;
    return TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* pre-tokenization                                                                           */

enum { CLS_SPACE, CLS_LETTER, CLS_DIGIT, CLS_OTHER };

/* Bytes >= 0x80 count as letters so that UTF-8 words (accents, CJK) stay in one chunk. */
static int byte_class(unsigned char c)
{
    if (c == ' ' || c == '\n' || c == '\t' || c == '\r' || c == '\v' || c == '\f') {
        return CLS_SPACE;
    }
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c >= 0x80) {
        return CLS_LETTER;
    }
    if (c >= '0' && c <= '9') {
        return CLS_DIGIT;
    }
    return CLS_OTHER;
}

/*
 * End of the chunk that starts at @p i (< n). A chunk is: one space plus a run of
 * letters, digits or other non-space bytes (" hello", " 42", " (!"); or such a run
 * alone; or a whitespace run, which leaves its last space to the next word the way
 * GPT-2 does ("a   b" -> "a", "  ", " b"). Any run is cut at TOK_MAX_CHUNK bytes.
 * This rule is part of the file format (TOK_PRETOK): changing it needs a new id.
 */
static size_t pretok_next(const unsigned char *s, size_t n, size_t i)
{
    size_t lim = n - i > TOK_MAX_CHUNK ? i + TOK_MAX_CHUNK : n;
    size_t j;
    int    cls;

    if (s[i] == ' ' && i + 1 < lim && byte_class(s[i + 1]) != CLS_SPACE) {
        cls = byte_class(s[i + 1]);
        j   = i + 2;
    } else {
        cls = byte_class(s[i]);
        j   = i + 1;
    }
    while (j < lim && byte_class(s[j]) == cls) {
        j++;
    }
    if (cls == CLS_SPACE && j < n && j - i > 1 && s[j - 1] == ' ' &&
        byte_class(s[j]) != CLS_SPACE) {
        j--;
    }
    return j;
}

/* ------------------------------------------------------------------------------------------ */
/* tokenizer object                                                                           */

void tpm_tokenizer_destroy(tpm_tokenizer_t *tok)
{
    if (tok == NULL) {
        return;
    }
    tpm_free(tok->merges);
    tpm_free(tok->tok_off);
    tpm_free(tok->tok_len);
    tpm_free(tok->tok_bytes);
    tpm_free(tok->rank_keys);
    tpm_free(tok->rank_vals);
    tpm_free(tok);
}

/*
 * Build the lookup tables from a validated merge list (takes ownership of
 * @p merges, also on failure). Token lengths must already be known to be
 * <= TOK_MAX_CHUNK (training guarantees it; parse_bytes checks it).
 */
static tpm_status_t tok_build(int32_t *merges, int n_merges, tpm_tokenizer_t **tok_p)
{
    tpm_tokenizer_t *tok;
    tpm_status_t     status;
    u64map_t         map;
    int              V     = TOK_N_BYTES + n_merges + 1;
    size_t           total = TOK_N_BYTES;

    status = tpm_calloc(1, sizeof(*tok), (void **)&tok);
    if (status != TPM_OK) {
        tpm_free(merges);
        return status;
    }
    tok->V        = V;
    tok->eot      = V - 1;
    tok->n_merges = n_merges;
    tok->merges   = merges;
    TPM_CHECK_GOTO(tpm_calloc((size_t)V, sizeof(*tok->tok_off), (void **)&tok->tok_off), status,
                   err_destroy);
    TPM_CHECK_GOTO(tpm_calloc((size_t)V, sizeof(*tok->tok_len), (void **)&tok->tok_len), status,
                   err_destroy);
    for (int i = 0; i < TOK_N_BYTES; i++) {
        tok->tok_len[i] = 1;
    }
    for (int i = 0; i < n_merges; i++) {
        total += (size_t)tok->tok_len[merges[2 * i]] + tok->tok_len[merges[2 * i + 1]];
        tok->tok_len[TOK_N_BYTES + i] =
            (uint8_t)(tok->tok_len[merges[2 * i]] + tok->tok_len[merges[2 * i + 1]]);
    }
    TPM_CHECK_GOTO(tpm_malloc(total, (void **)&tok->tok_bytes), status, err_destroy);
    for (int i = 0; i < TOK_N_BYTES; i++) {
        tok->tok_off[i]   = (uint32_t)i;
        tok->tok_bytes[i] = (char)i;
    }
    total = TOK_N_BYTES;
    for (int i = 0; i < n_merges; i++) {
        int32_t l = merges[2 * i], r = merges[2 * i + 1];

        tok->tok_off[TOK_N_BYTES + i] = (uint32_t)total;
        memcpy(tok->tok_bytes + total, tok->tok_bytes + tok->tok_off[l], tok->tok_len[l]);
        memcpy(tok->tok_bytes + total + tok->tok_len[l], tok->tok_bytes + tok->tok_off[r],
               tok->tok_len[r]);
        total += (size_t)tok->tok_len[l] + tok->tok_len[r];
    }
    tok->tok_off[V - 1] = (uint32_t)total;

    TPM_CHECK_GOTO(u64map_init(&map, (size_t)n_merges), status, err_destroy);
    for (int i = 0; i < n_merges; i++) {
        u64map_insert_raw(map.keys, map.vals, map.mask, PAIR_KEY(merges[2 * i], merges[2 * i + 1]),
                          i);
    }
    tok->rank_keys = map.keys;
    tok->rank_vals = map.vals;
    tok->rank_mask = map.mask;
    *tok_p         = tok;
    return TPM_OK;

err_destroy:
    tpm_tokenizer_destroy(tok);
    return status;
}

static int32_t tok_rank(const tpm_tokenizer_t *tok, int32_t l, int32_t r)
{
    uint64_t key = PAIR_KEY(l, r);
    size_t   i   = (size_t)mix64(key) & tok->rank_mask;

    while (tok->rank_keys[i] != MAP_EMPTY) {
        if (tok->rank_keys[i] == key) {
            return tok->rank_vals[i];
        }
        i = (i + 1) & tok->rank_mask;
    }
    return -1;
}

int tpm_tokenizer_vocab_size(const tpm_tokenizer_t *tok)
{
    return tok->V;
}

int tpm_tokenizer_eot(const tpm_tokenizer_t *tok)
{
    return tok->eot;
}

const char *tpm_tokenizer_token_bytes(const tpm_tokenizer_t *tok, int32_t id, size_t *len_p)
{
    if (id < 0 || id >= tok->eot) {
        return NULL;
    }
    *len_p = tok->tok_len[id];
    return tok->tok_bytes + tok->tok_off[id];
}

/* ------------------------------------------------------------------------------------------ */
/* training                                                                                   */

typedef struct {
    int32_t left, right;
    int64_t count;
    int64_t old_count; /* count when first touched by the current merge */
    int32_t stamp;     /* merge that last touched it */
    int32_t last_word; /* last word pushed on its occurrence list (dedup) */
    int32_t head;      /* occurrence list: index into occ, -1 = empty */
} pair_t;

typedef struct {
    int32_t word;
    int32_t next;
} occ_t;

typedef struct {
    int64_t  count;
    uint64_t key; /* PAIR_KEY, the tie-breaker */
    int32_t  pair;
} heap_ent_t;

typedef struct {
    /* unique words (chunks) */
    unsigned char *bytes; /* word bytes back to back */
    size_t         n_bytes, cap_bytes;
    uint32_t      *w_off; /* (n_words) into bytes and sym */
    uint8_t       *w_len; /* (n_words) bytes, then current symbol count after merges */
    int64_t       *w_freq;
    uint64_t      *w_hash;
    int32_t       *w_stamp;
    size_t         n_words, cap_words, cap_len, cap_freq, cap_hash;
    int32_t       *w_tab; /* open addressing over word indices, -1 empty */
    size_t         tab_mask;
    int32_t       *sym; /* (n_bytes) current symbols of each word */

    pair_t     *pairs;
    size_t      n_pairs, cap_pairs;
    u64map_t    pair_map;
    occ_t      *occ;
    size_t      n_occ, cap_occ;
    heap_ent_t *heap;
    size_t      n_heap, cap_heap;
    int32_t    *touched;
    size_t      n_touched, cap_touched;
} bpe_train_t;

static void train_cleanup(bpe_train_t *t)
{
    tpm_free(t->bytes);
    tpm_free(t->w_off);
    tpm_free(t->w_len);
    tpm_free(t->w_freq);
    tpm_free(t->w_hash);
    tpm_free(t->w_stamp);
    tpm_free(t->w_tab);
    tpm_free(t->sym);
    tpm_free(t->pairs);
    u64map_cleanup(&t->pair_map);
    tpm_free(t->occ);
    tpm_free(t->heap);
    tpm_free(t->touched);
}

static uint64_t hash_bytes(const unsigned char *s, size_t n)
{
    uint64_t h = 0xcbf29ce484222325ULL; /* FNV-1a, finished with a mix for the low bits */

    for (size_t i = 0; i < n; i++) {
        h = (h ^ s[i]) * 0x100000001b3ULL;
    }
    return mix64(h);
}

static tpm_status_t words_rehash(bpe_train_t *t, size_t cap)
{
    int32_t *tab;

    TPM_CHECK(tpm_malloc(cap * sizeof(*tab), (void **)&tab));
    memset(tab, 0xff, cap * sizeof(*tab));
    for (size_t w = 0; w < t->n_words; w++) {
        size_t i = (size_t)t->w_hash[w] & (cap - 1);

        while (tab[i] >= 0) {
            i = (i + 1) & (cap - 1);
        }
        tab[i] = (int32_t)w;
    }
    tpm_free(t->w_tab);
    t->w_tab    = tab;
    t->tab_mask = cap - 1;
    return TPM_OK;
}

static tpm_status_t words_add(bpe_train_t *t, const unsigned char *s, size_t n)
{
    uint64_t h = hash_bytes(s, n);
    size_t   i = (size_t)h & t->tab_mask;
    size_t   w;

    while (t->w_tab[i] >= 0) {
        w = (size_t)t->w_tab[i];
        if (t->w_hash[w] == h && t->w_len[w] == n && memcmp(t->bytes + t->w_off[w], s, n) == 0) {
            t->w_freq[w]++;
            return TPM_OK;
        }
        i = (i + 1) & t->tab_mask;
    }
    if (t->n_words >= INT32_MAX || t->n_bytes + n > UINT32_MAX) {
        tpm_log_error("tokenizer: training corpus has too many distinct words");
        return TPM_ERR_OVERFLOW;
    }
    w = t->n_words;
    TPM_CHECK(grow((void **)&t->w_off, &t->cap_words, w + 1, sizeof(*t->w_off)));
    TPM_CHECK(grow((void **)&t->w_len, &t->cap_len, w + 1, sizeof(*t->w_len)));
    TPM_CHECK(grow((void **)&t->w_freq, &t->cap_freq, w + 1, sizeof(*t->w_freq)));
    TPM_CHECK(grow((void **)&t->w_hash, &t->cap_hash, w + 1, sizeof(*t->w_hash)));
    TPM_CHECK(grow((void **)&t->bytes, &t->cap_bytes, t->n_bytes + n, 1));
    memcpy(t->bytes + t->n_bytes, s, n);
    t->w_off[w]  = (uint32_t)t->n_bytes;
    t->w_len[w]  = (uint8_t)n;
    t->w_freq[w] = 1;
    t->w_hash[w] = h;
    t->n_bytes += n;
    t->n_words++;
    t->w_tab[i] = (int32_t)w;
    if (2 * t->n_words > t->tab_mask + 1) {
        TPM_CHECK(words_rehash(t, 2 * (t->tab_mask + 1)));
    }
    return TPM_OK;
}

/* Heap order: larger count first, then the smaller (left, right): deterministic ties. */
static int heap_before(const heap_ent_t *a, const heap_ent_t *b)
{
    return a->count > b->count || (a->count == b->count && a->key < b->key);
}

static tpm_status_t heap_push(bpe_train_t *t, int32_t p)
{
    heap_ent_t e = {t->pairs[p].count, PAIR_KEY(t->pairs[p].left, t->pairs[p].right), p};
    size_t     i = t->n_heap;

    TPM_CHECK(grow((void **)&t->heap, &t->cap_heap, i + 1, sizeof(*t->heap)));
    while (i > 0 && heap_before(&e, &t->heap[(i - 1) / 2])) {
        t->heap[i] = t->heap[(i - 1) / 2];
        i          = (i - 1) / 2;
    }
    t->heap[i] = e;
    t->n_heap++;
    return TPM_OK;
}

static heap_ent_t heap_pop(bpe_train_t *t)
{
    heap_ent_t top  = t->heap[0];
    heap_ent_t last = t->heap[--t->n_heap];
    size_t     i    = 0;

    for (;;) {
        size_t c = 2 * i + 1;

        if (c >= t->n_heap) {
            break;
        }
        if (c + 1 < t->n_heap && heap_before(&t->heap[c + 1], &t->heap[c])) {
            c++;
        }
        if (!heap_before(&t->heap[c], &last)) {
            break;
        }
        t->heap[i] = t->heap[c];
        i          = c;
    }
    if (t->n_heap > 0) {
        t->heap[i] = last;
    }
    return top;
}

/*
 * Add @p delta occurrences of (l, r). @p w >= 0 also records that word w holds
 * the pair. @p stamp >= 0 (the current merge) records the count before the
 * merge's first change, so that only pairs that grew get a new heap entry.
 */
static tpm_status_t pair_add(bpe_train_t *t, int32_t l, int32_t r, int64_t delta, int32_t w,
                             int32_t stamp)
{
    uint64_t key = PAIR_KEY(l, r);
    int32_t  p   = u64map_get(&t->pair_map, key);
    pair_t  *pp;

    if (p < 0) {
        if (t->n_pairs >= INT32_MAX) {
            tpm_log_error("tokenizer: too many distinct pairs");
            return TPM_ERR_OVERFLOW;
        }
        TPM_CHECK(grow((void **)&t->pairs, &t->cap_pairs, t->n_pairs + 1, sizeof(*t->pairs)));
        p           = (int32_t)t->n_pairs++;
        t->pairs[p] = (pair_t){l, r, 0, 0, -1, -1, -1};
        TPM_CHECK(u64map_put(&t->pair_map, key, p));
    }
    pp = &t->pairs[p];
    if (stamp >= 0 && pp->stamp != stamp) {
        pp->stamp     = stamp;
        pp->old_count = pp->count;
        TPM_CHECK(
            grow((void **)&t->touched, &t->cap_touched, t->n_touched + 1, sizeof(*t->touched)));
        t->touched[t->n_touched++] = p;
    }
    pp->count += delta;
    if (w >= 0 && pp->last_word != w) {
        if (t->n_occ >= INT32_MAX) {
            tpm_log_error("tokenizer: too many pair occurrences");
            return TPM_ERR_OVERFLOW;
        }
        TPM_CHECK(grow((void **)&t->occ, &t->cap_occ, t->n_occ + 1, sizeof(*t->occ)));
        t->occ[t->n_occ] = (occ_t){w, pp->head};
        pp->head         = (int32_t)t->n_occ++;
        pp->last_word    = w;
    }
    return TPM_OK;
}

/* Replace every (l, r) in the words that hold it by token @p id (merge number @p m). */
static tpm_status_t train_apply_merge(bpe_train_t *t, int32_t p, int32_t id, int32_t m)
{
    int32_t l = t->pairs[p].left, r = t->pairs[p].right;

    t->n_touched = 0;
    for (int32_t it = t->pairs[p].head; it >= 0; it = t->occ[it].next) {
        int32_t  w = t->occ[it].word;
        int32_t *s = t->sym + t->w_off[w];
        size_t   n = t->w_len[w], j = 0, i;
        int64_t  f     = t->w_freq[w];
        int      found = 0;

        if (t->w_stamp[w] == m) {
            continue; /* listed twice */
        }
        t->w_stamp[w] = m;
        for (i = 0; i + 1 < n && !found; i++) {
            found = s[i] == l && s[i + 1] == r;
        }
        if (!found) {
            continue; /* stale entry: an earlier merge removed the pair from w */
        }
        /* Simpler than patching neighbours: drop all of w's pairs, merge, add them back. */
        for (i = 0; i + 1 < n; i++) {
            TPM_CHECK(pair_add(t, s[i], s[i + 1], -f, -1, m));
        }
        for (i = 0; i < n; j++) {
            if (i + 1 < n && s[i] == l && s[i + 1] == r) {
                s[j] = id;
                i += 2;
            } else {
                s[j] = s[i++];
            }
        }
        n           = j;
        t->w_len[w] = (uint8_t)n;
        for (i = 0; i + 1 < n; i++) {
            int new_pair = s[i] == id || s[i + 1] == id;

            TPM_CHECK(pair_add(t, s[i], s[i + 1], f, new_pair ? w : -1, m));
        }
    }
    t->pairs[p].head = -1; /* the pair cannot occur again: it holds no new token */
    for (size_t k = 0; k < t->n_touched; k++) {
        pair_t *pp = &t->pairs[t->touched[k]];

        if (pp->count > pp->old_count) {
            TPM_CHECK(heap_push(t, t->touched[k]));
        }
    }
    return TPM_OK;
}

/*
 * Best pair: the heap holds, for every pair with a positive count, an entry at
 * least as large as that count (entries are pushed when a count grows, stale
 * ones are refreshed on pop), so the first entry that matches its pair's count
 * is the maximum under heap_before().
 */
static int32_t train_best_pair(bpe_train_t *t, tpm_status_t *status_p)
{
    *status_p = TPM_OK;
    while (t->n_heap > 0) {
        heap_ent_t e  = heap_pop(t);
        pair_t    *pp = &t->pairs[e.pair];

        if (pp->count <= 0) {
            continue;
        }
        if (e.count == pp->count) {
            return e.pair;
        }
        if (e.count > pp->count) {
            *status_p = heap_push(t, e.pair);
            if (*status_p != TPM_OK) {
                return -1;
            }
        }
    }
    return -1;
}

static tpm_status_t train_count_words(bpe_train_t *t, const char *const *docs,
                                      const size_t *doc_lens, size_t n_docs)
{
    TPM_CHECK(words_rehash(t, 1 << 16));
    for (size_t d = 0; d < n_docs; d++) {
        const unsigned char *s = (const unsigned char *)docs[d];
        size_t               n = doc_lens[d];

        if (n > 0 && s == NULL) {
            tpm_log_error("tokenizer: document %zu has %zu bytes but no data", d, n);
            return TPM_ERR_INVALID_ARG;
        }
        for (size_t i = 0; i < n;) {
            size_t j = pretok_next(s, n, i);

            TPM_CHECK(words_add(t, s + i, j - i));
            i = j;
        }
    }
    return TPM_OK;
}

static tpm_status_t train_init_pairs(bpe_train_t *t)
{
    TPM_CHECK(tpm_malloc((t->n_bytes ? t->n_bytes : 1) * sizeof(*t->sym), (void **)&t->sym));
    TPM_CHECK(
        tpm_malloc((t->n_words ? t->n_words : 1) * sizeof(*t->w_stamp), (void **)&t->w_stamp));
    for (size_t i = 0; i < t->n_bytes; i++) {
        t->sym[i] = t->bytes[i];
    }
    TPM_CHECK(u64map_init(&t->pair_map, 1 << 14));
    for (size_t w = 0; w < t->n_words; w++) {
        const int32_t *s = t->sym + t->w_off[w];

        t->w_stamp[w] = -1;
        for (size_t i = 0; i + 1 < t->w_len[w]; i++) {
            TPM_CHECK(pair_add(t, s[i], s[i + 1], t->w_freq[w], (int32_t)w, -1));
        }
    }
    for (size_t p = 0; p < t->n_pairs; p++) {
        TPM_CHECK(heap_push(t, (int32_t)p));
    }
    return TPM_OK;
}

tpm_status_t tpm_tokenizer_train(const char *const *docs, const size_t *doc_lens, size_t n_docs,
                                 int vocab_size, tpm_tokenizer_t **tok_p)
{
    bpe_train_t  t;
    tpm_status_t status;
    int32_t     *merges = NULL;
    int          n_want, n_done = 0;

    if (vocab_size < TOK_N_BYTES + 2 || vocab_size > TOK_MAX_VOCAB) {
        tpm_log_error("tokenizer: vocabulary size %d is out of range [%d, %d]", vocab_size,
                      TOK_N_BYTES + 2, TOK_MAX_VOCAB);
        return TPM_ERR_INVALID_ARG;
    }
    if (n_docs > 0 && (docs == NULL || doc_lens == NULL)) {
        tpm_log_error("tokenizer: %zu documents given without data", n_docs);
        return TPM_ERR_INVALID_ARG;
    }
    n_want = vocab_size - TOK_N_BYTES - 1;
    memset(&t, 0, sizeof(t));
    TPM_CHECK_GOTO(tpm_malloc((size_t)n_want * 2 * sizeof(*merges), (void **)&merges), status, out);
    TPM_CHECK_GOTO(train_count_words(&t, docs, doc_lens, n_docs), status, out);
    TPM_CHECK_GOTO(train_init_pairs(&t), status, out);
    while (n_done < n_want) {
        int32_t p = train_best_pair(&t, &status);

        if (status != TPM_OK) {
            goto out;
        }
        if (p < 0) {
            break; /* every word is a single token */
        }
        merges[2 * n_done]     = t.pairs[p].left;
        merges[2 * n_done + 1] = t.pairs[p].right;
        TPM_CHECK_GOTO(train_apply_merge(&t, p, TOK_N_BYTES + n_done, n_done), status, out);
        n_done++;
    }
    if (n_done == 0) {
        tpm_log_error("tokenizer: the training text has no pair of adjacent bytes to merge "
                      "(%zu documents)",
                      n_docs);
        status = TPM_ERR_INVALID_ARG;
        goto out;
    }
    if (n_done < n_want) {
        tpm_log_warn("tokenizer: the training text supports only %d merges: vocabulary is %d, "
                     "not %d",
                     n_done, TOK_N_BYTES + n_done + 1, vocab_size);
    }
    tpm_log_debug("tokenizer: %zu distinct words, %zu pairs, %d merges", t.n_words, t.n_pairs,
                  n_done);
    train_cleanup(&t);
    return tok_build(merges, n_done, tok_p); /* takes merges */

out:
    train_cleanup(&t);
    tpm_free(merges);
    return status;
}

/* ------------------------------------------------------------------------------------------ */
/* encode / decode                                                                            */

static void chunk_heap_push(uint64_t *h, size_t *n, uint64_t key)
{
    size_t i = (*n)++;

    while (i > 0 && key < h[(i - 1) / 2]) {
        h[i] = h[(i - 1) / 2];
        i    = (i - 1) / 2;
    }
    h[i] = key;
}

static uint64_t chunk_heap_pop(uint64_t *h, size_t *n)
{
    uint64_t top = h[0], last = h[--(*n)];
    size_t   i = 0;

    for (;;) {
        size_t c = 2 * i + 1;

        if (c >= *n) {
            break;
        }
        if (c + 1 < *n && h[c + 1] < h[c]) {
            c++;
        }
        if (h[c] >= last) {
            break;
        }
        h[i] = h[c];
        i    = c;
    }
    if (*n > 0) {
        h[i] = last;
    }
    return top;
}

/*
 * BPE on one chunk (n <= TOK_MAX_CHUNK) into @p out; returns the id count.
 * Candidates are keyed (rank << 32 | position) in a min-heap: the lowest rank
 * first and, within a rank, the leftmost, which reproduces training's
 * left-to-right merges (a merge only creates pairs of higher rank). Stale
 * candidates are detected by re-checking the two symbols on pop.
 */
static size_t encode_chunk(const tpm_tokenizer_t *tok, const unsigned char *s, size_t n,
                           int32_t *out)
{
    int32_t  sym[TOK_MAX_CHUNK];
    int16_t  nxt[TOK_MAX_CHUNK], prv[TOK_MAX_CHUNK];
    uint64_t heap[3 * TOK_MAX_CHUNK]; /* n - 1 initial pushes + at most 2 per merge */
    size_t   nh = 0, k = 0;

    if (n == 1) {
        out[0] = s[0];
        return 1;
    }
    for (size_t i = 0; i < n; i++) {
        sym[i] = s[i];
        nxt[i] = (int16_t)(i + 1 < n ? (int)i + 1 : -1);
        prv[i] = (int16_t)((int)i - 1);
    }
    for (size_t i = 0; i + 1 < n; i++) {
        int32_t rank = tok_rank(tok, sym[i], sym[i + 1]);

        if (rank >= 0) {
            chunk_heap_push(heap, &nh, (uint64_t)rank << 32 | i);
        }
    }
    while (nh > 0) {
        uint64_t key  = chunk_heap_pop(heap, &nh);
        int32_t  rank = (int32_t)(key >> 32);
        int      i = (int)(key & 0xffffffffu), j = nxt[i];
        int32_t  rk;

        if (sym[i] < 0 || j < 0 || sym[i] != tok->merges[2 * rank] ||
            sym[j] != tok->merges[2 * rank + 1]) {
            continue;
        }
        sym[i] = TOK_N_BYTES + rank;
        sym[j] = -1;
        nxt[i] = nxt[j];
        if (nxt[j] >= 0) {
            prv[nxt[j]] = (int16_t)i;
        }
        if (prv[i] >= 0 && (rk = tok_rank(tok, sym[prv[i]], sym[i])) >= 0) {
            chunk_heap_push(heap, &nh, (uint64_t)rk << 32 | (uint32_t)prv[i]);
        }
        if (nxt[i] >= 0 && (rk = tok_rank(tok, sym[i], sym[nxt[i]])) >= 0) {
            chunk_heap_push(heap, &nh, (uint64_t)rk << 32 | (uint32_t)i);
        }
    }
    for (int i = 0; i >= 0; i = nxt[i]) {
        out[k++] = sym[i];
    }
    return k;
}

tpm_status_t tpm_tokenizer_encode(const tpm_tokenizer_t *tok, const char *text, size_t n,
                                  int32_t *ids, size_t cap, size_t *n_ids_p)
{
    const unsigned char *s = (const unsigned char *)text;
    int32_t              buf[TOK_MAX_CHUNK];
    size_t               total = 0;

    if (n > 0 && text == NULL) {
        tpm_log_error("tokenizer: encode of %zu bytes from a NULL buffer", n);
        return TPM_ERR_INVALID_ARG;
    }
    for (size_t i = 0; i < n;) {
        size_t j = pretok_next(s, n, i);
        size_t k = encode_chunk(tok, s + i, j - i, buf);

        for (size_t q = 0; q < k; q++, total++) {
            if (total < cap) {
                ids[total] = buf[q];
            }
        }
        i = j;
    }
    *n_ids_p = total;
    /* Not logged: a short buffer is the documented way to ask for the size. */
    return total > cap ? TPM_ERR_OVERFLOW : TPM_OK;
}

tpm_status_t tpm_tokenizer_decode(const tpm_tokenizer_t *tok, const int32_t *ids, size_t n_ids,
                                  char *out, size_t cap, size_t *n_p)
{
    size_t total = 0;

    for (size_t i = 0; i < n_ids; i++) {
        int32_t id = ids[i];
        size_t  len;

        if (id < 0 || id >= tok->V) {
            tpm_log_error("tokenizer: id %d at position %zu is outside the vocabulary [0, %d)", id,
                          i, tok->V);
            return TPM_ERR_INVALID_ARG;
        }
        len = tok->tok_len[id];
        if (total < cap) {
            memcpy(out + total, tok->tok_bytes + tok->tok_off[id],
                   len < cap - total ? len : cap - total);
        }
        total += len;
    }
    *n_p = total;
    return total > cap ? TPM_ERR_OVERFLOW : TPM_OK;
}

/* ------------------------------------------------------------------------------------------ */
/* serialization                                                                              */

tpm_status_t tpm_tokenizer_to_bytes(const tpm_tokenizer_t *tok, void **buf_p, size_t *n_p)
{
    size_t         n = TOK_HEADER_BYTES + (size_t)tok->n_merges * 8;
    unsigned char *b;

    TPM_CHECK(tpm_calloc(n, 1, (void **)&b));
    put_u32(b + 0, TOK_MAGIC);
    put_u32(b + 4, TOK_VERSION);
    put_u32(b + 8, (uint32_t)tok->V);
    put_u32(b + 12, (uint32_t)tok->eot);
    put_u32(b + 16, (uint32_t)tok->n_merges);
    put_u32(b + 20, TOK_PRETOK);
    /* b[24..32): reserved, zero */
    for (int i = 0; i < 2 * tok->n_merges; i++) {
        put_u32(b + TOK_HEADER_BYTES + 4 * (size_t)i, (uint32_t)tok->merges[i]);
    }
    *buf_p = b;
    *n_p   = n;
    return TPM_OK;
}

/* Validate and parse; @p what names the source (a path) in error messages. */
static tpm_status_t parse_bytes(const void *buf, size_t n, const char *what,
                                tpm_tokenizer_t **tok_p)
{
    const unsigned char *b = buf;
    uint32_t             magic, version, V, eot, n_merges, pretok;
    size_t               want;
    int32_t             *merges;
    uint16_t            *len = NULL;
    u64map_t             seen;
    tpm_status_t         status;

    if (n < TOK_HEADER_BYTES) {
        tpm_log_error("%s: truncated tokenizer: %zu bytes, the header alone is %d", what, n,
                      TOK_HEADER_BYTES);
        return TPM_ERR_FORMAT;
    }
    magic    = get_u32(b);
    version  = get_u32(b + 4);
    V        = get_u32(b + 8);
    eot      = get_u32(b + 12);
    n_merges = get_u32(b + 16);
    pretok   = get_u32(b + 20);
    if (magic != TOK_MAGIC) {
        tpm_log_error("%s: not a tpmpi tokenizer (magic 0x%08x, expected 0x%08x)", what, magic,
                      TOK_MAGIC);
        return TPM_ERR_FORMAT;
    }
    if (version != TOK_VERSION || pretok != TOK_PRETOK) {
        tpm_log_error("%s: unsupported tokenizer version %u / pre-tokenizer %u (this build "
                      "reads %u / %u)",
                      what, version, pretok, TOK_VERSION, TOK_PRETOK);
        return TPM_ERR_FORMAT;
    }
    if (V < TOK_N_BYTES + 2 || V > TOK_MAX_VOCAB || n_merges != V - TOK_N_BYTES - 1 ||
        eot != V - 1) {
        tpm_log_error("%s: inconsistent tokenizer header: vocabulary %u, end-of-text %u, %u "
                      "merges (need 256 + merges + 1 tokens, at most %d, end-of-text last)",
                      what, V, eot, n_merges, TOK_MAX_VOCAB);
        return TPM_ERR_FORMAT;
    }
    want = TOK_HEADER_BYTES + (size_t)n_merges * 8;
    if (n != want) {
        tpm_log_error("%s: tokenizer is %zu bytes, expected %zu for %u merges%s", what, n, want,
                      n_merges, n < want ? " (truncated)" : "");
        return TPM_ERR_FORMAT;
    }
    TPM_CHECK(tpm_malloc((size_t)n_merges * 2 * sizeof(*merges), (void **)&merges));
    TPM_CHECK_GOTO(tpm_calloc(V, sizeof(*len), (void **)&len), status, err_merges);
    TPM_CHECK_GOTO(u64map_init(&seen, n_merges), status, err_len);
    for (int i = 0; i < TOK_N_BYTES; i++) {
        len[i] = 1;
    }
    for (uint32_t i = 0; i < n_merges; i++) {
        int32_t l  = (int32_t)get_u32(b + TOK_HEADER_BYTES + 8 * (size_t)i);
        int32_t r  = (int32_t)get_u32(b + TOK_HEADER_BYTES + 8 * (size_t)i + 4);
        int32_t id = (int32_t)(TOK_N_BYTES + i);

        if (l < 0 || r < 0 || l >= id || r >= id) {
            tpm_log_error("%s: merge %u (%d, %d) uses a token that does not exist before "
                          "token %d",
                          what, i, l, r, id);
            status = TPM_ERR_FORMAT;
            goto err_seen;
        }
        if (u64map_get(&seen, PAIR_KEY(l, r)) >= 0) {
            tpm_log_error("%s: merge %u (%d, %d) repeats an earlier merge", what, i, l, r);
            status = TPM_ERR_FORMAT;
            goto err_seen;
        }
        len[id] = (uint16_t)(len[l] + len[r]);
        if (len[id] > TOK_MAX_CHUNK) {
            tpm_log_error("%s: merge %u makes a token of %u bytes (limit %d)", what, i, len[id],
                          TOK_MAX_CHUNK);
            status = TPM_ERR_FORMAT;
            goto err_seen;
        }
        TPM_CHECK_GOTO(u64map_put(&seen, PAIR_KEY(l, r), (int32_t)i), status, err_seen);
        merges[2 * i]     = l;
        merges[2 * i + 1] = r;
    }
    u64map_cleanup(&seen);
    tpm_free(len);
    return tok_build(merges, (int)n_merges, tok_p); /* takes merges */

err_seen:
    u64map_cleanup(&seen);
err_len:
    tpm_free(len);
err_merges:
    tpm_free(merges);
    return status;
}

tpm_status_t tpm_tokenizer_from_bytes(const void *buf, size_t n, tpm_tokenizer_t **tok_p)
{
    if (buf == NULL && n > 0) {
        tpm_log_error("tokenizer: NULL buffer of %zu bytes", n);
        return TPM_ERR_INVALID_ARG;
    }
    return parse_bytes(buf, n, "serialized tokenizer", tok_p);
}

tpm_status_t tpm_tokenizer_load(const char *path, tpm_tokenizer_t **tok_p)
{
    const size_t max_bytes = TOK_HEADER_BYTES + (size_t)TOK_MAX_VOCAB * 8;
    struct stat  st;
    tpm_status_t status;
    void        *buf;
    size_t       n, got = 0;
    int          fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        tpm_log_error("open %s failed: %s", path, strerror(errno));
        return errno == ENOENT ? TPM_ERR_NOT_FOUND : TPM_ERR_IO;
    }
    if (fstat(fd, &st) != 0) {
        tpm_log_error("stat %s failed: %s", path, strerror(errno));
        close(fd);
        return TPM_ERR_IO;
    }
    if (!S_ISREG(st.st_mode)) {
        tpm_log_error("%s: not a tokenizer file (not a regular file)", path);
        close(fd);
        return TPM_ERR_FORMAT;
    }
    if ((uint64_t)st.st_size > max_bytes) {
        tpm_log_error("%s: not a tokenizer file (%lld bytes, the largest valid one is %zu)", path,
                      (long long)st.st_size, max_bytes);
        close(fd);
        return TPM_ERR_FORMAT;
    }
    n      = (size_t)st.st_size;
    status = tpm_malloc(n, &buf);
    if (status != TPM_OK) {
        close(fd);
        return status;
    }
    while (got < n) {
        ssize_t r = read(fd, (char *)buf + got, n - got);

        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            tpm_log_error("read %s failed: %s", path, r < 0 ? strerror(errno) : "file shrank");
            status = TPM_ERR_IO;
            goto out;
        }
        got += (size_t)r;
    }
    status = parse_bytes(buf, n, path, tok_p);
out:
    close(fd);
    tpm_free(buf);
    return status;
}

tpm_status_t tpm_tokenizer_save(const tpm_tokenizer_t *tok, const char *path)
{
    tpm_status_t status;
    void        *buf;
    size_t       n;
    char         tmp[4096];
    FILE        *f;

    TPM_CHECK(tpm_tokenizer_to_bytes(tok, &buf, &n));
    /* temporary, fsync, rename, fsync of the folder: a reader never sees a torn tokenizer */
    status = tpm_file_create_tmp(path, tmp, sizeof(tmp), &f);
    if (status != TPM_OK) {
        tpm_free(buf);
        return status;
    }
    if (fwrite(buf, 1, n, f) != n) {
        tpm_log_error("write %s failed: %s", tmp, strerror(errno));
        status = TPM_ERR_IO;
    }
    status = tpm_file_commit(f, tmp, path, status);
    tpm_free(buf);
    return status;
}
