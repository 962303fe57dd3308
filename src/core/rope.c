/* SPDX-License-Identifier: MIT */
/* rope.c: rotary-embedding frequencies (see rope.h). Computed in double, stored as float. */
#include "core/rope.h"

#include <math.h>
#include <stddef.h>

#include "base/log.h"

tpm_status_t tpm_rope_inv_freq(int hs, double theta, const tpm_rope_scaling_t *sc, float *inv_freq)
{
    const int scaled = sc != NULL && sc->factor != 0.0;

    if (hs < 2 || hs % 2 != 0 || !(theta > 1.0)) {
        tpm_log_error("rope: head size %d (must be even) or theta %g (must be > 1) is invalid", hs,
                      theta);
        return TPM_ERR_INVALID_ARG;
    }
    if (scaled && !(sc->factor >= 1.0 && sc->low_freq_factor > 0.0 &&
                    sc->high_freq_factor > sc->low_freq_factor && sc->orig_ctx >= 1)) {
        tpm_log_error("rope scaling: factor %g, low_freq_factor %g, high_freq_factor %g, "
                      "original context %d: need factor >= 1, 0 < low < high, context >= 1",
                      sc->factor, sc->low_freq_factor, sc->high_freq_factor, sc->orig_ctx);
        return TPM_ERR_INVALID_ARG;
    }
    for (int d = 0; d < hs / 2; d++) {
        double f = 1.0 / pow(theta, (double)(2 * d) / (double)hs);

        if (scaled) {
            const double wavelen = 2.0 * M_PI / f;
            const double low_wl  = (double)sc->orig_ctx / sc->low_freq_factor;
            const double high_wl = (double)sc->orig_ctx / sc->high_freq_factor;

            if (wavelen > low_wl) {
                f /= sc->factor; /* long wavelengths: interpolated */
            } else if (wavelen >= high_wl) {
                /* between the two: a linear blend of scaled and unscaled */
                const double s = ((double)sc->orig_ctx / wavelen - sc->low_freq_factor) /
                                 (sc->high_freq_factor - sc->low_freq_factor);

                f = (1.0 - s) * f / sc->factor + s * f;
            } /* short wavelengths: kept */
        }
        inv_freq[d] = (float)f;
    }
    return TPM_OK;
}
