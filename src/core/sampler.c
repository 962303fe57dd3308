/* SPDX-License-Identifier: MIT */
/*
 * sampler.c: greedy / temperature / top-k / top-p token choice (see sampler.h).
 *
 * Candidates are ranked by (logit descending, id ascending), a strict total order, so
 * ties never depend on the sort algorithm. Top-k uses a bounded min-heap (O(V log k)).
 * Top-p alone does not sort the vocabulary: one pass puts every token's probability mass
 * in one of SAMPLER_NB buckets by logit, the buckets above the one where the running mass
 * reaches top_p are kept whole, and only that boundary bucket is sorted to find where the
 * nucleus ends (the same set as the sorted prefix). The draw then walks the kept tokens in
 * a fixed order. Weights and sums are in double: V is ~5e4 terms.
 */
#include "core/sampler.h"

#include <math.h>
#include <string.h>

#include "base/mem.h"
#include "base/rng.h"

#define SAMPLER_NB 1024 /* logit buckets of the top-p search */
#define SAMPLER_RANGE                                                                              \
    40.0 /* logits further below the maximum (after temperature) weigh < 5e-18                     \
          */

tpm_status_t tpm_sampler_create(int V, tpm_sampler_t **s_p)
{
    tpm_sampler_t *s;
    tpm_status_t   status;

    if (V < 1) {
        tpm_log_error("sampler: vocabulary size %d must be positive", V);
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(tpm_calloc(1, sizeof(*s), (void **)&s));
    s->V = V;
    TPM_CHECK_GOTO(tpm_calloc((size_t)V, sizeof(float), (void **)&s->val), status, err_free);
    TPM_CHECK_GOTO(tpm_calloc((size_t)V, sizeof(int32_t), (void **)&s->idx), status, err_free);
    *s_p = s;
    return TPM_OK;

err_free:
    tpm_sampler_destroy(s);
    return status;
}

void tpm_sampler_destroy(tpm_sampler_t *s)
{
    if (s == NULL) {
        return;
    }
    tpm_free(s->val);
    tpm_free(s->idx);
    tpm_free(s);
}

static inline float clean(float x)
{
    return x == x ? x : -INFINITY; /* NaN ranks last */
}

/* strict order: a ranks before b */
static inline int before(float a, int32_t ia, float b, int32_t ib)
{
    return a > b || (a == b && ia < ib);
}

static int32_t argmax(const float *l, int V)
{
    int32_t best = 0;
    float   bv   = clean(l[0]);

    for (int i = 1; i < V; i++) {
        float v = clean(l[i]);

        if (v > bv) { /* strict: the lowest id wins a tie */
            bv   = v;
            best = i;
        }
    }
    return best;
}

/* min-heap on the rank order: the root is the worst of the kept candidates */
static void sift_down(float *v, int32_t *id, int n, int i)
{
    for (;;) {
        int l = 2 * i + 1, r = l + 1, w = i;

        if (l < n && before(v[w], id[w], v[l], id[l])) {
            w = l;
        }
        if (r < n && before(v[w], id[w], v[r], id[r])) {
            w = r;
        }
        if (w == i) {
            return;
        }
        float   tv = v[i];
        int32_t ti = id[i];

        v[i]  = v[w];
        id[i] = id[w];
        v[w]  = tv;
        id[w] = ti;
        i     = w;
    }
}

/* heapsort of n candidates by rank: the worst goes to the back each round, best first */
static void sort_ranked(float *v, int32_t *id, int n)
{
    for (int i = n / 2 - 1; i >= 0; i--) {
        sift_down(v, id, n, i);
    }
    for (int k = n - 1; k > 0; k--) {
        float   tv = v[0];
        int32_t ti = id[0];

        v[0]  = v[k];
        id[0] = id[k];
        v[k]  = tv;
        id[k] = ti;
        sift_down(v, id, k, 0);
    }
}

/* the k best of logits[0..V) into s->val/s->idx, best first */
static void select_top(tpm_sampler_t *s, const float *logits, int k)
{
    float   *v  = s->val;
    int32_t *id = s->idx;

    for (int i = 0; i < k; i++) {
        v[i]  = clean(logits[i]);
        id[i] = i;
    }
    for (int i = k / 2 - 1; i >= 0; i--) {
        sift_down(v, id, k, i);
    }
    for (int i = k; i < s->V; i++) {
        float x = clean(logits[i]);

        if (before(x, i, v[0], id[0])) {
            v[0]  = x;
            id[0] = i;
            sift_down(v, id, k, 0);
        }
    }
    sort_ranked(v, id, k);
}

/*
 * Top-p without top-k. Bucket b holds the tokens with (zmax - z) / width in [b, b + 1)
 * (z = logit / temperature); a token in a lower bucket ranks above every token of a higher
 * one. Keeps: every token of the buckets before the one where the running mass reaches
 * top_p, in id order at the front of s->idx, then the smallest rank-ordered prefix of that
 * bucket that reaches it. Returns the number kept; *mass_p is their total weight.
 */
static int nucleus(tpm_sampler_t *s, const float *logits, double inv_t, double zmax, double zmin,
                   double top_p, double total, double *mass_p)
{
    double mass[SAMPLER_NB], cum = 0.0, width;
    int    B = SAMPLER_NB - 1, na = 0, nb = 0;

    width = (zmax - zmin < SAMPLER_RANGE ? zmax - zmin : SAMPLER_RANGE) / (SAMPLER_NB - 1);
    width = width > 0.0 ? width : 1.0; /* all logits equal: one bucket */
    memset(mass, 0, sizeof(mass));
#define SAMPLER_BUCKET(_d) ((_d) / width < SAMPLER_NB - 1 ? (int)((_d) / width) : SAMPLER_NB - 1)
    for (int i = 0; i < s->V; i++) {
        double d = zmax - (double)clean(logits[i]) * inv_t;

        mass[SAMPLER_BUCKET(d)] += exp(-d);
    }
    for (int b = 0; b < SAMPLER_NB; b++) {
        if (cum + mass[b] >= top_p * total) {
            B = b;
            break;
        }
        cum += mass[b];
    }
    /* kept buckets at the front of idx; the boundary bucket at the back, with its logits */
    for (int i = 0; i < s->V; i++) {
        double d = zmax - (double)clean(logits[i]) * inv_t;
        int    b = SAMPLER_BUCKET(d);

        if (b < B) {
            s->idx[na++] = i;
        } else if (b == B) {
            nb++;
            s->idx[s->V - nb] = i;
            s->val[s->V - nb] = clean(logits[i]);
        }
    }
#undef SAMPLER_BUCKET
    sort_ranked(s->val + s->V - nb, s->idx + s->V - nb, nb);
    for (int j = 0; j < nb; j++) {
        int32_t id = s->idx[s->V - nb + j];

        s->idx[na++] = id;
        cum += exp((double)clean(logits[id]) * inv_t - zmax);
        if (cum >= top_p * total) {
            break;
        }
    }
    *mass_p = cum;
    return na;
}

int32_t tpm_sampler_sample(tpm_sampler_t *s, const float *logits, const tpm_sampler_params_t *p,
                           uint64_t step)
{
    const int V     = s->V;
    double    inv_t = 0.0, zmax, zmin, total = 0.0, cum = 0.0, u, target;
    int       K, use_p, n_keep;
    float     mx, mn;

    if (!(p->temperature > 0.0f) || p->top_k == 1) {
        return argmax(logits, V);
    }
    inv_t = 1.0 / (double)p->temperature;
    mx    = clean(logits[argmax(logits, V)]);
    if (mx == -INFINITY) {
        return 0; /* no finite logit: nothing to weigh */
    }
    zmax  = (double)mx * inv_t;
    K     = p->top_k > 0 && p->top_k < V ? p->top_k : V;
    use_p = p->top_p > 0.0f && p->top_p < 1.0f;
    u     = (double)tpm_rng_uniform(p->seed, TPM_SAMPLER_STREAM, step);

    if (K == V) {
        mn = mx;
        for (int i = 0; i < V; i++) {
            float x = clean(logits[i]);

            total += exp((double)x * inv_t - zmax);
            mn = x < mn ? x : mn;
        }
        zmin = mn == -INFINITY ? zmax - SAMPLER_RANGE : (double)mn * inv_t;
        if (!use_p) {
            /* plain temperature sampling: no ranking needed, walk the ids in order */
            target = u * total;
            for (int i = 0; i < V; i++) {
                cum += exp((double)clean(logits[i]) * inv_t - zmax);
                if (cum > target) {
                    return i;
                }
            }
            return argmax(logits, V); /* rounding left target at the very end */
        }
        n_keep = nucleus(s, logits, inv_t, zmax, zmin, (double)p->top_p, total, &cum);
    } else {
        /* top-k: the K best, ranked; then the nucleus of their renormalised mass */
        select_top(s, logits, K);
        for (int j = 0; j < K; j++) {
            total += exp((double)s->val[j] * inv_t - zmax);
        }
        n_keep = K;
        for (int j = 0; j < K; j++) {
            cum += exp((double)s->val[j] * inv_t - zmax);
            if (use_p && cum >= (double)p->top_p * total) {
                n_keep = j + 1;
                break;
            }
        }
    }

    /* draw among the kept ids (s->idx[0..n_keep)) in their stored order */
    target = u * cum;
    cum    = 0.0;
    for (int j = 0; j < n_keep; j++) {
        cum += exp((double)clean(logits[s->idx[j]]) * inv_t - zmax);
        if (cum > target) {
            return s->idx[j];
        }
    }
    return s->idx[n_keep - 1];
}

void tpm_logprobs(const float *logits, int V, int32_t token, int k, float *lp_p, int32_t *top_ids,
                  float *top_lp)
{
    float  mx    = -INFINITY;
    double sum   = 0.0, lse;
    int    n_top = 0;

    k = k < 0 ? 0 : (k > TPM_LOGPROBS_MAX_TOP ? TPM_LOGPROBS_MAX_TOP : k);
    k = k < V ? k : V;
    for (int i = 0; i < V; i++) {
        if (logits[i] > mx) { /* false for NaN */
            mx = logits[i];
        }
    }
    for (int i = 0; i < V; i++) {
        if (logits[i] == logits[i]) {
            sum += exp((double)logits[i] - (double)mx);
        }
    }
    lse   = (double)mx + log(sum);
    *lp_p = (token >= 0 && token < V && logits[token] == logits[token])
                ? (float)((double)logits[token] - lse)
                : -INFINITY;
    /* top-k by insertion into a sorted list of at most k: k is small (<= 20) */
    for (int i = 0; i < V && k > 0; i++) {
        float v = logits[i] == logits[i] ? logits[i] : -INFINITY;
        int   j;

        if (n_top == k && !(v > top_lp[k - 1])) {
            continue; /* ties keep the lower id, which came first */
        }
        j = n_top < k ? n_top++ : k - 1;
        while (j > 0 && v > top_lp[j - 1]) {
            top_lp[j]  = top_lp[j - 1];
            top_ids[j] = top_ids[j - 1];
            j--;
        }
        top_lp[j]  = v;
        top_ids[j] = i;
    }
    for (int j = 0; j < n_top; j++) {
        top_lp[j] = (float)((double)top_lp[j] - lse);
    }
}

void tpm_sampler_adjust(float *logits, int V, const int32_t *bias_ids, const float *bias_val,
                        int n_bias, const int32_t *gen, int n_gen, float presence, float frequency,
                        int32_t *counts)
{
    for (int i = 0; i < n_bias; i++) {
        if (bias_ids[i] >= 0 && bias_ids[i] < V) {
            logits[bias_ids[i]] += bias_val[i];
        }
    }
    if (presence == 0.0f && frequency == 0.0f) {
        return;
    }
    for (int i = 0; i < n_gen; i++) {
        if (gen[i] >= 0 && gen[i] < V) {
            counts[gen[i]]++;
        }
    }
    /* each distinct token once (its count is reset the first time it is seen) */
    for (int i = 0; i < n_gen; i++) {
        int32_t t = gen[i];

        if (t >= 0 && t < V && counts[t] > 0) {
            logits[t] -= (float)counts[t] * frequency + presence;
            counts[t] = 0;
        }
    }
}
