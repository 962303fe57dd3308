/* SPDX-License-Identifier: MIT */
/*
 * serve_main.c: --mode=serve (tpm_serve_run, engine.h). Start-up is agreed step by step
 * (every rank returns the same status), the front-end starts before the weights are read
 * so that /health answers 503 while loading, then the engine loop runs until SIGTERM or
 * SIGINT sets the stop flag, which rank 0 passes to every rank in the next header.
 */
#include "serve/engine.h"

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "base/mem.h"
#include "base/stop_signal.h"
#include "base/timer.h"
#include "serve/http.h"
#include "serve/swap.h"
#include "serve/watch.h"

/*
 * The signals that stop the server cleanly: TERM and INT (srun, Slurm, a terminal), and
 * USR1 and USR2, which Open MPI's mpirun forwards to every rank at once; TERM or INT sent
 * to mpirun itself makes it kill the job instead (docs/SERVING.md, Shutdown).
 */
static const int serve_stop_signals[] = {SIGTERM, SIGINT, SIGUSR1, SIGUSR2};

/* model id for /v1/models: the --ckpt argument's last component, without ".h5" */
static void model_name(const char *arg, char *buf, size_t cap)
{
    size_t      n = strlen(arg);
    const char *base;

    while (n > 1 && arg[n - 1] == '/') {
        n--;
    }
    base = arg;
    for (size_t i = 0; i < n; i++) {
        if (arg[i] == '/' && i + 1 < n) {
            base = arg + i + 1;
        }
    }
    n -= (size_t)(base - arg);
    if (n > 3 && memcmp(base + n - 3, ".h5", 3) == 0) {
        n -= 3;
    }
    snprintf(buf, cap, "%.*s", (int)n, base);
}

/* rank 0 prints every rank's weights, KV cache and activations, and the slot capacity */
static tpm_status_t report_memory(tpm_comm_t *comm, const tpm_tp_model_t *m)
{
    const double mib = 1048576.0;
    int64_t      mine[3], *all = NULL;
    tpm_status_t status;

    mine[0] = (int64_t)m->mem.weight_bytes;
    mine[1] = (int64_t)m->mem.kv_bytes;
    mine[2] = (int64_t)m->mem.act_bytes;
    status =
        tpm_comm_agree(comm, tpm_calloc((size_t)comm->size * 3, sizeof(int64_t), (void **)&all));
    TPM_CHECK(status);
    status = tpm_comm_all_gather(comm, mine, all, 3, TPM_DT_INT64, NULL);
    for (int r = 0; r < comm->size && status == TPM_OK; r++) {
        tpm_tp_part_t p;

        tpm_tp_partition(&m->cfg, comm->size, r, &p);
        tpm_info0("rank %d: heads [%d, %d) (kv heads [%d, %d)), mlp rows [%lld, %lld), vocab "
                  "rows [%lld, %lld): weights %.1f MiB (%s), kv cache %.1f MiB (%s), "
                  "activations %.1f MiB",
                  r, p.h0, p.h0 + p.nh, p.kv0, p.kv0 + p.nkv, (long long)p.f0,
                  (long long)(p.f0 + p.nf), (long long)p.v0,
                  (long long)(p.v0 + p.nv), all[3 * r] / mib, tpm_wdtype_name(m->wdt),
                  all[3 * r + 1] / mib, m->kcache16 != NULL ? "bf16" : "fp32",
                  all[3 * r + 2] / mib);
    }
    tpm_info0("slot capacity: %d slots x %d tokens = %lld KV cache tokens, up to %d tokens per "
              "iteration",
              m->n_slots, m->ctx, (long long)m->n_slots * m->ctx, m->max_tok);
    tpm_free(all);
    return status;
}

/* the engine's options from the command line (the option table checked the names) */
static void engine_opts(const tpm_config_t *cfg, const tpm_model_config_t *mc,
                        tpm_engine_opts_t *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->n_slots    = cfg->parallel;
    opts->ctx        = cfg->ctx_size > 0 ? cfg->ctx_size : mc->maxT;
    opts->max_tokens = cfg->max_tokens;
    (void)tpm_wdtype_parse(cfg->serve_dtype, &opts->wdt);
    opts->kv_bf16 = strcmp(cfg->kv_dtype, "bf16") == 0;
}

/* a start-up failure of the serving group once the trainer is running: stop the whole job */
static void trainserve_fail(tpm_status_t status, const char *what)
{
    tpm_fatal(status, "trainserve: the serving group could not start (%s); stopping the job", what);
}

