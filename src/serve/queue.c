/* SPDX-License-Identifier: MIT */
/*
 * queue.c: the bounded FIFO between the HTTP threads (producers) and the engine loop (the
 * one consumer), serve.h and engine.h. A ring of job pointers behind one mutex; a
 * condition variable wakes an idle engine when a job arrives. The ring is sized for
 * capacity + free slots, so it is allocated at start-up and never in a push.
 */
#include "serve/engine.h"

#include <errno.h>
#include <pthread.h>
#include <time.h>

#include "base/mem.h"
#include "base/timer.h"

struct tpm_serve_queue {
    pthread_mutex_t   mu;
    pthread_cond_t    cv; /* signalled on push and close */
    tpm_serve_job_t **ring;
    int               ring_cap; /* entries allocated */
    int               head;     /* oldest job */
    int               len;
    int               capacity; /* --max-queue: jobs allowed to wait */
    int               n_free;   /* free slots: jobs about to be admitted do not wait */
    int               closed;
};

tpm_status_t tpm_serve_queue_create(int capacity, tpm_serve_queue_t **q_p)
{
    tpm_serve_queue_t *q;
    tpm_status_t       status;

    if (capacity < 0) {
        tpm_log_error("serve queue: capacity %d is negative", capacity);
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(tpm_calloc(1, sizeof(*q), (void **)&q));
    q->capacity = capacity;
    q->ring_cap = capacity > 0 ? capacity : 1;
    TPM_CHECK_GOTO(tpm_calloc((size_t)q->ring_cap, sizeof(*q->ring), (void **)&q->ring), status,
                   err_free_q);
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
    *q_p = q;
    return TPM_OK;

err_free_q:
    tpm_free(q);
    return status;
}

void tpm_serve_queue_destroy(tpm_serve_queue_t *q)
{
    if (q == NULL) {
        return;
    }
    pthread_cond_destroy(&q->cv);
    pthread_mutex_destroy(&q->mu);
    tpm_free(q->ring);
    tpm_free(q);
}

tpm_status_t tpm_serve_queue_push(tpm_serve_queue_t *q, tpm_serve_job_t *job)
{
    tpm_status_t status = TPM_OK;

    pthread_mutex_lock(&q->mu);
    if (q->closed || q->len >= q->capacity + q->n_free || q->len >= q->ring_cap) {
        status = TPM_ERR_OVERFLOW; /* the front-end answers 503; no log: load, not a fault */
    } else {
        job->t_submit                             = tpm_time_now();
        q->ring[(q->head + q->len) % q->ring_cap] = job;
        q->len++;
        pthread_cond_signal(&q->cv);
    }
    pthread_mutex_unlock(&q->mu);
    return status;
}

tpm_serve_job_t *tpm_serve_queue_pop(tpm_serve_queue_t *q)
{
    tpm_serve_job_t *job = NULL;

    pthread_mutex_lock(&q->mu);
    if (q->len > 0) {
        job     = q->ring[q->head];
        q->head = (q->head + 1) % q->ring_cap;
        q->len--;
    }
    pthread_mutex_unlock(&q->mu);
    return job;
}

int tpm_serve_queue_len(tpm_serve_queue_t *q)
{
    int n;

    pthread_mutex_lock(&q->mu);
    n = q->len;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void tpm_serve_queue_set_free(tpm_serve_queue_t *q, int n_free)
{
    tpm_serve_job_t **ring;
    int               need = q->capacity + (n_free > 0 ? n_free : 0);

    pthread_mutex_lock(&q->mu);
    if (need > q->ring_cap && tpm_calloc((size_t)need, sizeof(*ring), (void **)&ring) == TPM_OK) {
        /* first call (start-up) only: the slot count does not change afterwards */
        for (int i = 0; i < q->len; i++) {
            ring[i] = q->ring[(q->head + i) % q->ring_cap];
        }
        tpm_free(q->ring);
        q->ring     = ring;
        q->ring_cap = need;
        q->head     = 0;
    }
    q->n_free = n_free > 0 ? n_free : 0;
    pthread_mutex_unlock(&q->mu);
}

int tpm_serve_queue_wait(tpm_serve_queue_t *q, double timeout_s)
{
    struct timespec ts;
    int             n;

    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += (time_t)timeout_s;
    ts.tv_nsec += (long)((timeout_s - (double)(time_t)timeout_s) * 1e9);
    if (ts.tv_nsec >= 1000000000L) {
        ts.tv_sec++;
        ts.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&q->mu);
    while (q->len == 0 && !q->closed) {
        if (pthread_cond_timedwait(&q->cv, &q->mu, &ts) == ETIMEDOUT) {
            break;
        }
    }
    n = q->len;
    pthread_mutex_unlock(&q->mu);
    return n;
}

void tpm_serve_queue_close(tpm_serve_queue_t *q)
{
    pthread_mutex_lock(&q->mu);
    q->closed = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void tpm_serve_queue_drain(tpm_serve_queue_t *q, tpm_finish_t finish)
{
    tpm_serve_job_t *job;

    while ((job = tpm_serve_queue_pop(q)) != NULL) {
        job->t_done = tpm_time_now();
        if (job->on_done != NULL) {
            job->on_done(job, finish);
        }
    }
}
