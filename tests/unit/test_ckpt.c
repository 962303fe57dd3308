/* SPDX-License-Identifier: MIT */
/*
 * test_ckpt.c: the pure parts of the checkpoint code: the row hash (pinned to values from
 * the independent numpy implementation in scripts/ckpt_inspect.py), the llm.c QKV row
 * permutation, and checkpoint directories (names, "latest", keep-K pruning, resolve).
 * No MPI, no HDF5 file; directories are made under the build directory (tests/ckpt_unit.d).
 */
#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ckpt/ckpt.h"
#include "ckpt/ckpt_llmc.h"

TestSuite(ckpt, .timeout = 20);

Test(ckpt, row_hash_matches_the_python_reference)
{
    const float   f[8]  = {1, 2, 3, 4, 5, 6, 7, 8};
    unsigned char b[13] = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};

    /* values printed by scripts/ckpt_inspect.py's row_hashes for the same inputs */
    cr_assert_eq(tpm_ckpt_row_hash(0, "", 0), 0x989ee0bff334e058ULL);
    cr_assert_eq(tpm_ckpt_row_hash(5, "abc", 3), 0x34362a46699d3288ULL);
    cr_assert_eq(tpm_ckpt_row_hash(7, f, sizeof(f)), 0xf23f5f05d63a4555ULL);
    cr_assert_eq(tpm_ckpt_row_hash(1ULL << 40, b, sizeof(b)), 0x3dc826c018fc5345ULL);
}

Test(ckpt, row_hash_depends_on_the_row_index_every_bit_and_the_length)
{
    float    f[37];
    uint64_t h0;

    for (int i = 0; i < 37; i++) {
        f[i] = (float)i * 0.5f;
    }
    h0 = tpm_ckpt_row_hash(3, f, sizeof(f));
    cr_assert_neq(h0, tpm_ckpt_row_hash(4, f, sizeof(f)));
    cr_assert_neq(h0, tpm_ckpt_row_hash(3, f, sizeof(f) - 4));
    for (size_t bit = 0; bit < sizeof(f) * 8; bit += 13) {
        unsigned char *p = (unsigned char *)f;
        p[bit / 8] ^= (unsigned char)(1u << (bit % 8));
        cr_assert_neq(h0, tpm_ckpt_row_hash(3, f, sizeof(f)), "bit %zu flipped", bit);
        p[bit / 8] ^= (unsigned char)(1u << (bit % 8));
    }
    /* trailing zero bytes are not invisible */
    cr_assert_neq(tpm_ckpt_row_hash(0, "ab\0", 3), tpm_ckpt_row_hash(0, "ab", 2));
}

Test(ckpt, qkv_rows_map_head_groups_to_q_k_v_blocks)
{
    /* C = 8, NH = 2, hs = 4: ours [h0 q|k|v][h1 q|k|v], llm.c [q h0 h1][k h0 h1][v h0 h1] */
    const int64_t want[24] = {0, 1, 2, 3, 8,  9,  10, 11, 16, 17, 18, 19,
                              4, 5, 6, 7, 12, 13, 14, 15, 20, 21, 22, 23};
    int           seen[24] = {0};

    for (int64_t r = 0; r < 24; r++) {
        cr_assert_eq(tpm_llmc_qkv_row(r, 8, 2), want[r], "row %lld", (long long)r);
    }
    /* GPT-2 124M: a permutation of the 2304 rows */
    {
        static int hit[2304];
        for (int64_t r = 0; r < 2304; r++) {
            int64_t m = tpm_llmc_qkv_row(r, 768, 12);
            cr_assert(m >= 0 && m < 2304);
            hit[m]++;
        }
        for (int i = 0; i < 2304; i++) {
            cr_assert_eq(hit[i], 1);
        }
    }
    (void)seen;
}

static void touch(const char *dir, const char *name)
{
    char  p[512];
    FILE *f;

    snprintf(p, sizeof(p), "%s/%s", dir, name);
    f = fopen(p, "w");
    cr_assert_not_null(f);
    fputs("x", f);
    fclose(f);
}

static int exists(const char *dir, const char *name)
{
    char        p[512];
    struct stat st;

    snprintf(p, sizeof(p), "%s/%s", dir, name);
    return stat(p, &st) == 0;
}

static void make_dir(char *tmpl)
{
    mkdir("tests", 0755);
    mkdir("tests/ckpt_unit.d", 0755);
    cr_assert_not_null(mkdtemp(tmpl));
}

