/* SPDX-License-Identifier: MIT */
/*
 * test_tokenizer.c: byte-level BPE. Exact round trips on arbitrary bytes, the
 * encode/decode size contract, determinism, the file format and its checks,
 * and the fast trainer and encoder against naive reference versions written
 * here in the most obvious way.
 */
#include <criterion/criterion.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/mem.h"
#include "base/rng.h"
#include "data/tokenizer.h"

TestSuite(tokenizer, .timeout = 60);

static const char *english[] = {
    "The quick brown fox jumps over the lazy dog.\n",
    "A journey of a thousand miles begins with a single step.\n",
    "To be, or not to be, that is the question:\n",
    "Whether 'tis nobler in the mind to suffer the slings and arrows of outrageous fortune,\n",
    "Or to take arms against a sea of troubles, and by opposing end them.\n",
    "All that glitters is not gold; often have you heard that told.\n",
    "It was the best of times, it was the worst of times, it was the age of wisdom.\n",
    "In the beginning the Universe was created. This has made a lot of people very angry.\n",
    "There are 10 kinds of people: those who understand binary and those who don't.\n",
    "The answer to the ultimate question of life, the universe and everything is 42.\n",
};
#define N_ENGLISH (sizeof(english) / sizeof(english[0]))

static tpm_tokenizer_t *train_english(int V)
{
    const char      *docs[N_ENGLISH];
    size_t           lens[N_ENGLISH];
    tpm_tokenizer_t *tok = NULL;

    for (size_t i = 0; i < N_ENGLISH; i++) {
        docs[i] = english[i];
        lens[i] = strlen(english[i]);
    }
    cr_assert_eq(tpm_tokenizer_train(docs, lens, N_ENGLISH, V, &tok), TPM_OK);
    cr_assert_not_null(tok);
    return tok;
}

/* Encode then decode, and check that the bytes come back unchanged. */
static void check_round_trip(const tpm_tokenizer_t *tok, const char *s, size_t n)
{
    size_t   n_ids = 0, n_out = 0;
    int32_t *ids = malloc((n + 1) * sizeof(*ids));
    char    *out = malloc(n + 1);

    cr_assert_eq(tpm_tokenizer_encode(tok, s, n, ids, n + 1, &n_ids), TPM_OK);
    cr_assert_leq(n_ids, n);
    for (size_t i = 0; i < n_ids; i++) {
        cr_assert(ids[i] >= 0 && ids[i] < tpm_tokenizer_eot(tok), "id %d out of range", ids[i]);
    }
    cr_assert_eq(tpm_tokenizer_decode(tok, ids, n_ids, out, n + 1, &n_out), TPM_OK);
    cr_assert_eq(n_out, n);
    cr_assert(n == 0 || memcmp(out, s, n) == 0, "decode(encode(s)) differs from s (%zu bytes)", n);
    free(ids);
    free(out);
}

static size_t encode_count(const tpm_tokenizer_t *tok, const char *s, size_t n)
{
    size_t k = 0;

    tpm_tokenizer_encode(tok, s, n, NULL, 0, &k);
    return k;
}

Test(tokenizer, random_byte_strings_round_trip_exactly)
{
    tpm_tokenizer_t *tok = train_english(400);
    char             buf[3000];

    for (uint64_t t = 0; t < 300; t++) {
        size_t n = (size_t)(tpm_rng_u64(1, t, 0) % sizeof(buf));

        for (size_t i = 0; i < n; i++) {
            uint64_t r = tpm_rng_u64(2, t, i);

            /* half the strings are biased towards text so that merges really apply */
            if (t % 2) {
                buf[i] = (char)(r & 0xff);
            } else {
                buf[i] = " etaoinshrdlu\n.,'0123456789\xc3\xa9"[r % 28];
            }
        }
        check_round_trip(tok, buf, n);
    }
    tpm_tokenizer_destroy(tok);
}