/* --mode=trainserve: the model comes from the trainer, weights with every push */
static tpm_status_t serve_linked(const tpm_config_t *cfg, tpm_comm_t *comm,
                                 const tpm_push_link_t *link)
{
    const int              root = comm->rank == 0;
    tpm_tokenizer_t       *tok  = NULL;
    tpm_backend_t         *be   = NULL;
    tpm_engine_t          *e    = NULL;
    tpm_serve_queue_t     *q    = NULL;
    tpm_http_t            *http = NULL;
    tpm_swapper_t         *sw   = NULL;
    tpm_serve_stats_t      stats;
    tpm_model_config_t     mc;
    tpm_engine_opts_t      opts;
    tpm_http_model_info_t  info;
    tpm_engine_swap_hook_t hook;
    tpm_stop_signals_t     old_signals;
    tpm_status_t           status;
    void                  *tok_bytes = NULL;
    size_t                 tok_len   = 0;
    char                   name[64];

    memset(&stats, 0, sizeof(stats));
    memset(&mc, 0, sizeof(mc));
    /* the trainer's start-up result reaches every serving rank in its HELLO */
    status = tpm_push_recv_hello(link, comm->rank, &mc, &tok_bytes, &tok_len);
    TPM_CHECK(tpm_comm_agree(comm, status));
    status = tpm_model_config_finish(&mc);
    if (status == TPM_OK && root) {
        status = tpm_tokenizer_from_bytes(tok_bytes, tok_len, &tok);
    }
    tpm_free(tok_bytes);
    if (tpm_comm_agree(comm, status) != TPM_OK) {
        trainserve_fail(status, "model or tokenizer from the trainer");
    }
    engine_opts(cfg, &mc, &opts); /* bf16/int8 weights are refused with pushes (model_tp.c) */
    status = tpm_backend_create(cfg->device, cfg->threads, &be);
    if (status == TPM_OK) {
        status = tpm_backend_set_matmul(be, cfg->cuda_matmul);
    }
    if (tpm_comm_agree(comm, status) != TPM_OK) {
        trainserve_fail(status, "backend");
    }
    status = tpm_engine_create(be, comm, &mc, &opts, tok, &e);
    if (status == TPM_OK) {
        status =
            tpm_swapper_create(link, comm->rank, tpm_engine_model(e), root ? &stats : NULL, &sw);
    }
    if (tpm_comm_agree(comm, status) != TPM_OK) {
        trainserve_fail(status, "engine and weight buffers");
    }
    tpm_info0("trainserve: serving L=%d C=%d NH=%d V=%d n_ctx=%d on %d rank(s)%s, two weight "
              "buffers, swap policy %s",
              mc.L, mc.C, mc.NH, mc.V, mc.maxT, comm->size,
              mc.NH % comm->size != 0 ? " (ranks do not divide the heads: uneven head split)" : "",
              cfg->swap_policy);
    if (report_memory(comm, tpm_engine_model(e)) != TPM_OK) {
        trainserve_fail(TPM_ERR_MPI, "memory report");
    }
    memset(&hook, 0, sizeof(hook)); /* no agreed callback */
    hook.ctx   = sw;
    hook.ready = tpm_swapper_ready;
    hook.swap  = tpm_swapper_swap;
    tpm_engine_set_swap_hook(e, &hook, strcmp(cfg->swap_policy, "recompute") == 0);

    tpm_stop_signals_install(serve_stop_signals,
                             (int)(sizeof(serve_stop_signals) / sizeof(serve_stop_signals[0])),
                             &stats.stop, &old_signals);
    if (root) {
        snprintf(name, sizeof(name), "%s", cfg->model);
        info.name  = name;
        info.n_ctx = opts.ctx;
        info.vocab = mc.V;
        status     = tpm_serve_queue_create(cfg->max_queue, &q);
        if (status == TPM_OK) {
            tpm_serve_queue_set_free(q, opts.n_slots);
            status = tpm_http_start(cfg, q, &stats, tok, &info, &http);
        }
    }
    if (tpm_comm_agree(comm, status) != TPM_OK) {
        trainserve_fail(status, "HTTP front-end");
    }
    /* /health answers 503 until the first push is swapped in (tpm_swapper_swap sets ready) */
    tpm_info0("listening on http://%s:%d, %d slot(s), context %d: ready with the first push",
              cfg->host, cfg->port, opts.n_slots, opts.ctx);

    status = tpm_engine_run(e, q, root ? &stats : NULL);
    tpm_info0(
        "stopping: %llu prompt tokens, %llu generated tokens served, %llu push(es) swapped in",
        (unsigned long long)stats.prompt_tokens, (unsigned long long)stats.generated_tokens,
        (unsigned long long)stats.pushes);
    if (root) {
        tpm_serve_queue_close(q);
        tpm_serve_queue_drain(q, TPM_FINISH_CANCELLED);
        tpm_http_stop(http);
        http = NULL;
    }
    tpm_stop_signals_restore(&old_signals);
    {
        /* the trainer's BYE may already be in: a failed trainer ends the job with an error */
        tpm_status_t ds = tpm_swapper_drain(sw, status);

        if (ds != TPM_OK) {
            tpm_fatal(ds, "trainserve: ending the weight push protocol failed");
        }
        if (status == TPM_OK && tpm_swapper_bye_status(sw) != TPM_OK) {
            status = TPM_ERR_REMOTE;
            tpm_info0("error: the training group failed; the serving group stops too");
        }
    }
    tpm_serve_queue_destroy(q);
    tpm_swapper_destroy(sw);
    tpm_engine_destroy(e);
    tpm_backend_destroy(be);
    tpm_tokenizer_destroy(tok);
    return status;
}

