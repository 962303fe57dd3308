/* SPDX-License-Identifier: MIT */
/*
 * main.c: MPI start-up, configuration agreement and mode dispatch.
 * Exit codes: 0 success, 1 runtime failure, 2 bad command line or input.
 */
#include "config.h"

#include <errno.h>
#include <limits.h>
#include <mpi.h>
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/status.h"
#include "ckpt/ckpt.h"
#include "ckpt/ckpt_llmc.h"
#include "ckpt/hf.h"
#include "cli/config.h"
#include "comm/comm.h"
#include "core/reshard.h"
#include "data/prepare.h"
#include "eval/eval.h"
#include "serve/engine.h"
#include "train/train.h"

static void mpi_abort_hook(int code)
{
    MPI_Abort(MPI_COMM_WORLD, code);
}

/* CPUs in this process's affinity mask, or -1 when it cannot be read */
static int affinity_cpus(void)
{
    for (int n = 1024; n <= (1 << 20); n *= 2) {
        cpu_set_t *set  = CPU_ALLOC((size_t)n);
        size_t     size = CPU_ALLOC_SIZE((size_t)n);
        int        count;

        if (set == NULL) {
            return -1;
        }
        CPU_ZERO_S(size, set);
        if (sched_getaffinity(0, size, set) == 0) {
            count = CPU_COUNT_S(size, set);
            CPU_FREE(set);
            return count;
        }
        CPU_FREE(set);
        if (errno != EINVAL) { /* EINVAL: the kernel's mask is larger than ours */
            return -1;
        }
    }
    return -1;
}

/*
 * Warn once (rank 0) when a rank's affinity mask holds fewer CPUs than the
 * threads it will run (--threads, else OpenMP's default): threads then share
 * cores. Open MPI binds a lone rank to one core by default. Collective.
 */