Test(tokenizer, every_byte_value_and_invalid_utf8_round_trip)
{
    tpm_tokenizer_t *tok = train_english(300);
    char             all[512];
    const char       bad[] = "\xff\xfe\xc3\x28\xa0\xa1\xe2\x82\x00\x80 \xf0\x28\x8c\xbc\xc0\xaf";

    for (int i = 0; i < 256; i++) {
        char c = (char)i;

        all[i]       = c;
        all[511 - i] = c;
        check_round_trip(tok, &c, 1);
    }
    check_round_trip(tok, all, sizeof(all));
    check_round_trip(tok, bad, sizeof(bad) - 1);
    tpm_tokenizer_destroy(tok);
}

Test(tokenizer, empty_string_encodes_to_no_ids)
{
    tpm_tokenizer_t *tok = train_english(300);
    size_t           k   = 99;

    cr_assert_eq(tpm_tokenizer_encode(tok, "", 0, NULL, 0, &k), TPM_OK);
    cr_assert_eq(k, 0);
    cr_assert_eq(tpm_tokenizer_decode(tok, NULL, 0, NULL, 0, &k), TPM_OK);
    cr_assert_eq(k, 0);
    tpm_tokenizer_destroy(tok);
}

Test(tokenizer, long_runs_beyond_the_chunk_limit_round_trip)
{
    const char      *docs[1];
    size_t           lens[1];
    tpm_tokenizer_t *tok;
    static char      s[4000];

    /* runs of one class longer than a chunk: merges must respect the 255-byte cut */
    memset(s, 'a', 1000);
    memset(s + 1000, ' ', 1000);
    memset(s + 2000, '7', 1000);
    memset(s + 3000, '-', 1000);
    docs[0] = s;
    lens[0] = sizeof(s);
    cr_assert_eq(tpm_tokenizer_train(docs, lens, 1, 400, &tok), TPM_OK);
    check_round_trip(tok, s, sizeof(s));
    for (int id = 0; id < tpm_tokenizer_eot(tok); id++) {
        size_t len;

        cr_assert_not_null(tpm_tokenizer_token_bytes(tok, id, &len));
        cr_assert_leq(len, 255);
    }
    cr_assert_lt(encode_count(tok, s, sizeof(s)), 100);
    tpm_tokenizer_destroy(tok);
}

Test(tokenizer, merges_compress_english_text)
{
    tpm_tokenizer_t *tok   = train_english(512);
    size_t           bytes = 0, ids = 0;

    for (size_t i = 0; i < N_ENGLISH; i++) {
        bytes += strlen(english[i]);
        ids += encode_count(tok, english[i], strlen(english[i]));
    }
    cr_assert_lt(ids * 2, bytes, "%zu ids for %zu bytes", ids, bytes);
    /* text the tokenizer never saw still compresses through the common merges */
    {
        const char *s = "the question of the universe is not that the fox was lazy";

        cr_assert_lt(encode_count(tok, s, strlen(s)), strlen(s) / 2);
    }
    tpm_tokenizer_destroy(tok);
}

Test(tokenizer, pieces_split_at_words_encode_independently)
{
    tpm_tokenizer_t *tok = train_english(400);
    const char      *a = "the universe", *b = " and everything";
    char             ab[64];

    snprintf(ab, sizeof(ab), "%s%s", a, b);
    cr_assert_eq(encode_count(tok, ab, strlen(ab)),
                 encode_count(tok, a, strlen(a)) + encode_count(tok, b, strlen(b)));
    tpm_tokenizer_destroy(tok);
}

Test(tokenizer, training_is_deterministic)
{
    tpm_tokenizer_t *t1 = train_english(450), *t2 = train_english(450);
    void            *b1, *b2;
    size_t           n1, n2;

    cr_assert_eq(tpm_tokenizer_to_bytes(t1, &b1, &n1), TPM_OK);
    cr_assert_eq(tpm_tokenizer_to_bytes(t2, &b2, &n2), TPM_OK);
    cr_assert_eq(n1, n2);
    cr_assert_eq(memcmp(b1, b2, n1), 0);
    tpm_free(b1);
    tpm_free(b2);
    tpm_tokenizer_destroy(t1);
    tpm_tokenizer_destroy(t2);
}

