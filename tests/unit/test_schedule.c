/* SPDX-License-Identifier: MIT */
/* test_schedule.c: the learning-rate schedule (linear warm-up, cosine decay to min_lr). */
#include <criterion/criterion.h>
#include <criterion/new/assert.h>
#include <math.h>

#include "cli/config.h"
#include "train/train.h"

static tpm_config_t cfg_with(int64_t steps, int64_t warmup)
{
    tpm_config_t c;

    tpm_config_defaults(&c);
    c.steps  = steps;
    c.warmup = warmup;
    c.lr     = 1e-3;
    c.min_lr = 1e-4;
    return c;
}

TestSuite(schedule, .timeout = 10);

Test(schedule, warmup_rises_linearly_to_the_peak)
{
    tpm_config_t c = cfg_with(100, 10);

    cr_assert(ieee_ulp_eq(dbl, tpm_train_lr(&c, 0), 1e-4, 4));
    cr_assert(ieee_ulp_eq(dbl, tpm_train_lr(&c, 4), 5e-4, 4));
    cr_assert(ieee_ulp_eq(dbl, tpm_train_lr(&c, 9), 1e-3, 4));
}

Test(schedule, cosine_decays_from_the_peak_to_min_lr_at_the_last_step)
{
    tpm_config_t c = cfg_with(101, 0);

    cr_assert(ieee_ulp_eq(dbl, tpm_train_lr(&c, 0), 1e-3, 4));
    cr_assert(epsilon_eq(dbl, tpm_train_lr(&c, 50), 5.5e-4, 1e-12));
    cr_assert(epsilon_eq(dbl, tpm_train_lr(&c, 100), 1e-4, 1e-12));
    for (int64_t s = 1; s <= 100; s++) {
        cr_assert_leq(tpm_train_lr(&c, s), tpm_train_lr(&c, s - 1));
    }
}

Test(schedule, one_step_runs_at_the_peak)
{
    tpm_config_t c = cfg_with(1, 0);

    cr_assert(ieee_ulp_eq(dbl, tpm_train_lr(&c, 0), 1e-3, 4));
}
