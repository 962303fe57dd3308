/* SPDX-License-Identifier: MIT */
/*
 * config.h: the resolved run configuration. One option table in config.c gives
 * the getopt_long options, the TPMPI_* environment overrides, --help and the
 * config dump; nothing else parses options.
 *
 * Precedence: built-in default < --model preset < TPMPI_<NAME> environment <
 * command line. Parsing is strict: unknown options, malformed numbers and
 * out-of-range values are errors that name the option.
 */
#ifndef TPM_CLI_CONFIG_H
#define TPM_CLI_CONFIG_H

#include <stdint.h>
#include <stdio.h>

#include "base/status.h"

#define TPM_PATH_MAX   1024
#define TPM_MAX_INPUTS 64

typedef enum {
    TPM_MODE_TRAIN = 0,
    TPM_MODE_PREPARE,
    TPM_MODE_SERVE,
    TPM_MODE_EXPORT,
    TPM_MODE_EVAL,
    TPM_MODE_TRAINSERVE, /* one job: a training group and a serving group, live weight push */
} tpm_mode_t;

typedef struct tpm_config {
    tpm_mode_t mode;

    /* model: preset, then overrides (0 = take from preset / data) */
    char arch[8];   /* gpt2 | llama (a preset belongs to one of them) */
    char model[32]; /* tiny | small | gpt2-124m | gpt2-350m | llama-tiny | smollm-135m | ... */
    int  n_layer;
    int  n_head;
    int  n_embd;
    int  seq_len;    /* T used for training (<= n_ctx) */
    int  n_ctx;      /* position table size maxT */
    int  vocab_size; /* 0: from the tokenizer of the data */
    /* LLaMA only (0 or -1 = from the preset; docs/MODEL.md "LLaMA") */
    int    n_kv_head;         /* key/value heads, dividing n_head */
    int    intermediate_size; /* MLP hidden units */
    double rms_eps;
    double rope_theta;
    double rope_factor; /* Llama-3 rope scaling factor; 0 = none, -1 = from the preset */
    double rope_low_freq_factor;
    double rope_high_freq_factor;
    int    rope_orig_ctx;  /* original_max_position_embeddings */
    int    tie_embeddings; /* -1 = from the preset, 0 = own lm_head, 1 = tied to wte */
    int    qkv_bias;       /* -1 = from the preset, 0 or 1 */

    /* data */
    char data[TPM_PATH_MAX]; /* "" = built-in fortunes corpus */
    char out[TPM_PATH_MAX];  /* output directory (prepare: data dir; train: run dir) */
    char input[TPM_MAX_INPUTS][TPM_PATH_MAX]; /* prepare: input text files */
    int  n_input;
    double val_fraction; /* prepare: share of documents sent to the val split */

    /* training */
    int64_t  steps;
    int      batch;      /* micro-batch per rank */
    int      grad_accum; /* micro-batches per rank per step */
    double   lr;
    double   min_lr;
    int64_t  warmup;
    double   weight_decay;
    double   grad_clip; /* 0 = off */
    double   beta1;
    double   beta2;
    double   eps;
    uint64_t seed;
    int      threads;    /* 0 = OpenMP default */
    int64_t  eval_every; /* 0 = only at the end */
    int      eval_batches;
    int64_t  log_every;
    char     metrics[TPM_PATH_MAX]; /* JSONL metrics file ("" = none) */
    char     device[16];            /* cpu | cuda */
    char     cuda_matmul[8];        /* auto | fp32 | tf32 | bf16 (CUDA matmul inputs) */
    char     precision[8];          /* fp32 | bf16 working weights */
    char     serve_dtype[8];        /* serve: fp32 | bf16 | int8 matrix weights */
    char     kv_dtype[8];           /* serve: fp32 | bf16 KV cache */
    int      debug_collectives;
    char     log_level[16];

    /* checkpoints (train, export, serve) */
    char    ckpt_dir[TPM_PATH_MAX]; /* train: where checkpoints go ("" = none) */
    int64_t ckpt_every;             /* steps between checkpoints (0 = only at the end) */
    int     keep;                   /* newest K checkpoints kept */
    int     resume;                 /* resume from the newest complete checkpoint in ckpt_dir */
    int     overwrite;              /* a fresh run deletes the old run's checkpoints first */
    char    init_from[TPM_PATH_MAX]; /* weights only: FILE.h5 or llmc:FILE.bin */
    char    ckpt[TPM_PATH_MAX];      /* serve/export/eval: checkpoint file or directory */
    char    format[16];              /* export: llmc */

    /* gradient compression */
    char grad_compression[16];     /* none | 2bit */
    char compression_residual[16]; /* fp32 | bf16 | none (stochastic, no residual) */
    int  compression_warmup;       /* first K steps uncompressed */
    int  compression_block;        /* values per scale */
    int  compression_freeze_v;     /* AdamW second moment frozen after the warm-up */

    /* serving */
    char host[256];
    int  port;
    char api_key[256];
    int  parallel;        /* sequence slots */
    int  ctx_size;        /* KV cache length per slot (0 = n_ctx) */
    int  max_tokens;      /* upper bound for a request's max_tokens */
    int  max_queue;       /* waiting requests before 503 */
    int  max_body_bytes;  /* request body limit */
    char chat_template[16]; /* chatml | llama3 */
    int  watch;           /* serve: load a newer checkpoint of --ckpt=DIR when one appears */

    /* train and serve (--mode=trainserve) */
    int     serve_ranks;      /* ranks of the serving group (the last M of the world) */
    int64_t push_every;       /* push the weights every S steps (0 = only at the end) */
    char    push_dtype[16];   /* fp32 | bf16: what the push moves */
    char    swap_policy[16];  /* keep | recompute: running sequences at a swap */

    /* evaluation */
    char    split[8];              /* val | train */
    int64_t eval_tokens;           /* 0 = eval_batches global batches */
    char    task[TPM_PATH_MAX];    /* multiple-choice JSONL ("" = loss) */
} tpm_config_t;

/** Fill @p cfg with the built-in defaults. */
void tpm_config_defaults(tpm_config_t *cfg);

/**
 * Parse argv (and TPMPI_* environment variables) into @p cfg.
 * On --help / --version prints to @p out and sets *exit_now_p = 1 (status TPM_OK).
 * On a bad option logs a message naming it and returns TPM_ERR_INVALID_ARG.
 * Pure: no MPI; every rank parses the same argv and main verifies agreement.
 */
tpm_status_t tpm_config_parse(tpm_config_t *cfg, int argc, char **argv, FILE *out,
                              int *exit_now_p);

/** Apply --model preset values for fields still 0 (n_layer, n_head, n_embd, seq_len). */
tpm_status_t tpm_config_apply_preset(tpm_config_t *cfg);

/** Write the resolved configuration as one JSON object (no trailing newline). */
void tpm_config_dump_json(const tpm_config_t *cfg, FILE *f);

/** 64-bit hash of the configuration, used to check that every rank agrees. */
uint64_t tpm_config_hash(const tpm_config_t *cfg);

const char *tpm_mode_name(tpm_mode_t mode);

#endif /* TPM_CLI_CONFIG_H */