Test(tokenizer, save_and_load_round_trip)
{
    tpm_tokenizer_t *tok = train_english(400), *back = NULL, *mem = NULL;
    char             dir[] = "/tmp/tpm_tok_XXXXXX", path[64];
    void            *b1, *b2;
    size_t           n1, n2;
    const char      *s = "It was the best of fortunes.";
    int32_t          i1[64], i2[64];

    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tokenizer.bin", dir);
    cr_assert_eq(tpm_tokenizer_save(tok, path), TPM_OK);
    cr_assert_eq(tpm_tokenizer_load(path, &back), TPM_OK);
    cr_assert_eq(tpm_tokenizer_vocab_size(back), 400);
    cr_assert_eq(tpm_tokenizer_eot(back), 399);
    cr_assert_eq(tpm_tokenizer_to_bytes(tok, &b1, &n1), TPM_OK);
    cr_assert_eq(tpm_tokenizer_to_bytes(back, &b2, &n2), TPM_OK);
    cr_assert_eq(n1, n2);
    cr_assert_eq(memcmp(b1, b2, n1), 0);
    cr_assert_eq(tpm_tokenizer_from_bytes(b1, n1, &mem), TPM_OK);
    cr_assert_eq(tpm_tokenizer_encode(tok, s, strlen(s), i1, 64, &n1), TPM_OK);
    cr_assert_eq(tpm_tokenizer_encode(back, s, strlen(s), i2, 64, &n2), TPM_OK);
    cr_assert_eq(n1, n2);
    cr_assert_eq(memcmp(i1, i2, n1 * sizeof(*i1)), 0);
    cr_assert_eq(tpm_tokenizer_encode(mem, s, strlen(s), i2, 64, &n2), TPM_OK);
    cr_assert_eq(memcmp(i1, i2, n1 * sizeof(*i1)), 0);
    for (int id = 0; id < 399; id++) {
        size_t      l1, l2;
        const char *p1 = tpm_tokenizer_token_bytes(tok, id, &l1);
        const char *p2 = tpm_tokenizer_token_bytes(back, id, &l2);

        cr_assert_eq(l1, l2);
        cr_assert_eq(memcmp(p1, p2, l1), 0);
    }
    tpm_free(b1);
    tpm_free(b2);
    tpm_tokenizer_destroy(tok);
    tpm_tokenizer_destroy(back);
    tpm_tokenizer_destroy(mem);
    unlink(path);
    rmdir(dir);
}

static void put32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)v;
    p[1] = (unsigned char)(v >> 8);
    p[2] = (unsigned char)(v >> 16);
    p[3] = (unsigned char)(v >> 24);
}

/* Serialized bytes of a valid 400-token tokenizer, to be damaged by each case. */
static unsigned char *good_bytes(size_t *n_p)
{
    tpm_tokenizer_t *tok = train_english(400);
    void            *b;

    cr_assert_eq(tpm_tokenizer_to_bytes(tok, &b, n_p), TPM_OK);
    tpm_tokenizer_destroy(tok);
    cr_assert_eq(*n_p, 32 + 8 * (400 - 257));
    return b;
}

static void expect_format_error(const unsigned char *b, size_t n, const char *what)
{
    tpm_tokenizer_t *tok = NULL;

    cr_assert_eq(tpm_tokenizer_from_bytes(b, n, &tok), TPM_ERR_FORMAT, "%s was accepted", what);
    cr_assert_null(tok);
}

