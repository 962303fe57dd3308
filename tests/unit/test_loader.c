/* SPDX-License-Identifier: MIT */
/*
 * test_loader.c: token shards (llm.c format), split loading, batch sampling,
 * and --mode=prepare from small fortune-format corpora. Every test works in
 * its own mkdtemp folder under /tmp, removed by the suite's .fini.
 */
#include <criterion/criterion.h>

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "base/mem.h"
#include "data/loader.h"
#include "data/prepare.h"
#include "data/tokenizer.h"

static char tmpdir[64];

static void make_tmpdir(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/tpm_data_XXXXXX");
    cr_assert_not_null(mkdtemp(tmpdir));
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(path);
}

static void remove_tmpdir(void)
{
    nftw(tmpdir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

TestSuite(loader, .init = make_tmpdir, .fini = remove_tmpdir, .timeout = 30);
TestSuite(prepare, .init = make_tmpdir, .fini = remove_tmpdir, .timeout = 60);

/* tmpdir/name in one of 64 rotating buffers: enough for any one test's live paths */
static const char *tmp_path(const char *name)
{
    static char buf[64][256];
    static int  k;

    k = (k + 1) % 64;
    snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
    return buf[k];
}

/* Shard of n tokens start, start+1, ... (mod 65536). */
static void write_seq_shard(const char *name, unsigned start, size_t n)
{
    uint16_t *t = malloc((n ? n : 1) * sizeof(*t));

    for (size_t i = 0; i < n; i++) {
        t[i] = (uint16_t)(start + i);
    }
    cr_assert_eq(tpm_tokens_write_shard(tmp_path(name), t, n), TPM_OK);
    free(t);
}

static void write_text(const char *name, const char *text)
{
    FILE *f = fopen(tmp_path(name), "wb");

    cr_assert_not_null(f);
    cr_assert_eq(fwrite(text, 1, strlen(text), f), strlen(text));
    fclose(f);
}

static long file_size(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

/* ------------------------------------------------------------------------------------------ */
/* shards                                                                                     */

Test(loader, a_written_shard_reads_back_with_the_llmc_layout)
{
    tpm_tokens_t toks;
    int32_t      h[256];
    FILE        *f;

    write_seq_shard("data_train_000.bin", 65530, 100);
    cr_assert_eq(file_size(tmp_path("data_train_000.bin")), 1024 + 2 * 100);
    f = fopen(tmp_path("data_train_000.bin"), "rb");
    cr_assert_eq(fread(h, 4, 256, f), 256);
    fclose(f);
    cr_assert_eq(h[0], 20240520);
    cr_assert_eq(h[1], 1);
    cr_assert_eq(h[2], 100);
    cr_assert_eq(h[3], 0);
    cr_assert_eq(access(tmp_path("data_train_000.bin.tmp"), F_OK), -1, "temporary file left");

    cr_assert_eq(tpm_tokens_load(tmpdir, "train", &toks), TPM_OK);
    cr_assert_eq(toks.n, 100);
    for (size_t i = 0; i < 100; i++) {
        cr_assert_eq(toks.tok[i], (uint16_t)(65530 + i));
    }
    cr_assert_eq(toks.max_id, 65535);
    tpm_tokens_cleanup(&toks);
    cr_assert_null(toks.tok);
    cr_assert_eq(toks.n, 0);
    tpm_tokens_cleanup(&toks); /* twice is fine */
}

Test(loader, shards_of_a_split_are_concatenated_in_name_order)
{
    tpm_tokens_t toks, val;

    write_seq_shard("fw_train_002.bin", 300, 30);
    write_seq_shard("fw_train_000.bin", 100, 10);
    write_seq_shard("fw_train_001.bin", 200, 20);
    write_seq_shard("fw_val_000.bin", 900, 5);
    write_text("fw_train_notes.txt", "not a shard");
    cr_assert_eq(mkdir(tmp_path("train_dir.bin"), 0700), 0); /* a folder is not a shard */
    cr_assert_eq(tpm_tokens_load(tmpdir, "train", &toks), TPM_OK);
    cr_assert_eq(toks.n, 60);
    for (size_t i = 0; i < 10; i++) {
        cr_assert_eq(toks.tok[i], 100 + i);
    }
    for (size_t i = 0; i < 20; i++) {
        cr_assert_eq(toks.tok[10 + i], 200 + i);
    }
    for (size_t i = 0; i < 30; i++) {
        cr_assert_eq(toks.tok[30 + i], 300 + i);
    }
    cr_assert_eq(toks.max_id, 329);
    cr_assert_eq(tpm_tokens_load(tmpdir, "val", &val), TPM_OK);
    cr_assert_eq(val.n, 5);
    cr_assert_eq(val.tok[0], 900);
    tpm_tokens_cleanup(&toks);
    tpm_tokens_cleanup(&val);
}

Test(loader, truncated_or_oversized_shards_are_rejected)
{
    tpm_tokens_t toks = {0};

    write_seq_shard("train_000.bin", 0, 50);
    write_seq_shard("train_001.bin", 0, 50);
    cr_assert_eq(truncate(tmp_path("train_001.bin"), 1024 + 99), 0);
    cr_assert_eq(tpm_tokens_load(tmpdir, "train", &toks), TPM_ERR_FORMAT);
    cr_assert_null(toks.tok);
    cr_assert_eq(truncate(tmp_path("train_001.bin"), 1024 + 102), 0);
    cr_assert_eq(tpm_tokens_load(tmpdir, "train", &toks), TPM_ERR_FORMAT);
    cr_assert_eq(truncate(tmp_path("train_001.bin"), 1000), 0);
    cr_assert_eq(tpm_tokens_load(tmpdir, "train", &toks), TPM_ERR_FORMAT);
    cr_assert_eq(truncate(tmp_path("train_001.bin"), 0), 0);
    cr_assert_eq(tpm_tokens_load(tmpdir, "train", &toks), TPM_ERR_FORMAT);
}

Test(loader, bad_magic_or_version_is_rejected)
{
    tpm_tokens_t toks = {0};
    FILE        *f;
    int32_t      v;

    write_seq_shard("train_000.bin", 0, 50);
    f = fopen(tmp_path("train_000.bin"), "r+b");
    v = 20240326; /* a model file's magic */
    fwrite(&v, 4, 1, f);
    fclose(f);
    cr_assert_eq(tpm_tokens_load(tmpdir, "train", &toks), TPM_ERR_FORMAT);

    write_seq_shard("train_000.bin", 0, 50);
    f = fopen(tmp_path("train_000.bin"), "r+b");
    fseek(f, 4, SEEK_SET);
    v = 7; /* llm.c's Llama-3 version */
    fwrite(&v, 4, 1, f);
    fclose(f);
    cr_assert_eq(tpm_tokens_load(tmpdir, "train", &toks), TPM_ERR_FORMAT);
}

Test(loader, a_missing_split_or_folder_is_not_found)
{
    tpm_tokens_t toks = {0};

    write_seq_shard("train_000.bin", 0, 50);
    cr_assert_eq(tpm_tokens_load(tmpdir, "val", &toks), TPM_ERR_NOT_FOUND);
    cr_assert_eq(tpm_tokens_load(tmp_path("nope"), "train", &toks), TPM_ERR_NOT_FOUND);
    cr_assert_null(toks.tok);
}

Test(loader, a_split_of_empty_shards_is_rejected)
{
    tpm_tokens_t toks = {0};

    write_seq_shard("val_000.bin", 0, 0);
    cr_assert_eq(file_size(tmp_path("val_000.bin")), 1024);
    cr_assert_eq(tpm_tokens_load(tmpdir, "val", &toks), TPM_ERR_FORMAT);
}

/* ------------------------------------------------------------------------------------------ */
/* batches                                                                                    */

static tpm_tokens_t seq_tokens(size_t n)
{
    tpm_tokens_t toks;

    write_seq_shard("train_000.bin", 0, n);
    cr_assert_eq(tpm_tokens_load(tmpdir, "train", &toks), TPM_OK);
    return toks;
}

Test(loader, y_is_x_shifted_by_one_token_from_a_real_window)
{
    enum { B = 4, T = 16 };
    tpm_tokens_t toks = seq_tokens(5000);
    int32_t      x[B * T], y[B * T];

    for (uint64_t g = 0; g < 50; g++) {
        cr_assert_eq(tpm_tokens_batch(&toks, 1234, g, 0, B, T, x, y), TPM_OK);
        for (int b = 0; b < B; b++) {
            int32_t off = x[b * T];

            cr_assert(off >= 0 && off + T < 5000, "window at %d runs past the data", off);
            for (int t = 0; t < T; t++) {
                cr_assert_eq(x[b * T + t], off + t);
                cr_assert_eq(y[b * T + t], off + t + 1);
            }
        }
    }
    tpm_tokens_cleanup(&toks);
}

Test(loader, batches_depend_only_on_seed_and_counter)
{
    enum { B = 3, T = 8 };
    tpm_tokens_t toks = seq_tokens(10000);
    int32_t      x1[B * T], y1[B * T], x2[B * T], y2[B * T];
    int          differ = 0;

    cr_assert_eq(tpm_tokens_batch(&toks, 42, 7, 0, B, T, x1, y1), TPM_OK);
    /* draws in between do not move the stream: there is no hidden state */
    cr_assert_eq(tpm_tokens_batch(&toks, 42, 3, 0, B, T, x2, y2), TPM_OK);
    cr_assert_eq(tpm_tokens_batch(&toks, 42, 7, 0, B, T, x2, y2), TPM_OK);
    cr_assert_eq(memcmp(x1, x2, sizeof(x1)), 0);
    cr_assert_eq(memcmp(y1, y2, sizeof(y1)), 0);
    cr_assert_eq(tpm_tokens_batch(&toks, 42, 8, 0, B, T, x2, y2), TPM_OK);
    differ += memcmp(x1, x2, sizeof(x1)) != 0;
    cr_assert_eq(tpm_tokens_batch(&toks, 43, 7, 0, B, T, x2, y2), TPM_OK);
    differ += memcmp(x1, x2, sizeof(x1)) != 0;
    cr_assert_eq(differ, 2, "another counter or seed gave the same batch");
    /* rows of one batch are different windows */
    cr_assert(x1[0] != x1[T] || x1[T] != x1[2 * T]);
    /* row b does not depend on B: a rank can draw just its own rows */
    cr_assert_eq(tpm_tokens_batch(&toks, 42, 7, 0, 1, T, x2, y2), TPM_OK);
    cr_assert_eq(memcmp(x1, x2, T * sizeof(*x1)), 0);
    tpm_tokens_cleanup(&toks);
}

Test(loader, row_index_offset_continues_the_same_rows)
{
    enum { B = 5, T = 8 };
    tpm_tokens_t toks = seq_tokens(10000);
    int32_t      x1[B * T], y1[B * T], x2[B * T], y2[B * T];

    /* rows first..first+B-1 of a stream are the same windows however they are cut */
    cr_assert_eq(tpm_tokens_batch(&toks, 5, 11, 0, B, T, x1, y1), TPM_OK);
    cr_assert_eq(tpm_tokens_batch(&toks, 5, 11, 2, B - 2, T, x2, y2), TPM_OK);
    cr_assert_eq(memcmp(x1 + 2 * T, x2, (B - 2) * T * sizeof(*x1)), 0);
    cr_assert_eq(memcmp(y1 + 2 * T, y2, (B - 2) * T * sizeof(*y1)), 0);
    tpm_tokens_cleanup(&toks);
}

/* the (stream, index) of every sample of step s under the split N x A x B, in order */
static void sample_keys(int order, int64_t s, int N, int A, int B, uint64_t *seed, uint64_t *st,
                        uint64_t *ix)
{
    int k = 0;

    for (int a = 0; a < A; a++) {
        for (int r = 0; r < N; r++) {
            tpm_data_key_t key = tpm_data_key(order, 99, s, a, A, r, N, B);
            for (int b = 0; b < B; b++, k++) {
                seed[k] = key.seed;
                st[k]   = key.stream;
                ix[k]   = key.first + (uint64_t)b;
            }
        }
    }
}

Test(loader, data_order_2_gives_every_split_of_a_global_batch_the_same_samples)
{
    static const int splits[][3] = {{1, 1, 12}, {2, 1, 6},  {3, 1, 4},  {2, 3, 2},
                                    {4, 3, 1},  {1, 12, 1}, {12, 1, 1}, {6, 2, 1}};
    uint64_t         s0[12], t0[12], i0[12], s1[12], t1[12], i1[12];

    for (int64_t s = 0; s < 3; s++) {
        sample_keys(TPM_DATA_ORDER_SAMPLE, s, 1, 1, 12, s0, t0, i0);
        for (int j = 0; j < 12; j++) {
            cr_assert_eq(t0[j], (uint64_t)s);
            cr_assert_eq(i0[j], (uint64_t)j, "sample %d of step %lld has index %llu", j,
                         (long long)s, (unsigned long long)i0[j]);
            cr_assert_neq(s0[j], 99, "order 2 uses a salted seed");
        }
        for (size_t c = 1; c < sizeof(splits) / sizeof(splits[0]); c++) {
            sample_keys(TPM_DATA_ORDER_SAMPLE, s, splits[c][0], splits[c][1], splits[c][2], s1, t1,
                        i1);
            cr_assert_eq(memcmp(s0, s1, sizeof(s0)), 0);
            cr_assert_eq(memcmp(t0, t1, sizeof(t0)), 0);
            cr_assert_eq(memcmp(i0, i1, sizeof(i0)), 0, "split %dx%dx%d", splits[c][0],
                         splits[c][1], splits[c][2]);
        }
    }
}

Test(loader, data_order_1_is_the_micro_batch_counter_of_old_checkpoints)
{
    /* g = (s*A + a)*N + r, rows 0..B-1, the run's own seed */
    tpm_data_key_t k = tpm_data_key(TPM_DATA_ORDER_MICROBATCH, 99, 5, 2, 3, 1, 4, 6);

    cr_assert_eq(k.seed, 99);
    cr_assert_eq(k.stream, (uint64_t)((5 * 3 + 2) * 4 + 1));
    cr_assert_eq(k.first, 0);
    /* and it depends on the split: N=2 B=3 is not N=1 B=6 */
    uint64_t s0[6], t0[6], i0[6], s1[6], t1[6], i1[6];
    sample_keys(TPM_DATA_ORDER_MICROBATCH, 1, 1, 1, 6, s0, t0, i0);
    sample_keys(TPM_DATA_ORDER_MICROBATCH, 1, 2, 1, 3, s1, t1, i1);
    cr_assert(memcmp(t0, t1, sizeof(t0)) != 0 || memcmp(i0, i1, sizeof(i0)) != 0);
}

Test(loader, offsets_cover_every_valid_window_and_no_other)
{
    enum { T = 10, K = 5 };
    tpm_tokens_t toks = seq_tokens(T + K); /* K valid windows: starts 0 .. K-1 */
    int32_t      x[T], y[T];
    int          seen[K] = {0};

    for (uint64_t g = 0; g < 400; g++) {
        cr_assert_eq(tpm_tokens_batch(&toks, 9, g, 0, 1, T, x, y), TPM_OK);
        cr_assert(x[0] >= 0 && x[0] < K, "start %d", x[0]);
        seen[x[0]]++;
    }
    for (int k = 0; k < K; k++) {
        cr_assert_gt(seen[k], 40, "start %d drawn %d times in 400", k, seen[k]);
    }
    tpm_tokens_cleanup(&toks);
}

Test(loader, too_few_tokens_for_one_window_is_rejected)
{
    tpm_tokens_t toks = seq_tokens(16);
    int32_t      x[32], y[32];

    cr_assert_eq(tpm_tokens_batch(&toks, 1, 0, 0, 2, 16, x, y), TPM_ERR_INVALID_ARG);
    cr_assert_eq(tpm_tokens_batch(&toks, 1, 0, 0, 2, 15, x, y), TPM_OK); /* exactly T + 1 */
    cr_assert_eq(x[0], 0);
    cr_assert_eq(x[15], 0);
    cr_assert_eq(y[14], 15);
    cr_assert_eq(tpm_tokens_batch(&toks, 1, 0, 0, 0, 8, x, y), TPM_ERR_INVALID_ARG);
    cr_assert_eq(tpm_tokens_batch(&toks, 1, 0, 0, 1, 0, x, y), TPM_ERR_INVALID_ARG);
    tpm_tokens_cleanup(&toks);
}

/* ------------------------------------------------------------------------------------------ */
/* prepare                                                                                    */

static const char *fortunes_a = "The early bird gets the worm.\n"
                                "%\n"
                                "A penny saved is a penny earned.\n"
                                "\t-- Benjamin Franklin\n"
                                "%\n"
                                "Time flies like an arrow; fruit flies like a banana.\n"
                                "%\n"
                                "%\n" /* an empty fortune is skipped */
                                "Never put off till tomorrow what you can do today.\n"
                                "%\n";

static const char *fortunes_b = "The best things in life are free.\n"
                                "%\n"
                                "Where there's a will, there's a way.\n"
                                "%\n"
                                "Actions speak louder than words.\n"
                                "%\n"
                                "When in Rome, do as the Romans do.\n"
                                "%\n"
                                "Fortune favours the bold.\n"; /* no final '%' */

static const char *plain = "This file has no separator lines, 100% of it is one document.\n"
                           "It mentions % signs inside lines, which do not count.\n";

/* The token stream of a split, decoded and cut at end-of-text tokens. */
static int count_docs(const tpm_tokenizer_t *tok, const tpm_tokens_t *t, char *all, size_t cap)
{
    int    docs = 0;
    size_t pos  = 0;

    for (size_t i = 0; i < t->n; i++) {
        int32_t id = t->tok[i];
        size_t  n;

        if (id == tpm_tokenizer_eot(tok)) {
            docs++;
            cr_assert_lt(pos, cap);
            all[pos++] = '|';
            continue;
        }
        cr_assert_eq(tpm_tokenizer_decode(tok, &id, 1, all + pos, cap - pos, &n), TPM_OK);
        pos += n;
    }
    all[pos] = '\0';
    return docs;
}

static void prepare_three_inputs(const char *out, int vocab, double val_fraction, tpm_status_t want)
{
    const char *in[3];

    write_text("a", fortunes_a);
    write_text("b.txt", fortunes_b);
    write_text("plain.txt", plain);
    in[0] = tmp_path("a");
    in[1] = tmp_path("b.txt");
    in[2] = tmp_path("plain.txt");
    cr_assert_eq(tpm_prepare_run(in, 3, tmp_path(out), vocab, val_fraction), want);
}

Test(prepare, small_corpus_gives_a_tokenizer_and_two_splits_that_load)
{
    tpm_tokenizer_t *tok;
    tpm_tokens_t     train, val;
    char             text[8192], vtext[8192];
    char             out[256], path[300];
    int              docs;

    snprintf(out, sizeof(out), "%s", tmp_path("out/deeper"));
    prepare_three_inputs("out/deeper", 300, 0.2, TPM_OK);
    snprintf(path, sizeof(path), "%s/tokenizer.bin", out);
    cr_assert_eq(tpm_tokenizer_load(path, &tok), TPM_OK);
    cr_assert_eq(tpm_tokenizer_vocab_size(tok), 300);
    cr_assert_eq(tpm_tokens_load(out, "train", &train), TPM_OK);
    cr_assert_eq(tpm_tokens_load(out, "val", &val), TPM_OK);
    cr_assert_gt(train.n, 0);
    cr_assert_gt(val.n, 0);
    cr_assert_lt(train.max_id, 300);
    cr_assert_eq(train.tok[train.n - 1], 299, "a split must end with end-of-text");
    cr_assert_eq(val.tok[val.n - 1], 299);
    /* 4 + 5 fortunes and one plain file: 10 documents, each followed by end-of-text */
    docs = count_docs(tok, &train, text, sizeof(text));
    docs += count_docs(tok, &val, vtext, sizeof(vtext));
    cr_assert_eq(docs, 10);
    strncat(text, vtext, sizeof(text) - strlen(text) - 1);
    cr_assert_not_null(strstr(text, "A penny saved is a penny earned.\n\t-- Benjamin Franklin\n|"));
    cr_assert_not_null(strstr(text, "Fortune favours the bold.\n|"));
    cr_assert_not_null(strstr(text, "100% of it is one document.\nIt mentions % signs"));
    cr_assert_null(strstr(text, "\n%\n"), "a separator line leaked into a document");
    tpm_tokens_cleanup(&train);
    tpm_tokens_cleanup(&val);
    tpm_tokenizer_destroy(tok);
}

Test(prepare, output_is_deterministic)
{
    static const char *names[] = {"tokenizer.bin", "train_000.bin", "val_000.bin"};

    prepare_three_inputs("run1", 280, 0.3, TPM_OK);
    prepare_three_inputs("run2", 280, 0.3, TPM_OK);
    for (int i = 0; i < 3; i++) {
        char   p1[300], p2[300], b1[65536], b2[65536];
        FILE  *f1, *f2;
        size_t n1, n2;

        snprintf(p1, sizeof(p1), "%s/run1/%s", tmpdir, names[i]);
        snprintf(p2, sizeof(p2), "%s/run2/%s", tmpdir, names[i]);
        f1 = fopen(p1, "rb");
        f2 = fopen(p2, "rb");
        cr_assert(f1 && f2, "%s missing", names[i]);
        n1 = fread(b1, 1, sizeof(b1), f1);
        n2 = fread(b2, 1, sizeof(b2), f2);
        fclose(f1);
        fclose(f2);
        cr_assert_eq(n1, n2, "%s differs in size", names[i]);
        cr_assert_eq(memcmp(b1, b2, n1), 0, "%s differs", names[i]);
    }
}

Test(prepare, a_single_document_is_split_by_tokens)
{
    const char  *in[1];
    tpm_tokens_t train, val;

    write_text("one.txt", plain);
    in[0] = tmp_path("one.txt");
    cr_assert_eq(tpm_prepare_run(in, 1, tmp_path("o"), 270, 0.1), TPM_OK);
    cr_assert_eq(tpm_tokens_load(tmp_path("o"), "train", &train), TPM_OK);
    cr_assert_eq(tpm_tokens_load(tmp_path("o"), "val", &val), TPM_OK);
    cr_assert_gt(train.n, val.n);
    cr_assert_eq(val.tok[val.n - 1], 269);
    tpm_tokens_cleanup(&train);
    tpm_tokens_cleanup(&val);
    /* whatever the document's hash: train is the head of encode(doc) + eot, val the tail */
    for (int i = 1; i <= 9; i++) {
        tpm_tokenizer_t *tok;
        int32_t          ids[256];
        size_t           n;

        cr_assert_eq(tpm_prepare_run(in, 1, tmp_path("o"), 270, i / 10.0), TPM_OK);
        cr_assert_eq(tpm_tokenizer_load(tmp_path("o/tokenizer.bin"), &tok), TPM_OK);
        cr_assert_eq(tpm_tokenizer_encode(tok, plain, strlen(plain), ids, 255, &n), TPM_OK);
        ids[n++] = tpm_tokenizer_eot(tok);
        cr_assert_eq(tpm_tokens_load(tmp_path("o"), "train", &train), TPM_OK);
        cr_assert_eq(tpm_tokens_load(tmp_path("o"), "val", &val), TPM_OK);
        cr_assert_eq(train.n + val.n, n);
        cr_assert(i < 5 ? train.n > val.n : train.n < val.n, "val fraction %g", i / 10.0);
        for (size_t k = 0; k < n; k++) {
            cr_assert_eq(k < train.n ? train.tok[k] : val.tok[k - train.n], ids[k]);
        }
        tpm_tokens_cleanup(&train);
        tpm_tokens_cleanup(&val);
        tpm_tokenizer_destroy(tok);
    }
}

Test(prepare, a_zero_validation_fraction_writes_no_val_split)
{
    tpm_tokens_t val = {0};

    write_seq_shard("val_000.bin", 0, 10); /* stale, from an earlier run */
    prepare_three_inputs(".", 300, 0.0, TPM_OK);
    cr_assert_eq(tpm_tokens_load(tmpdir, "val", &val), TPM_ERR_NOT_FOUND);
}

Test(prepare, missing_or_empty_inputs_are_clear_errors)
{
    const char *in[2];

    write_text("empty.txt", "");
    write_text("seps", "%\n%\n  \n%\n");
    in[0] = tmp_path("empty.txt");
    in[1] = tmp_path("does-not-exist.txt");
    cr_assert_eq(tpm_prepare_run(in, 2, tmp_path("o"), 300, 0.05), TPM_ERR_NOT_FOUND);
    in[1] = tmp_path("seps");
    cr_assert_eq(tpm_prepare_run(in, 2, tmp_path("o"), 300, 0.05), TPM_ERR_INVALID_ARG);
    cr_assert_eq(tpm_prepare_run(in, 0, tmp_path("o"), 300, 0.05), TPM_ERR_INVALID_ARG);
    in[0] = tmpdir;
    cr_assert_eq(tpm_prepare_run(in, 1, tmp_path("o"), 300, 0.05), TPM_ERR_INVALID_ARG);
    cr_assert_eq(access(tmp_path("o"), F_OK), -1, "output written for a failed run");
}

Test(prepare, vocabularies_that_do_not_fit_uint16_shards_are_rejected)
{
    prepare_three_inputs("o", 65537, 0.05, TPM_ERR_INVALID_ARG);
    prepare_three_inputs("o", 257, 0.05, TPM_ERR_INVALID_ARG);
    prepare_three_inputs("o", 300, 1.0, TPM_ERR_INVALID_ARG);
    prepare_three_inputs("o", 300, -0.1, TPM_ERR_INVALID_ARG);
}

Test(prepare, builtin_cache_folder_follows_the_environment)
{
    char buf[512];

    setenv("TPMPI_CACHE", "/scratch/c", 1);
    cr_assert_eq(tpm_prepare_builtin_dir(buf, sizeof(buf)), TPM_OK);
    cr_assert_str_eq(buf, "/scratch/c/fortunes-v4096");
    unsetenv("TPMPI_CACHE");
    setenv("XDG_CACHE_HOME", "/xdg", 1);
    setenv("HOME", "/home/u", 1);
    cr_assert_eq(tpm_prepare_builtin_dir(buf, sizeof(buf)), TPM_OK);
    cr_assert_str_eq(buf, "/xdg/tpmpi/fortunes-v4096");
    unsetenv("XDG_CACHE_HOME");
    cr_assert_eq(tpm_prepare_builtin_dir(buf, sizeof(buf)), TPM_OK);
    cr_assert_str_eq(buf, "/home/u/.cache/tpmpi/fortunes-v4096");
    cr_assert_eq(tpm_prepare_builtin_dir(buf, 10), TPM_ERR_INVALID_ARG);
    unsetenv("HOME");
    cr_assert_eq(tpm_prepare_builtin_dir(buf, sizeof(buf)), TPM_ERR_INVALID_ARG);
}

Test(prepare, builtin_corpus_is_prepared_once_and_reused)
{
    char         buf[512], again[512], path[600];
    tpm_tokens_t train, val;
    struct stat  st1, st2;

    if (access(TPM_FORTUNES_DIR, F_OK) != 0) {
        cr_skip_test("%s is not installed", TPM_FORTUNES_DIR);
    }
    setenv("TPMPI_CACHE", tmp_path("cache"), 1);
    cr_assert_eq(tpm_prepare_builtin(buf, sizeof(buf)), TPM_OK);
    cr_assert_str_eq(buf, tmp_path("cache/fortunes-v4096"));
    cr_assert_eq(tpm_tokens_load(buf, "train", &train), TPM_OK);
    cr_assert_eq(tpm_tokens_load(buf, "val", &val), TPM_OK);
    cr_assert_gt(train.n, 500000);
    cr_assert_gt(val.n, 10000);
    cr_assert_eq(train.max_id, TPM_BUILTIN_VOCAB - 1);
    snprintf(path, sizeof(path), "%s/train_000.bin", buf);
    cr_assert_eq(stat(path, &st1), 0);
    cr_assert_eq(tpm_prepare_builtin(again, sizeof(again)), TPM_OK);
    cr_assert_str_eq(again, buf);
    cr_assert_eq(stat(path, &st2), 0);
    cr_assert_eq(st1.st_ino, st2.st_ino, "the cache was rebuilt");
    cr_assert_eq(tpm_prepare_builtin(again, 8), TPM_ERR_INVALID_ARG);
    tpm_tokens_cleanup(&train);
    tpm_tokens_cleanup(&val);
}
