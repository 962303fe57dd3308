/* SPDX-License-Identifier: MIT */
/*
 * test_file.c: unit tests of src/base/file.c (durable replacement of a file). The failure
 * side: an error between the writes and the rename (the caller's own write error, a rename
 * that fails) must delete the temporary and leave the old file as it was. The order of the
 * system calls on success is checked by tests/durable_writes.sh (strace).
 */
#include "base/file.h"

#include <criterion/criterion.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

TestSuite(file, .timeout = 10);

static char tdir[256];

static void make_dir(void)
{
    snprintf(tdir, sizeof(tdir), "/tmp/tpm_test_file.XXXXXX");
    cr_assert_not_null(mkdtemp(tdir));
}

static void put(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");

    cr_assert_not_null(f);
    fputs(text, f);
    fclose(f);
}

static int has(const char *path, const char *text)
{
    char   buf[256] = "";
    FILE  *f        = fopen(path, "r");
    size_t n;

    if (f == NULL) {
        return 0;
    }
    n      = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return strcmp(buf, text) == 0;
}

static int exists(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0;
}

Test(file, commit_replaces_the_file_and_removes_the_temporary)
{
    char  path[300], tmp[310];
    FILE *f = NULL;

    make_dir();
    snprintf(path, sizeof(path), "%s/out", tdir);
    put(path, "old");
    cr_assert_eq(tpm_file_create_tmp(path, tmp, sizeof(tmp), &f), TPM_OK);
    cr_expect_str_eq(tmp + strlen(tmp) - 4, ".tmp");
    fputs("new", f);
    cr_assert_eq(tpm_file_commit(f, tmp, path, TPM_OK), TPM_OK);
    cr_expect(has(path, "new"));
    cr_expect(!exists(tmp));
    unlink(path);
    rmdir(tdir);
}

Test(file, a_write_error_before_the_rename_keeps_the_old_file)
{
    char  path[300], tmp[310];
    FILE *f = NULL;

    make_dir();
    snprintf(path, sizeof(path), "%s/out", tdir);
    put(path, "old");
    cr_assert_eq(tpm_file_create_tmp(path, tmp, sizeof(tmp), &f), TPM_OK);
    fputs("half", f);
    /* the caller's writes failed: nothing may be published */
    cr_expect_eq(tpm_file_commit(f, tmp, path, TPM_ERR_IO), TPM_ERR_IO);
    cr_expect(has(path, "old"));
    cr_expect(!exists(tmp), "the temporary must be deleted");
    unlink(path);
    rmdir(tdir);
}

Test(file, a_failed_rename_keeps_the_old_file_and_removes_the_temporary)
{
    char  path[300], tmp[310], inner[320];
    FILE *f = NULL;

    make_dir();
    /* the target is a non-empty directory: rename(2) of a file onto it fails */
    snprintf(path, sizeof(path), "%s/out", tdir);
    cr_assert_eq(mkdir(path, 0755), 0);
    snprintf(inner, sizeof(inner), "%s/keep", path);
    put(inner, "old");
    cr_assert_eq(tpm_file_create_tmp(path, tmp, sizeof(tmp), &f), TPM_OK);
    fputs("new", f);
    cr_expect_eq(tpm_file_commit(f, tmp, path, TPM_OK), TPM_ERR_IO);
    cr_expect(has(inner, "old"));
    cr_expect(!exists(tmp), "the temporary must be deleted");
    unlink(inner);
    rmdir(path);
    rmdir(tdir);
}

Test(file, sync_and_create_report_missing_paths_and_long_names)
{
    char  buf[8];
    FILE *f = (FILE *)0x1;

    cr_expect_eq(tpm_file_sync("/nonexistent/tpm/file"), TPM_ERR_IO);
    cr_expect_eq(tpm_dir_sync("/nonexistent/tpm/dir"), TPM_ERR_IO);
    cr_expect_eq(tpm_file_create_tmp("/tmp/a-long-name", buf, sizeof(buf), &f),
                 TPM_ERR_INVALID_ARG);
    cr_expect_eq(f, (FILE *)0x1, "output must be untouched on failure");
    cr_expect_eq(tpm_file_create_tmp("/nonexistent/tpm/x", buf, sizeof(buf), &f),
                 TPM_ERR_INVALID_ARG);
    cr_expect_eq(tpm_file_publish("/nonexistent/tpm/a.tmp", "/nonexistent/tpm/a"), TPM_ERR_IO);
}