Test(tokenizer, corrupt_tokenizer_bytes_are_rejected)
{
    size_t         n;
    unsigned char *good = good_bytes(&n);
    unsigned char *b    = malloc(n + 8);

    expect_format_error(good, 0, "an empty buffer");
    expect_format_error(good, 31, "a truncated header");
    expect_format_error(good, n - 1, "a truncated merge list");
    expect_format_error(good, n - 8, "a missing merge");
    memcpy(b, good, n);
    memset(b + n, 0, 8);
    expect_format_error(b, n + 8, "trailing bytes");

    memcpy(b, good, n);
    b[0] ^= 1;
    expect_format_error(b, n, "a bad magic");
    memcpy(b, good, n);
    put32(b + 4, 2);
    expect_format_error(b, n, "an unknown version");
    memcpy(b, good, n);
    put32(b + 8, 401);
    expect_format_error(b, n, "a vocabulary size that does not match the merges");
    memcpy(b, good, n);
    put32(b + 12, 5);
    expect_format_error(b, n, "an end-of-text id that is not the last id");
    memcpy(b, good, n);
    put32(b + 16, 0xffffffffu);
    expect_format_error(b, n, "a huge merge count");
    memcpy(b, good, n);
    put32(b + 32 + 8 * 3, 256 + 3);
    expect_format_error(b, n, "a merge that uses its own id");
    memcpy(b, good, n);
    put32(b + 32 + 8 * 3 + 4, 0x80000000u);
    expect_format_error(b, n, "a negative id");
    memcpy(b, good, n);
    memcpy(b + 32 + 8 * 5, b + 32 + 8 * 4, 8);
    expect_format_error(b, n, "a repeated merge");

    /* merges that double a token until it is longer than 255 bytes */
    memcpy(b, good, n);
    put32(b + 32, 'a');
    put32(b + 36, 'a');
    for (uint32_t i = 1; i < 9; i++) {
        put32(b + 32 + 8 * i, 256 + i - 1);
        put32(b + 36 + 8 * i, 256 + i - 1);
    }
    expect_format_error(b, n, "a 512-byte token");
    free(b);
    tpm_free(good);
}

Test(tokenizer, corrupt_or_missing_tokenizer_files_are_rejected)
{
    char             dir[] = "/tmp/tpm_tok_XXXXXX", path[64];
    tpm_tokenizer_t *tok   = NULL;
    size_t           n;
    unsigned char   *good = good_bytes(&n);
    FILE            *f;

    cr_assert_not_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/tokenizer.bin", dir);
    cr_assert_eq(tpm_tokenizer_load(path, &tok), TPM_ERR_NOT_FOUND);
    f = fopen(path, "wb");
    cr_assert_not_null(f);
    fwrite(good, 1, n / 2, f);
    fclose(f);
    cr_assert_eq(tpm_tokenizer_load(path, &tok), TPM_ERR_FORMAT);
    cr_assert_null(tok);
    cr_assert_eq(tpm_tokenizer_load(dir, &tok), TPM_ERR_FORMAT, "a folder was accepted");
    unlink(path);
    rmdir(dir);
    tpm_free(good);
}

Test(tokenizer, end_of_text_is_the_last_id_and_decodes_to_nothing)
{
    tpm_tokenizer_t *tok = train_english(300);
    int32_t          ids[3];
    char             out[8];
    size_t           n, len;

    cr_assert_eq(tpm_tokenizer_vocab_size(tok), 300);
    cr_assert_eq(tpm_tokenizer_eot(tok), 299);
    cr_assert_null(tpm_tokenizer_token_bytes(tok, 299, &len));
    cr_assert_null(tpm_tokenizer_token_bytes(tok, 300, &len));
    cr_assert_null(tpm_tokenizer_token_bytes(tok, -1, &len));
    ids[0] = 'a';
    ids[1] = 299;
    ids[2] = 'b';
    cr_assert_eq(tpm_tokenizer_decode(tok, ids, 3, out, sizeof(out), &n), TPM_OK);
    cr_assert_eq(n, 2);
    cr_assert_eq(memcmp(out, "ab", 2), 0);
    ids[1] = 300;
    cr_assert_eq(tpm_tokenizer_decode(tok, ids, 3, out, sizeof(out), &n), TPM_ERR_INVALID_ARG);
    ids[1] = -1;
    cr_assert_eq(tpm_tokenizer_decode(tok, ids, 3, out, sizeof(out), &n), TPM_ERR_INVALID_ARG);
    /* the text "<|endoftext|>" is ordinary text, never the end-of-text id */
    {
        const char *s = "<|endoftext|>";
        int32_t     e[32];

        cr_assert_eq(tpm_tokenizer_encode(tok, s, strlen(s), e, 32, &n), TPM_OK);
        for (size_t i = 0; i < n; i++) {
            cr_assert_neq(e[i], 299);
        }
    }
    tpm_tokenizer_destroy(tok);
}