tpm_status_t tpm_serve_run_linked(const tpm_config_t *cfg, tpm_comm_t *comm,
                                  const tpm_push_link_t *link)
{
    return link != NULL ? serve_linked(cfg, comm, link) : tpm_serve_run(cfg, comm);
}

tpm_status_t tpm_serve_run(const tpm_config_t *cfg, tpm_comm_t *comm)
{
    const int             root = comm->rank == 0;
    char                  path[TPM_PATH_MAX], name[256];
    tpm_ckpt_t           *ck   = NULL;
    tpm_tokenizer_t      *tok  = NULL;
    tpm_backend_t        *be   = NULL;
    tpm_engine_t         *e    = NULL;
    tpm_serve_queue_t    *q    = NULL;
    tpm_http_t           *http = NULL;
    tpm_watcher_t        *watcher = NULL;
    tpm_serve_stats_t     stats;
    tpm_model_config_t    mc;
    tpm_engine_opts_t     opts;
    tpm_http_model_info_t info;
    tpm_stop_signals_t    old_signals;
    tpm_status_t          status = TPM_OK;
    double                t0     = tpm_time_now();

    memset(&stats, 0, sizeof(stats));
    memset(path, 0, sizeof(path));
    if (cfg->ckpt[0] == '\0') {
        tpm_error0("--mode=serve needs --ckpt=FILE.h5 or --ckpt=DIR (its latest checkpoint)");
        return TPM_ERR_INVALID_ARG; /* the same configuration on every rank */
    }
    if (cfg->watch) {
        struct stat sb;
        int         dir = stat(cfg->ckpt, &sb) == 0 && S_ISDIR(sb.st_mode);

        if (!dir) {
            tpm_info0("error: --watch needs --ckpt=DIR, a checkpoint directory (%s is not one)",
                      cfg->ckpt);
        }
        TPM_CHECK(tpm_comm_agree(comm, dir ? TPM_OK : TPM_ERR_INVALID_ARG));
    }
    /* rank 0 resolves DIR/latest once: a checkpoint landing meanwhile cannot split the ranks */
    if (root) {
        status = tpm_ckpt_resolve(cfg->ckpt, path, sizeof(path));
    }
    {
        int32_t s32 = (int32_t)status; /* rank 0's own status: the same exit code everywhere */

        TPM_CHECK(tpm_comm_bcast(comm, &s32, 1, TPM_DT_INT32, 0));
        TPM_CHECK((tpm_status_t)s32);
    }
    TPM_CHECK(tpm_comm_bcast(comm, path, sizeof(path), TPM_DT_BYTE, 0));
    TPM_CHECK(tpm_ckpt_open(comm, path, &ck));

    mc     = tpm_ckpt_meta(ck)->model;
    status = tpm_model_config_finish(&mc);
    if (status == TPM_OK && mc.arch == TPM_ARCH_LLAMA && strcmp(cfg->device, "cuda") == 0) {
        /* the file's metadata and the options: the same answer on every rank */
        tpm_log_error("%s holds a llama model; the CUDA backend has no LLaMA kernels that have "
                      "run on a GPU yet: serve it with --device=cpu",
                      path);
        status = TPM_ERR_INVALID_ARG;
    }
    if (status == TPM_OK && root) {
        status = tpm_tokenizer_from_bytes(tpm_ckpt_meta(ck)->tokenizer,
                                          tpm_ckpt_meta(ck)->tokenizer_len, &tok);
    }
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    engine_opts(cfg, &mc, &opts);
    tpm_info0("serving %s: %s L=%d C=%d NH=%d NKV=%d V=%d n_ctx=%d on %d rank(s)%s", path,
              tpm_arch_id_name(mc.arch), mc.L, mc.C, mc.NH, tpm_model_nkv(&mc), mc.V, mc.maxT,
              comm->size,
              tpm_model_nkv(&mc) % comm->size != 0
                  ? " (ranks do not divide the KV heads: uneven head split)"
                  : "");
    status = tpm_backend_create(cfg->device, cfg->threads, &be);
    if (status == TPM_OK) {
        status = tpm_backend_set_matmul(be, cfg->cuda_matmul);
    }
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    status = tpm_engine_create(be, comm, &mc, &opts, tok, &e);
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out);
    TPM_CHECK_GOTO(report_memory(comm, tpm_engine_model(e)), status, out);

    /* the front-end first: /health says 503 while the weights are read */
    tpm_stop_signals_install(serve_stop_signals,
                             (int)(sizeof(serve_stop_signals) / sizeof(serve_stop_signals[0])),
                             &stats.stop, &old_signals);
    if (root) {
        model_name(cfg->ckpt, name, sizeof(name));
        info.name  = name;
        info.n_ctx = opts.ctx;
        info.vocab = mc.V;
        status     = tpm_serve_queue_create(cfg->max_queue, &q);
        if (status == TPM_OK) {
            tpm_serve_queue_set_free(q, opts.n_slots);
            status = tpm_http_start(cfg, q, &stats, tok, &info, &http);
        }
    }
    TPM_CHECK_GOTO(tpm_comm_agree(comm, status), status, out_signals);

    status = tpm_engine_load(e, ck);
    if (status == TPM_OK && cfg->watch) {
        /* the second weight buffer for hot reloads (every rank; agreed) */
        status = tpm_comm_agree(comm, tpm_watcher_create(cfg, comm, tpm_engine_model(e), path,
                                                         tpm_ckpt_meta(ck)->step,
                                                         root ? &stats : NULL, &watcher));
        if (status == TPM_OK) {
            tpm_engine_swap_hook_t hook = tpm_watcher_hook(watcher);

            tpm_engine_set_swap_hook(e, &hook, strcmp(cfg->swap_policy, "recompute") == 0);
            tpm_info0("watching %s for newer checkpoints (swap policy %s)", cfg->ckpt,
                      cfg->swap_policy);
        }
    }
    tpm_ckpt_close(ck);
    ck = NULL;
    TPM_CHECK_GOTO(status, status, out_http);
    stats.ready = 1;
    tpm_info0("ready in %.1f s: http://%s:%d, %d slot(s), context %d, backend %s, %d thread(s)",
              tpm_time_now() - t0, cfg->host, cfg->port, opts.n_slots, opts.ctx, be->ops->name,
              be->n_threads);

    status = tpm_engine_run(e, q, root ? &stats : NULL);
    if (tpm_stop_signal() != 0) {
        tpm_info0("stopping on signal %d (%s)", tpm_stop_signal(), strsignal(tpm_stop_signal()));
    }
    tpm_info0("stopping: %llu prompt tokens, %llu generated tokens served",
              (unsigned long long)stats.prompt_tokens, (unsigned long long)stats.generated_tokens);

out_http:
    if (root) {
        /* no new jobs, answer the queued ones, then take the front-end down */
        if (q != NULL) {
            tpm_serve_queue_close(q);
            tpm_serve_queue_drain(q, TPM_FINISH_CANCELLED);
        }
        tpm_http_stop(http);
        http = NULL;
    }
out_signals:
    tpm_stop_signals_restore(&old_signals);
out:
    tpm_http_stop(http); /* still set only when the front-end started and start-up failed */
    tpm_serve_queue_destroy(q);
    tpm_ckpt_close(ck);
    tpm_watcher_destroy(watcher);
    tpm_engine_destroy(e);
    tpm_backend_destroy(be);
    tpm_tokenizer_destroy(tok);
    return status;
}
