/* SPDX-License-Identifier: MIT */
/*
 * fuzz_safetensors.c: libFuzzer target for the safetensors reader (src/ckpt/safetensors.c).
 * The input is written as a file and opened; when the reader accepts it, every tensor is read
 * whole and in two pieces (the contract: an accepted file can be read wherever its header
 * says, a read past a tensor is refused, and no read leaves the file). Built and run by
 * tests/fuzz_safetensors.sh.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/log.h"
#include "ckpt/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static char path[64];

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    tpm_st_file_t *f = NULL;
    FILE          *out;

    if (path[0] == '\0') {
        int fd;

        snprintf(path, sizeof(path), "/tmp/tpm_fuzz_st_XXXXXX");
        fd = mkstemp(path);
        if (fd < 0) {
            abort();
        }
        close(fd);
        tpm_log_set_level((tpm_log_level_t)-1); /* the refusals are the point: keep quiet */
    }
    out = fopen(path, "wb");
    if (out == NULL || fwrite(data, 1, size, out) != size || fclose(out) != 0) {
        abort();
    }
    if (tpm_st_open(path, &f) != TPM_OK) {
        if (f != NULL) {
            abort(); /* a refused file leaves nothing open */
        }
        return 0;
    }
    for (int i = 0; i < f->n; i++) {
        const tpm_st_tensor_t *t = &f->t[i];
        float                 *buf;

        if (t->end > f->size - f->data_off || t->end - t->begin != (uint64_t)t->numel * (uint64_t)t->esize) {
            abort(); /* accepted but out of the file or of its size */
        }
        if (tpm_st_find(f, t->name) == NULL || t->numel > (1 << 22)) {
            continue; /* a duplicate name is refused by the JSON parser; huge: skip the read */
        }
        buf = malloc((size_t)(t->numel > 0 ? t->numel : 1) * sizeof(float));
        if (buf == NULL) {
            abort();
        }
        if (t->dtype != TPM_ST_OTHER) {
            if (tpm_st_read(f, t, 0, t->numel, buf) != TPM_OK ||
                tpm_st_read(f, t, 0, t->numel / 2, buf) != TPM_OK ||
                tpm_st_read(f, t, t->numel / 2, t->numel - t->numel / 2, buf) != TPM_OK) {
                abort(); /* an accepted tensor must be readable */
            }
        }
        if (tpm_st_read(f, t, t->numel, 1, buf) == TPM_OK) {
            abort(); /* one element past the end */
        }
        free(buf);
    }
    tpm_st_close(f);
    return 0;
}