Test(ckpt, path_has_eight_step_digits)
{
    char buf[64];

    cr_assert_eq(tpm_ckpt_path("d", 42, buf, sizeof(buf)), TPM_OK);
    cr_assert_str_eq(buf, "d/ckpt_00000042.h5");
    cr_assert_eq(tpm_ckpt_path("d", 123456789, buf, sizeof(buf)), TPM_OK);
    cr_assert_str_eq(buf, "d/ckpt_123456789.h5");
    cr_assert_eq(tpm_ckpt_path("a-rather-long-directory-name", 1, buf, 16), TPM_ERR_OVERFLOW);
}

Test(ckpt, find_latest_ignores_temporaries_and_follows_the_pointer)
{
    char dir[] = "tests/ckpt_unit.d/XXXXXX", buf[512], want[512];

    make_dir(dir);
    cr_assert_eq(tpm_ckpt_find_latest(dir, buf, sizeof(buf)), TPM_ERR_NOT_FOUND);
    touch(dir, "ckpt_00000005.h5");
    touch(dir, "ckpt_00000012.h5");
    touch(dir, "ckpt_00000020.h5.tmp"); /* a crash while writing step 20 */
    touch(dir, "notes.txt");
    cr_assert_eq(tpm_ckpt_find_latest(dir, buf, sizeof(buf)), TPM_OK);
    snprintf(want, sizeof(want), "%s/ckpt_00000012.h5", dir);
    cr_assert_str_eq(buf, want, "no pointer: the highest complete step");

    /* the pointer wins over the highest step (a resumed older run) */
    snprintf(want, sizeof(want), "%s/ckpt_00000005.h5", dir);
    cr_assert_eq(tpm_ckpt_commit(dir, want, 5), TPM_OK);
    cr_assert_eq(tpm_ckpt_find_latest(dir, buf, sizeof(buf)), TPM_OK);
    cr_assert_str_eq(buf, want);
    cr_assert(!exists(dir, "ckpt_00000020.h5.tmp"), "stale temporary removed");
    cr_assert(!exists(dir, "latest.tmp"));

    /* a dangling pointer falls back to the newest file */
    snprintf(want, sizeof(want), "%s/ckpt_00000005.h5", dir);
    unlink(want);
    cr_assert_eq(tpm_ckpt_find_latest(dir, buf, sizeof(buf)), TPM_OK);
    snprintf(want, sizeof(want), "%s/ckpt_00000012.h5", dir);
    cr_assert_str_eq(buf, want);
}

Test(ckpt, commit_keeps_the_newest_k)
{
    char  dir[] = "tests/ckpt_unit.d/XXXXXX", path[512], line[64];
    FILE *f;

    make_dir(dir);
    for (int s = 10; s <= 50; s += 10) {
        snprintf(path, sizeof(path), "ckpt_%08d.h5", s);
        touch(dir, path);
    }
    snprintf(path, sizeof(path), "%s/ckpt_00000050.h5", dir);
    cr_assert_eq(tpm_ckpt_commit(dir, path, 2), TPM_OK);
    cr_assert(exists(dir, "ckpt_00000050.h5") && exists(dir, "ckpt_00000040.h5"));
    cr_assert(!exists(dir, "ckpt_00000030.h5") && !exists(dir, "ckpt_00000010.h5"));
    snprintf(path, sizeof(path), "%s/latest", dir);
    f = fopen(path, "r");
    cr_assert_not_null(f);
    cr_assert_not_null(fgets(line, sizeof(line), f));
    fclose(f);
    cr_assert_str_eq(line, "ckpt_00000050.h5\n");
}

Test(ckpt, resolve_takes_a_file_or_a_directory)
{
    char dir[] = "tests/ckpt_unit.d/XXXXXX", buf[512], want[512];

    make_dir(dir);
    cr_assert_eq(tpm_ckpt_resolve(dir, buf, sizeof(buf)), TPM_ERR_NOT_FOUND);
    touch(dir, "ckpt_00000003.h5");
    snprintf(want, sizeof(want), "%s/ckpt_00000003.h5", dir);
    cr_assert_eq(tpm_ckpt_resolve(dir, buf, sizeof(buf)), TPM_OK);
    cr_assert_str_eq(buf, want);
    cr_assert_eq(tpm_ckpt_resolve(want, buf, sizeof(buf)), TPM_OK);
    cr_assert_str_eq(buf, want);
    cr_assert_eq(tpm_ckpt_resolve("tests/no/such/ckpt.h5", buf, sizeof(buf)), TPM_ERR_NOT_FOUND);
}
