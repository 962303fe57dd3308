/* SPDX-License-Identifier: MIT */
/*
 * test_serve_queue.c: the job queue between the HTTP threads and the engine: FIFO order,
 * the capacity counted beyond the free slots, close and drain for shutdown, the timed
 * wait, and pushes from several threads at once.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <string.h>

#include "base/timer.h"
#include "serve/engine.h"

TestSuite(serve_queue, .timeout = 30);

static int done_count;

static void count_done(tpm_serve_job_t *job, tpm_finish_t finish)
{
    cr_expect_eq(finish, TPM_FINISH_CANCELLED);
    job->n_generated = -1;
    done_count++;
}

Test(serve_queue, jobs_come_out_in_order_and_the_capacity_counts_beyond_free_slots)
{
    tpm_serve_queue_t *q;
    tpm_serve_job_t    jobs[6];

    memset(jobs, 0, sizeof(jobs));
    cr_assert_eq(tpm_serve_queue_create(2, &q), TPM_OK);
    tpm_serve_queue_set_free(q, 3); /* 3 free slots + 2 waiting */
    for (int i = 0; i < 5; i++) {
        cr_expect_eq(tpm_serve_queue_push(q, &jobs[i]), TPM_OK, "push %d", i);
        cr_expect(jobs[i].t_submit > 0.0);
    }
    cr_expect_eq(tpm_serve_queue_push(q, &jobs[5]), TPM_ERR_OVERFLOW);
    cr_expect_eq(tpm_serve_queue_len(q), 5);
    for (int i = 0; i < 3; i++) {
        cr_expect_eq(tpm_serve_queue_pop(q), &jobs[i]);
    }
    tpm_serve_queue_set_free(q, 0); /* the three were admitted: only 2 may wait */
    cr_expect_eq(tpm_serve_queue_push(q, &jobs[5]), TPM_ERR_OVERFLOW);
    cr_expect_eq(tpm_serve_queue_pop(q), &jobs[3]);
    cr_expect_eq(tpm_serve_queue_push(q, &jobs[5]), TPM_OK);
    cr_expect_eq(tpm_serve_queue_pop(q), &jobs[4]);
    cr_expect_eq(tpm_serve_queue_pop(q), &jobs[5]);
    cr_expect_null(tpm_serve_queue_pop(q));
    tpm_serve_queue_destroy(q);
    tpm_serve_queue_destroy(NULL);
}

Test(serve_queue, a_zero_capacity_queue_still_feeds_free_slots)
{
    tpm_serve_queue_t *q;
    tpm_serve_job_t    a, b;

    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    cr_assert_eq(tpm_serve_queue_create(0, &q), TPM_OK);
    cr_expect_eq(tpm_serve_queue_push(q, &a), TPM_ERR_OVERFLOW); /* no slot free yet */
    tpm_serve_queue_set_free(q, 1);
    cr_expect_eq(tpm_serve_queue_push(q, &a), TPM_OK);
    cr_expect_eq(tpm_serve_queue_push(q, &b), TPM_ERR_OVERFLOW);
    tpm_serve_queue_destroy(q);
}

Test(serve_queue, close_refuses_pushes_and_drain_finishes_the_waiting_jobs)
{
    tpm_serve_queue_t *q;
    tpm_serve_job_t    jobs[3];

    memset(jobs, 0, sizeof(jobs));
    done_count = 0;
    cr_assert_eq(tpm_serve_queue_create(4, &q), TPM_OK);
    for (int i = 0; i < 2; i++) {
        jobs[i].on_done = count_done;
        cr_expect_eq(tpm_serve_queue_push(q, &jobs[i]), TPM_OK);
    }
    tpm_serve_queue_close(q);
    cr_expect_eq(tpm_serve_queue_push(q, &jobs[2]), TPM_ERR_OVERFLOW);
    tpm_serve_queue_drain(q, TPM_FINISH_CANCELLED);
    cr_expect_eq(done_count, 2);
    cr_expect(jobs[0].n_generated == -1 && jobs[1].n_generated == -1);
    cr_expect(jobs[0].t_done > 0.0);
    cr_expect_eq(tpm_serve_queue_len(q), 0);
    tpm_serve_queue_destroy(q);
}

Test(serve_queue, wait_returns_after_the_timeout_when_empty)
{
    tpm_serve_queue_t *q;
    tpm_serve_job_t    a;
    double             t0;

    memset(&a, 0, sizeof(a));
    cr_assert_eq(tpm_serve_queue_create(1, &q), TPM_OK);
    t0 = tpm_time_now();
    cr_expect_eq(tpm_serve_queue_wait(q, 0.05), 0);
    cr_expect(tpm_time_now() - t0 >= 0.04, "waited %f s", tpm_time_now() - t0);
    cr_expect_eq(tpm_serve_queue_push(q, &a), TPM_OK);
    t0 = tpm_time_now();
    cr_expect_eq(tpm_serve_queue_wait(q, 5.0), 1);
    cr_expect(tpm_time_now() - t0 < 1.0);
    tpm_serve_queue_destroy(q);
}

typedef struct {
    tpm_serve_queue_t *q;
    tpm_serve_job_t   *jobs;
    int                n, ok;
} pusher_t;

static void *push_all(void *arg)
{
    pusher_t *p = arg;

    for (int i = 0; i < p->n; i++) {
        p->ok += tpm_serve_queue_push(p->q, &p->jobs[i]) == TPM_OK;
    }
    return NULL;
}

Test(serve_queue, concurrent_pushes_lose_nothing_and_respect_the_capacity)
{
    enum { NT = 4, PER = 300 };
    static tpm_serve_job_t jobs[NT][PER];
    tpm_serve_queue_t     *q;
    pthread_t              th[NT];
    pusher_t               p[NT];
    int                    ok = 0, popped = 0;

    cr_assert_eq(tpm_serve_queue_create(500, &q), TPM_OK);
    for (int t = 0; t < NT; t++) {
        p[t] = (pusher_t){q, jobs[t], PER, 0};
        pthread_create(&th[t], NULL, push_all, &p[t]);
    }
    for (int t = 0; t < NT; t++) {
        pthread_join(th[t], NULL);
        ok += p[t].ok;
    }
    while (tpm_serve_queue_pop(q) != NULL) {
        popped++;
    }
    cr_expect_eq(ok, 500);
    cr_expect_eq(popped, 500);
    tpm_serve_queue_destroy(q);
}