Test(tokenizer, encode_and_decode_report_the_size_they_need)
{
    tpm_tokenizer_t *tok = train_english(400);
    const char      *s   = "To be, or not to be: 12345 \xff\xfe";
    size_t           need, n, bytes;
    int32_t          full[64], part[64];
    char             out[64];

    cr_assert_eq(tpm_tokenizer_encode(tok, s, strlen(s), NULL, 0, &need), TPM_ERR_OVERFLOW);
    cr_assert_gt(need, 2);
    cr_assert_eq(tpm_tokenizer_encode(tok, s, strlen(s), full, need, &n), TPM_OK);
    cr_assert_eq(n, need);
    for (int i = 0; i < 64; i++) {
        part[i] = -7;
    }
    cr_assert_eq(tpm_tokenizer_encode(tok, s, strlen(s), part, need - 1, &n), TPM_ERR_OVERFLOW);
    cr_assert_eq(n, need);
    cr_assert_eq(memcmp(part, full, (need - 1) * sizeof(*part)), 0);
    cr_assert_eq(part[need - 1], -7, "encode wrote past its capacity");

    cr_assert_eq(tpm_tokenizer_decode(tok, full, need, NULL, 0, &bytes), TPM_ERR_OVERFLOW);
    cr_assert_eq(bytes, strlen(s));
    memset(out, '#', sizeof(out));
    cr_assert_eq(tpm_tokenizer_decode(tok, full, need, out, bytes - 1, &n), TPM_ERR_OVERFLOW);
    cr_assert_eq(n, bytes);
    cr_assert_eq(memcmp(out, s, bytes - 1), 0);
    cr_assert_eq(out[bytes - 1], '#', "decode wrote past its capacity");
    tpm_tokenizer_destroy(tok);
}

Test(tokenizer, vocabulary_size_out_of_range_is_rejected)
{
    const char      *docs[] = {"abababab"};
    size_t           lens[] = {8};
    tpm_tokenizer_t *tok    = NULL;

    cr_assert_eq(tpm_tokenizer_train(docs, lens, 1, 257, &tok), TPM_ERR_INVALID_ARG);
    cr_assert_eq(tpm_tokenizer_train(docs, lens, 1, (1 << 20) + 1, &tok), TPM_ERR_INVALID_ARG);
    cr_assert_null(tok);
}

Test(tokenizer, small_corpus_stops_when_nothing_is_left_to_merge)
{
    const char      *docs[] = {"abab", "x"};
    size_t           lens[] = {4, 1};
    tpm_tokenizer_t *tok    = NULL;
    size_t           len;
    const char      *p;

    /* "abab" -> "ab" "ab" -> "abab": two merges, then every word is one token */
    cr_assert_eq(tpm_tokenizer_train(docs, lens, 2, 4096, &tok), TPM_OK);
    cr_assert_eq(tpm_tokenizer_vocab_size(tok), 256 + 2 + 1);
    p = tpm_tokenizer_token_bytes(tok, 257, &len);
    cr_assert_eq(len, 4);
    cr_assert_eq(memcmp(p, "abab", 4), 0);
    tpm_tokenizer_destroy(tok);
    tok = NULL;
    cr_assert_eq(tpm_tokenizer_train(docs + 1, lens + 1, 1, 300, &tok), TPM_ERR_INVALID_ARG);
    cr_assert_null(tok);
}