static void check_affinity(const tpm_config_t *cfg, tpm_comm_t *comm)
{
    int cpus     = affinity_cpus();
    int threads  = cfg->threads > 0 ? cfg->threads : omp_get_max_threads();
    int mine[2]  = {0, INT_MAX}, all[2];
    int worst[3] = {0, 0, 0};

    if (cpus > 0 && cpus < threads) {
        mine[0] = 1;
        mine[1] = comm->rank;
    }
    /* how many ranks are affected, and the first of them */
    MPI_Allreduce(&mine[0], &all[0], 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD);
    MPI_Allreduce(&mine[1], &all[1], 1, MPI_INT, MPI_MIN, MPI_COMM_WORLD);
    if (all[0] == 0) {
        return;
    }
    if (comm->rank == all[1]) {
        worst[0] = cpus;
        worst[1] = threads;
    }
    if (all[1] != 0) {
        if (comm->rank == all[1]) {
            MPI_Send(worst, 2, MPI_INT, 0, 0, MPI_COMM_WORLD);
        } else if (comm->rank == 0) {
            MPI_Recv(worst, 2, MPI_INT, all[1], 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        }
    }
    if (comm->rank == 0) {
        tpm_log_warn("rank %d runs %d threads on an affinity mask of %d CPU(s) (%d of %d "
                     "rank(s) affected): the threads share cores; launch with `mpirun "
                     "--bind-to none` (or --map-by slot:PE=%d), or lower --threads",
                     all[1], worst[1], worst[0], all[0], comm->size, worst[1]);
    }
}

static tpm_status_t run_prepare(const tpm_config_t *cfg, tpm_comm_t *comm)
{
    tpm_status_t status = TPM_OK;

    if (comm->rank == 0) {
        const char *inputs[TPM_MAX_INPUTS];
        if (cfg->n_input == 0) {
            tpm_log_error("--mode=prepare needs input text files (--input=FILE, repeatable)");
            status = TPM_ERR_INVALID_ARG;
        } else if (cfg->out[0] == '\0') {
            tpm_log_error("--mode=prepare needs --out=DIR for the tokenizer and token shards");
            status = TPM_ERR_INVALID_ARG;
        } else {
            for (int i = 0; i < cfg->n_input; i++) {
                inputs[i] = cfg->input[i];
            }
            status = tpm_prepare_run(inputs, cfg->n_input, cfg->out,
                                     cfg->vocab_size > 0 ? cfg->vocab_size : TPM_BUILTIN_VOCAB,
                                     cfg->val_fraction);
        }
    }
    return tpm_comm_agree(comm, status);
}

/* --mode=export: a checkpoint (file, or a --ckpt-dir's latest) to an llm.c model file or a
 * Hugging Face directory */
static tpm_status_t run_export(const tpm_config_t *cfg, tpm_comm_t *comm)
{
    char         path[TPM_PATH_MAX];
    tpm_status_t status = TPM_OK;

    if (cfg->ckpt[0] == '\0') {
        tpm_error0("--mode=export needs --ckpt=FILE (a checkpoint, or a checkpoint "
                   "directory)");
        status = TPM_ERR_INVALID_ARG;
    } else if (cfg->out[0] == '\0') {
        tpm_error0("--mode=export needs --out=FILE for the %s model file", cfg->format);
        status = TPM_ERR_INVALID_ARG;
    } else if (strcmp(cfg->format, "llmc") != 0 && strcmp(cfg->format, "hf") != 0) {
        tpm_error0("--format=%s cannot be exported (available: llmc, hf)", cfg->format);
        status = TPM_ERR_UNSUPPORTED;
    }
    TPM_CHECK(tpm_ckpt_agree(comm, status));
    if (comm->rank == 0) {
        status = tpm_ckpt_resolve(cfg->ckpt, path, sizeof(path));
    }
    TPM_CHECK(tpm_ckpt_agree(comm, status));
    TPM_CHECK(tpm_comm_bcast(comm, path, sizeof(path), TPM_DT_BYTE, 0));
    if (strcmp(cfg->format, "hf") == 0) {
        return tpm_ckpt_export_hf(comm, path, cfg->out);
    }
    return tpm_ckpt_export_llmc(comm, path, cfg->out);
}

/*
 * --mode=trainserve: the last --serve-ranks ranks of the world form the serving group, the
 * others the training group; each runs its mode on its own communicator, and the two talk
 * over the world only through the weight push protocol (core/reshard.h). The configuration is
 * the same on every rank (checked before), so every rank takes the same branch here.
 */
static tpm_status_t run_trainserve(const tpm_config_t *cfg, tpm_comm_t *world)
{
    const int       M = cfg->serve_ranks, N = world->size;
    tpm_comm_t     *group = NULL;
    tpm_push_link_t link;
    int             serving;
    tpm_status_t    status;

    if (M < 1 || M >= N) {
        tpm_info0("error: --mode=trainserve needs 1 <= --serve-ranks < ranks (got "
                  "--serve-ranks=%d with %d rank(s)): the last M ranks serve, the others train",
                  M, N);
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->watch) {
        tpm_info0("error: --watch is for --mode=serve (trainserve gets its weights pushed)");
        return TPM_ERR_INVALID_ARG;
    }
    serving = world->rank >= N - M;
    status  = tpm_comm_split(world, serving, world->rank, &group);
    TPM_CHECK(tpm_comm_agree(world, status));
    memset(&link, 0, sizeof(link));
    link.world      = world;
    link.n_train    = N - M;
    link.n_serve    = M;
    link.bf16       = strcmp(cfg->push_dtype, "bf16") == 0;
    link.push_every = cfg->push_every;
    tpm_info0("trainserve: ranks [0, %d) train (ZeRO-3), ranks [%d, %d) serve (tensor parallel)",
              N - M, N - M, N);
    if (serving) {
        tpm_log_set_lead(group->rank == 0); /* the serving group's rank 0 speaks for it */
        status = tpm_serve_run_linked(cfg, group, &link);
    } else {
        status = tpm_train_run_linked(cfg, group, &link);
    }
    tpm_comm_destroy(group);
    return status;
}

/* every rank parsed the same argv; make sure the environment did not make them differ */
static tpm_status_t check_config_agreement(const tpm_config_t *cfg, tpm_comm_t *comm)
{
    uint64_t h = tpm_config_hash(cfg), hmin = 0, hmax = 0;

    TPM_CHECK(tpm_comm_all_reduce(comm, &h, &hmin, 1, TPM_DT_INT64, TPM_RED_MIN));
    TPM_CHECK(tpm_comm_all_reduce(comm, &h, &hmax, 1, TPM_DT_INT64, TPM_RED_MAX));
    if (hmin != hmax) {
        tpm_log_error("ranks disagree on the configuration (different TPMPI_* environment "
                      "variables on different nodes?)");
        return TPM_ERR_INVALID_ARG;
    }
    return TPM_OK;
}

int main(int argc, char **argv)
{
    tpm_config_t    cfg;
    tpm_comm_t     *comm   = NULL;
    tpm_status_t    status = TPM_OK;
    tpm_log_level_t level;
    int             rank = 0, provided, exit_now = 0, all_ok;
    FILE           *out = stdout;

    MPI_Init_thread(&argc, &argv, MPI_THREAD_FUNNELED, &provided);
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    tpm_log_set_rank(rank);
    tpm_set_abort_hook(mpi_abort_hook);

    /* parse on every rank; only rank 0 speaks */
    if (rank != 0) {
        tpm_log_set_level((tpm_log_level_t)-1);
        out = fopen("/dev/null", "w");
    }
    tpm_config_defaults(&cfg);
    status = tpm_config_parse(&cfg, argc, argv, out != NULL ? out : stdout, &exit_now);
    if (status == TPM_OK && !exit_now) {
        status = tpm_config_apply_preset(&cfg);
    }
    if (out != stdout && out != NULL) {
        fclose(out);
    }
    tpm_log_set_level(TPM_LOG_INFO);
    if (status == TPM_OK && tpm_log_level_parse(cfg.log_level, &level) == 0) {
        tpm_log_set_level(level);
    }
    {
        int ok = status == TPM_OK;
        MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_LAND, MPI_COMM_WORLD);
    }
    if (!all_ok || exit_now) {
        if (!all_ok && rank == 0) {
            fprintf(stderr, "try 'tpmpi --help'\n");
        }
        MPI_Finalize();
        return all_ok ? 0 : 2;
    }

    if (strcmp(cfg.device, "cuda") == 0) {
        /* device buffers: NCCL; its failures (no GPU) are agreed on, so exiting is clean */
        TPM_CHECK_GOTO(tpm_comm_nccl_create(cfg.debug_collectives, &comm), status, out);
    } else {
        status = tpm_comm_mpi_create(cfg.debug_collectives, &comm);
        if (status != TPM_OK) {
            tpm_fatal(status, "cannot set up the MPI communicator");
        }
    }
    TPM_CHECK_GOTO(check_config_agreement(&cfg, comm), status, out);
    check_affinity(&cfg, comm);

    switch (cfg.mode) {
    case TPM_MODE_TRAIN: status = tpm_train_run(&cfg, comm); break;
    case TPM_MODE_PREPARE: status = run_prepare(&cfg, comm); break;
    case TPM_MODE_EXPORT: status = run_export(&cfg, comm); break;
    case TPM_MODE_SERVE: status = tpm_serve_run(&cfg, comm); break;
    case TPM_MODE_TRAINSERVE: status = run_trainserve(&cfg, comm); break;
    case TPM_MODE_EVAL: status = tpm_eval_run(&cfg, comm); break;
    default:
        tpm_error0("--mode=%s is not implemented yet in this version (available: train, "
                   "prepare, export, serve, eval, trainserve)",
                   tpm_mode_name(cfg.mode));
        status = TPM_ERR_UNSUPPORTED;
        break;
    }

out:
    tpm_comm_destroy(comm);
    MPI_Finalize();
    if (status == TPM_OK) {
        return 0;
    }
    return (status == TPM_ERR_INVALID_ARG || status == TPM_ERR_FORMAT ||
            status == TPM_ERR_NOT_FOUND || status == TPM_ERR_UNSUPPORTED)
               ? 2
               : 1;
}