/* ------------------------------------------------------------------------------------------ */
/* naive references                                                                           */

#define REF_V    320
#define REF_DOCS 400
#define REF_MAXW 48

static int32_t ref_sym[REF_DOCS][REF_MAXW];
static int     ref_len[REF_DOCS];
static int64_t ref_count[REF_V][REF_V];

/* Letters only, so that each document is one pre-tokenizer chunk. */
static void make_letter_docs(char docs[REF_DOCS][REF_MAXW + 1], uint64_t seed)
{
    for (int d = 0; d < REF_DOCS; d++) {
        int n = 1 + (int)(tpm_rng_u64(seed, (uint64_t)d, 999) % REF_MAXW);

        for (int i = 0; i < n; i++) {
            /* skewed letter frequencies give many ties and many distinct counts */
            uint64_t r = tpm_rng_u64(seed, (uint64_t)d, (uint64_t)i) % 10;

            docs[d][i] = "aaaabbbccd"[r];
        }
        docs[d][n] = '\0';
        if (d % 7 == 3) {
            memcpy(docs[d], docs[d - 1], sizeof(docs[d])); /* repeated words */
        }
    }
}

/* Classic BPE: count every pair, merge the most frequent (smallest ids on ties), repeat. */
static int naive_train(char docs[REF_DOCS][REF_MAXW + 1], int n_merges, int32_t *merges)
{
    for (int d = 0; d < REF_DOCS; d++) {
        ref_len[d] = (int)strlen(docs[d]);
        for (int i = 0; i < ref_len[d]; i++) {
            ref_sym[d][i] = (unsigned char)docs[d][i];
        }
    }
    for (int m = 0; m < n_merges; m++) {
        int64_t best = 0;
        int     bl = -1, br = -1;

        memset(ref_count, 0, sizeof(ref_count));
        for (int d = 0; d < REF_DOCS; d++) {
            for (int i = 0; i + 1 < ref_len[d]; i++) {
                ref_count[ref_sym[d][i]][ref_sym[d][i + 1]]++;
            }
        }
        for (int l = 0; l < REF_V; l++) {
            for (int r = 0; r < REF_V; r++) {
                if (ref_count[l][r] > best) {
                    best = ref_count[l][r];
                    bl   = l;
                    br   = r;
                }
            }
        }
        if (best == 0) {
            return m;
        }
        merges[2 * m]     = bl;
        merges[2 * m + 1] = br;
        for (int d = 0; d < REF_DOCS; d++) {
            int j = 0;

            for (int i = 0; i < ref_len[d]; j++) {
                if (i + 1 < ref_len[d] && ref_sym[d][i] == bl && ref_sym[d][i + 1] == br) {
                    ref_sym[d][j] = 256 + m;
                    i += 2;
                } else {
                    ref_sym[d][j] = ref_sym[d][i++];
                }
            }
            ref_len[d] = j;
        }
    }
    return n_merges;
}

static uint32_t get32(const unsigned char *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

Test(tokenizer, incremental_training_matches_naive_bpe)
{
    static char      docs[REF_DOCS][REF_MAXW + 1];
    const char      *dp[REF_DOCS];
    size_t           lens[REF_DOCS];
    int32_t          want[2 * (REF_V - 257)];
    tpm_tokenizer_t *tok;
    unsigned char   *b;
    size_t           n;
    int              n_want;

    for (uint64_t seed = 1; seed <= 3; seed++) {
        make_letter_docs(docs, seed);
        for (int d = 0; d < REF_DOCS; d++) {
            dp[d]   = docs[d];
            lens[d] = strlen(docs[d]);
        }
        n_want = naive_train(docs, REF_V - 257, want);
        cr_assert_eq(tpm_tokenizer_train(dp, lens, REF_DOCS, REF_V, &tok), TPM_OK);
        cr_assert_eq(tpm_tokenizer_vocab_size(tok), 256 + n_want + 1);
        cr_assert_eq(tpm_tokenizer_to_bytes(tok, (void **)&b, &n), TPM_OK);
        for (int m = 0; m < n_want; m++) {
            int32_t l = (int32_t)get32(b + 32 + 8 * m), r = (int32_t)get32(b + 36 + 8 * m);

            cr_assert(l == want[2 * m] && r == want[2 * m + 1],
                      "seed %llu merge %d: got (%d, %d), naive BPE gives (%d, %d)",
                      (unsigned long long)seed, m, l, r, want[2 * m], want[2 * m + 1]);
        }
        tpm_free(b);
        tpm_tokenizer_destroy(tok);
    }
}

/* GPT-2 style encoding: repeatedly merge every occurrence of the lowest-ranked pair. */
static int naive_encode(const int32_t *merges, int n_merges, const char *s, int32_t *out)
{
    int n = (int)strlen(s);

    for (int i = 0; i < n; i++) {
        out[i] = (unsigned char)s[i];
    }
    for (;;) {
        int best = n_merges, j = 0;

        for (int i = 0; i + 1 < n; i++) {
            for (int m = 0; m < best; m++) {
                if (merges[2 * m] == out[i] && merges[2 * m + 1] == out[i + 1]) {
                    best = m;
                    break;
                }
            }
        }
        if (best == n_merges) {
            return n;
        }
        for (int i = 0; i < n; j++) {
            if (i + 1 < n && out[i] == merges[2 * best] && out[i + 1] == merges[2 * best + 1]) {
                out[j] = 256 + best;
                i += 2;
            } else {
                out[j] = out[i++];
            }
        }
        n = j;
    }
}

Test(tokenizer, encoding_matches_naive_merge_application)
{
    static char      docs[REF_DOCS][REF_MAXW + 1];
    const char      *dp[REF_DOCS];
    size_t           lens[REF_DOCS];
    tpm_tokenizer_t *tok;
    unsigned char   *b;
    size_t           n;
    int32_t          merges[2 * (REF_V - 257)];
    int              n_merges;

    make_letter_docs(docs, 7);
    for (int d = 0; d < REF_DOCS; d++) {
        dp[d]   = docs[d];
        lens[d] = strlen(docs[d]);
    }
    cr_assert_eq(tpm_tokenizer_train(dp, lens, REF_DOCS, REF_V, &tok), TPM_OK);
    cr_assert_eq(tpm_tokenizer_to_bytes(tok, (void **)&b, &n), TPM_OK);
    n_merges = (int)((n - 32) / 8);
    for (int m = 0; m < 2 * n_merges; m++) {
        merges[m] = (int32_t)get32(b + 32 + 4 * m);
    }
    for (uint64_t t = 0; t < 500; t++) {
        char    s[201];
        int32_t want[200], got[200];
        int     len = 1 + (int)(tpm_rng_u64(11, t, 999) % 200), n_want;

        for (int i = 0; i < len; i++) {
            s[i] = "aaaabbbccde"[tpm_rng_u64(11, t, (uint64_t)i) % 11];
        }
        s[len] = '\0';
        n_want = naive_encode(merges, n_merges, s, want);
        cr_assert_eq(tpm_tokenizer_encode(tok, s, (size_t)len, got, 200, &n), TPM_OK);
        cr_assert_eq((int)n, n_want, "'%s': %zu ids, naive %d", s, n, n_want);
        cr_assert_eq(memcmp(got, want, n * sizeof(*got)), 0, "'%s' encodes differently", s);
    }
    tpm_free(b);
    tpm_tokenizer_destroy(tok);
}
