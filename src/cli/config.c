/* SPDX-License-Identifier: MIT */
/*
 * config.c: the one option table of tpmpi and everything derived from it: the built-in
 * defaults, TPMPI_<NAME> environment overrides, getopt_long parsing, --help, the JSON dump
 * and the configuration hash that ranks compare.
 *
 * Parsing is strict: numbers go through strtoll/strtod with errno, end-pointer, finiteness
 * and range checks; unknown, abbreviated or malformed options are errors that name the
 * option (or the environment variable). No MPI; getopt_long's globals make it
 * not thread-safe, which is fine for a call made once at start-up.
 */
/* <config.h>, not "config.h": the quoted form would find this directory's cli/config.h */
#ifdef HAVE_CONFIG_H
#include <config.h>
#endif

#include "cli/config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

/* Help output: option column width and total line width. */
#define CONFIG_HELP_COL   30
#define CONFIG_HELP_WIDTH 100
/* getopt_long "val" of table entry i is CONFIG_VAL_BASE + i (above every char value). */
#define CONFIG_VAL_BASE 256

typedef enum {
    CONFIG_GROUP_GENERAL = 0,
    CONFIG_GROUP_MODEL,
    CONFIG_GROUP_DATA,
    CONFIG_GROUP_TRAINING,
    CONFIG_GROUP_LOGGING,
    CONFIG_GROUP_CKPT,
    CONFIG_GROUP_COMPRESS,
    CONFIG_GROUP_SERVE,
    CONFIG_GROUP_EVAL,
    CONFIG_GROUP_COUNT,
} config_group_t;

typedef enum {
    CONFIG_TYPE_INT,     /* int, integer range [imin, imax] */
    CONFIG_TYPE_I64,     /* int64_t, integer range [imin, imax] */
    CONFIG_TYPE_U64,     /* uint64_t, parsed as a non-negative int64 in [imin, imax] */
    CONFIG_TYPE_DOUBLE,  /* double, finite, range [dmin, dmax] (bounds may be exclusive) */
    CONFIG_TYPE_STR,     /* char[size], any text shorter than size */
    CONFIG_TYPE_CHOICE,  /* char[size], one of choices[] */
    CONFIG_TYPE_MODE,    /* tpm_mode_t, one of mode_names[] */
    CONFIG_TYPE_FLAG,    /* int 0/1; no value on the command line */
    CONFIG_TYPE_INPUT,   /* cfg->input[] / n_input, repeatable */
    CONFIG_TYPE_HELP,    /* --help: print and exit */
    CONFIG_TYPE_VERSION, /* --version: print and exit */
} config_type_t;

/* Range flags for doubles: a bound is exclusive (lr > 0, beta < 1). */
#define CONFIG_MIN_EXCL 0x1u
#define CONFIG_MAX_EXCL 0x2u

typedef struct {
    const char        *name;    /* long option, without "--" */
    const char        *env;     /* environment override (NULL: none) */
    const char        *def;     /* default as text, parsed like user input (NULL: none) */
    const char        *metavar; /* value name in --help (NULL: from the type) */
    const char        *help;
    config_group_t     group;
    config_type_t      type;
    size_t             offset; /* into tpm_config_t */
    size_t             size;   /* string buffer size */
    long long          imin, imax;
    double             dmin, dmax;
    unsigned           range_flags;
    const char *const *choices; /* NULL-terminated, CHOICE only */
} config_opt_t;

static const char *const mode_names[]   = {"train", "prepare", "serve", "export", "eval",
                                           "trainserve", NULL};
static const char *const arch_names[]        = {"gpt2", "llama", NULL};
static const char *const model_names[]  = {"tiny",        "small",        "gpt2-124m",
                                           "gpt2-350m",   "llama-tiny",   "smollm-135m",
                                           "qwen2.5-0.5b", "llama-3.2-1b", NULL};
static const char *const device_names[] = {"cpu", "cuda", NULL};
static const char *const cuda_matmul_names[] = {"auto", "fp32", "tf32", "bf16", NULL};
static const char *const precision_names[] = {"fp32", "bf16", NULL};
static const char *const serve_dtype_names[] = {"fp32", "bf16", "int8", NULL};
static const char *const format_names[] = {"llmc", "hf", NULL};
static const char *const chat_template_names[] = {"chatml", "llama3", NULL};
static const char *const compression_names[] = {"none", "2bit", NULL};
static const char *const residual_names[]    = {"fp32", "bf16", "none", NULL};
static const char *const push_dtype_names[]  = {"fp32", "bf16", NULL};
static const char *const swap_policy_names[] = {"keep", "recompute", NULL};
static const char *const split_names[]         = {"val", "train", NULL};
static const char *const level_names[]  = {"error", "warn", "info", "debug", NULL};

static const char *const group_titles[CONFIG_GROUP_COUNT] = {
    "General",     "Model",       "Data",    "Training",   "Logging",
    "Checkpoints", "Compression", "Serving", "Evaluation",
};

typedef struct {
    const char *name;
    const char *arch;
    int         n_layer, n_embd, n_head, seq_len, n_ctx;
    /* LLaMA: vocabulary (0: from the data), KV heads, MLP units, RMSNorm eps, rope theta */
    int    vocab, n_kv_head, ffn;
    double rms_eps, rope_theta;
    /* Llama-3 rope scaling (factor 0: none), tied head, q/k/v biases */
    double rope_factor, rope_low, rope_high;
    int    rope_orig_ctx, tied, qkv_bias;
} config_preset_t;

/*
 * The LLaMA presets have the shapes of the published models (their config.json), not their
 * weights; llama-3.2-1b keeps n_ctx at 8192 of its 131072 positions (the serving KV cache
 * default is n_ctx long).
 */
static const config_preset_t presets[] = {
    {"tiny", "gpt2", 2, 64, 4, 64, 64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {"small", "gpt2", 4, 256, 4, 64, 256, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {"gpt2-124m", "gpt2", 12, 768, 12, 1024, 1024, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {"gpt2-350m", "gpt2", 24, 1024, 16, 1024, 1024, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0},
    {"llama-tiny", "llama", 2, 64, 4, 64, 64, 0, 2, 160, 1e-5, 10000.0, 4.0, 1.0, 4.0, 16, 0, 0},
    {"smollm-135m", "llama", 30, 576, 9, 512, 2048, 49152, 3, 1536, 1e-5, 10000.0, 0, 0, 0, 0, 1,
     0},
    {"qwen2.5-0.5b", "llama", 24, 896, 14, 512, 32768, 151936, 2, 4864, 1e-6, 1000000.0, 0, 0, 0,
     0, 1, 1},
    {"llama-3.2-1b", "llama", 16, 2048, 32, 512, 8192, 128256, 8, 8192, 1e-5, 500000.0, 32.0, 1.0,
     4.0, 8192, 1, 0},
};

#define OFF(_f) offsetof(tpm_config_t, _f)
#define SZ(_f)  sizeof(((tpm_config_t *)0)->_f)
#define I64_MAX ((long long)INT64_MAX)

/* clang-format off */
static const config_opt_t options[] = {
    /* general */
    {"mode", "TPMPI_MODE", "train", NULL,
     "what to run (eval: loss and perplexity of a checkpoint, or a multiple-choice task)",
     CONFIG_GROUP_GENERAL, CONFIG_TYPE_MODE, OFF(mode), SZ(mode), 0, 0, 0, 0, 0, mode_names},
    {"device", "TPMPI_DEVICE", "cpu", NULL, "compute device of every rank",
     CONFIG_GROUP_GENERAL, CONFIG_TYPE_CHOICE, OFF(device), SZ(device), 0, 0, 0, 0, 0,
     device_names},
    {"cuda-matmul", "TPMPI_CUDA_MATMUL", "auto", NULL,
     "CUDA matmul inputs (fp32 accumulation always): fp32, tf32, bf16; auto = bf16 with "
     "--precision=bf16, else tf32",
     CONFIG_GROUP_GENERAL, CONFIG_TYPE_CHOICE, OFF(cuda_matmul), SZ(cuda_matmul), 0, 0, 0, 0, 0,
     cuda_matmul_names},
    {"threads", "TPMPI_THREADS", "0", "N",
     "OpenMP/BLAS threads per rank (0 = OpenMP default); more than the CPU affinity mask holds "
     "is warned about",
     CONFIG_GROUP_GENERAL, CONFIG_TYPE_INT, OFF(threads), 0, 0, 4096, 0, 0, 0, NULL},
    {"help", NULL, NULL, NULL, "print this help and exit",
     CONFIG_GROUP_GENERAL, CONFIG_TYPE_HELP, 0, 0, 0, 0, 0, 0, 0, NULL},
    {"version", NULL, NULL, NULL, "print the version and exit",
     CONFIG_GROUP_GENERAL, CONFIG_TYPE_VERSION, 0, 0, 0, 0, 0, 0, 0, NULL},

    /* model */
    {"arch", "TPMPI_ARCH", "gpt2", NULL,
     "model architecture (each --model preset belongs to one); llama: RMSNorm, RoPE, SwiGLU, "
     "grouped-query attention, trains on --device=cpu (docs/MODEL.md)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_CHOICE, OFF(arch), SZ(arch), 0, 0, 0, 0, 0, arch_names},
    {"model", "TPMPI_MODEL", "tiny", NULL,
     "model preset; gpt2: tiny (L2 C64 NH4 T64 ctx64), small (L4 C256 NH4 T64 ctx256), "
     "gpt2-124m (L12 C768 NH12 T1024 ctx1024), gpt2-350m (L24 C1024 NH16 T1024 ctx1024); llama: "
     "llama-tiny (L2 C64 NH4 NKV2 F160, untied, rope scaling), smollm-135m (L30 C576 NH9 NKV3 "
     "F1536 V49152, tied), qwen2.5-0.5b (L24 C896 NH14 NKV2 F4864 V151936, qkv bias, tied), "
     "llama-3.2-1b (L16 C2048 NH32 NKV8 F8192 V128256, rope scaling, tied, ctx8192)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_CHOICE, OFF(model), SZ(model), 0, 0, 0, 0, 0, model_names},
    {"n-layer", "TPMPI_N_LAYER", "0", "N", "transformer blocks L (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(n_layer), 0, 0, 1024, 0, 0, 0, NULL},
    {"n-head", "TPMPI_N_HEAD", "0", "N", "attention heads NH (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(n_head), 0, 0, 1024, 0, 0, 0, NULL},
    {"n-embd", "TPMPI_N_EMBD", "0", "N", "embedding width C (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(n_embd), 0, 0, 65536, 0, 0, 0, NULL},
    {"seq-len", "TPMPI_SEQ_LEN", "0", "N",
     "training sequence length T, at most --n-ctx (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(seq_len), 0, 0, 65536, 0, 0, 0, NULL},
    {"n-ctx", "TPMPI_N_CTX", "0", "N",
     "context length: rows of the position table (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(n_ctx), 0, 0, 65536, 0, 0, 0, NULL},
    {"vocab-size", "TPMPI_VOCAB_SIZE", "0", "N",
     "vocabulary size V (0 = from the preset, else from the data's tokenizer)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(vocab_size), 0, 0, 16777216, 0, 0, 0, NULL},
    {"n-kv-head", "TPMPI_N_KV_HEAD", "0", "N",
     "llama: key/value heads NKV, dividing --n-head (grouped-query attention; 0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(n_kv_head), 0, 0, 1024, 0, 0, 0, NULL},
    {"intermediate-size", "TPMPI_INTERMEDIATE_SIZE", "0", "N",
     "llama: MLP hidden units F (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(intermediate_size), 0, 0, 1048576, 0, 0, 0, NULL},
    {"rms-eps", "TPMPI_RMS_EPS", "0", "X", "llama: RMSNorm epsilon (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_DOUBLE, OFF(rms_eps), 0, 0, 0, 0.0, 1.0, CONFIG_MAX_EXCL,
     NULL},
    {"rope-theta", "TPMPI_ROPE_THETA", "0", "X", "llama: rotary base theta (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_DOUBLE, OFF(rope_theta), 0, 0, 0, 0.0, 1e12, 0, NULL},
    {"rope-scaling-factor", "TPMPI_ROPE_SCALING_FACTOR", "-1", "X",
     "llama: Llama-3 rope scaling factor (0 = no scaling, -1 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_DOUBLE, OFF(rope_factor), 0, 0, 0, -1.0, 1e6, 0, NULL},
    {"rope-low-freq-factor", "TPMPI_ROPE_LOW_FREQ_FACTOR", "0", "X",
     "llama: rope scaling low_freq_factor (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_DOUBLE, OFF(rope_low_freq_factor), 0, 0, 0, 0.0, 1e6, 0,
     NULL},
    {"rope-high-freq-factor", "TPMPI_ROPE_HIGH_FREQ_FACTOR", "0", "X",
     "llama: rope scaling high_freq_factor (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_DOUBLE, OFF(rope_high_freq_factor), 0, 0, 0, 0.0, 1e6, 0,
     NULL},
    {"rope-orig-ctx", "TPMPI_ROPE_ORIG_CTX", "0", "N",
     "llama: rope scaling original_max_position_embeddings (0 = from --model)",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(rope_orig_ctx), 0, 0, 16777216, 0, 0, 0, NULL},
    {"tie-embeddings", "TPMPI_TIE_EMBEDDINGS", "-1", "0|1",
     "llama: output head tied to the token embedding (1) or its own lm_head (0); -1 = from "
     "--model",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(tie_embeddings), 0, -1, 1, 0, 0, 0, NULL},
    {"qkv-bias", "TPMPI_QKV_BIAS", "-1", "0|1",
     "llama: biases on the q, k and v projections (Qwen2); -1 = from --model",
     CONFIG_GROUP_MODEL, CONFIG_TYPE_INT, OFF(qkv_bias), 0, -1, 1, 0, 0, 0, NULL},

    /* data */
    {"data", "TPMPI_DATA", "", "DIR", "prepared data directory (empty = built-in fortunes corpus)",
     CONFIG_GROUP_DATA, CONFIG_TYPE_STR, OFF(data), SZ(data), 0, 0, 0, 0, 0, NULL},
    {"out", "TPMPI_OUT", "", "DIR",
     "output (prepare: the data directory; train: the run directory; eval: a JSON result file)",
     CONFIG_GROUP_DATA, CONFIG_TYPE_STR, OFF(out), SZ(out), 0, 0, 0, 0, 0, NULL},
    {"input", "TPMPI_INPUT", NULL, "FILE",
     "prepare: input text file; repeatable, extra arguments are inputs too (environment: "
     "colon-separated list)",
     CONFIG_GROUP_DATA, CONFIG_TYPE_INPUT, OFF(input), 0, 0, 0, 0, 0, 0, NULL},
    {"val-fraction", "TPMPI_VAL_FRACTION", "0.05", "X",
     "prepare: share of documents in the validation split (0 <= X < 1)",
     CONFIG_GROUP_DATA, CONFIG_TYPE_DOUBLE, OFF(val_fraction), 0, 0, 0, 0.0, 1.0,
     CONFIG_MAX_EXCL, NULL},

    /* training */
    {"steps", "TPMPI_STEPS", "100", "N", "optimizer steps",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_I64, OFF(steps), 0, 1, I64_MAX, 0, 0, 0, NULL},
    {"batch", "TPMPI_BATCH", "4", "B", "micro-batch size per rank (sequences)",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_INT, OFF(batch), 0, 1, 65536, 0, 0, 0, NULL},
    {"grad-accum", "TPMPI_GRAD_ACCUM", "1", "N", "micro-batches per rank per optimizer step",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_INT, OFF(grad_accum), 0, 1, 65536, 0, 0, 0, NULL},
    {"lr", "TPMPI_LR", "3e-4", "X", "peak learning rate",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_DOUBLE, OFF(lr), 0, 0, 0, 0.0, 10.0, CONFIG_MIN_EXCL,
     NULL},
    {"min-lr", "TPMPI_MIN_LR", "3e-5", "X", "final learning rate of the cosine decay",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_DOUBLE, OFF(min_lr), 0, 0, 0, 0.0, 10.0, 0, NULL},
    {"warmup", "TPMPI_WARMUP", "0", "N", "linear learning-rate warm-up steps",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_I64, OFF(warmup), 0, 0, I64_MAX, 0, 0, 0, NULL},
    {"weight-decay", "TPMPI_WEIGHT_DECAY", "0.1", "X", "AdamW weight decay",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_DOUBLE, OFF(weight_decay), 0, 0, 0, 0.0, 10.0, 0, NULL},
    {"grad-clip", "TPMPI_GRAD_CLIP", "1.0", "X", "global gradient-norm clip (0 = off)",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_DOUBLE, OFF(grad_clip), 0, 0, 0, 0.0, 1e9, 0, NULL},
    {"beta1", "TPMPI_BETA1", "0.9", "X", "AdamW beta1 (0 <= X < 1)",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_DOUBLE, OFF(beta1), 0, 0, 0, 0.0, 1.0, CONFIG_MAX_EXCL,
     NULL},
    {"beta2", "TPMPI_BETA2", "0.95", "X", "AdamW beta2 (0 <= X < 1)",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_DOUBLE, OFF(beta2), 0, 0, 0, 0.0, 1.0, CONFIG_MAX_EXCL,
     NULL},
    {"eps", "TPMPI_EPS", "1e-8", "X", "AdamW epsilon",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_DOUBLE, OFF(eps), 0, 0, 0, 0.0, 1.0, CONFIG_MIN_EXCL,
     NULL},
    {"precision", "TPMPI_PRECISION", "fp32", NULL,
     "working weights: fp32, or bf16 (bf16 copies of the fp32 master weights, gathered in bf16; "
     "gradients and AdamW moments stay fp32)",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_CHOICE, OFF(precision), SZ(precision), 0, 0, 0, 0, 0,
     precision_names},
    {"seed", "TPMPI_SEED", "1337", "N", "random seed (parameter init, data order)",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_U64, OFF(seed), 0, 0, I64_MAX, 0, 0, 0, NULL},
    {"eval-every", "TPMPI_EVAL_EVERY", "0", "N", "validate every N steps (0 = only at the end)",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_I64, OFF(eval_every), 0, 0, I64_MAX, 0, 0, 0, NULL},
    {"eval-batches", "TPMPI_EVAL_BATCHES", "4", "N", "validation global batches per evaluation",
     CONFIG_GROUP_TRAINING, CONFIG_TYPE_INT, OFF(eval_batches), 0, 1, 1000000, 0, 0, 0, NULL},

    /* logging */
    {"log-every", "TPMPI_LOG_EVERY", "10", "N", "print the training loss every N steps",
     CONFIG_GROUP_LOGGING, CONFIG_TYPE_I64, OFF(log_every), 0, 1, I64_MAX, 0, 0, 0, NULL},
    {"metrics", "TPMPI_METRICS", "", "FILE", "JSONL metrics file written by rank 0 (empty = none)",
     CONFIG_GROUP_LOGGING, CONFIG_TYPE_STR, OFF(metrics), SZ(metrics), 0, 0, 0, 0, 0, NULL},
    {"log-level", "TPMPI_LOG_LEVEL", "info", NULL, "verbosity of the stderr log",
     CONFIG_GROUP_LOGGING, CONFIG_TYPE_CHOICE, OFF(log_level), SZ(log_level), 0, 0, 0, 0, 0,
     level_names},
    {"debug-collectives", "TPMPI_DEBUG_COLLECTIVES", "0", NULL,
     "check that every rank issues the same collectives in the same order (slow)",
     CONFIG_GROUP_LOGGING, CONFIG_TYPE_FLAG, OFF(debug_collectives), 0, 0, 1, 0, 0, 0, NULL},

    /* checkpoints */
    {"ckpt-dir", "TPMPI_CKPT_DIR", "", "DIR", "train: write checkpoints into DIR (empty = none)",
     CONFIG_GROUP_CKPT, CONFIG_TYPE_STR, OFF(ckpt_dir), SZ(ckpt_dir), 0, 0, 0, 0, 0, NULL},
    {"ckpt-every", "TPMPI_CKPT_EVERY", "0", "N", "checkpoint every N steps (0 = only at the end)",
     CONFIG_GROUP_CKPT, CONFIG_TYPE_I64, OFF(ckpt_every), 0, 0, I64_MAX, 0, 0, 0, NULL},
    {"keep", "TPMPI_KEEP", "3", "K", "keep the newest K checkpoints",
     CONFIG_GROUP_CKPT, CONFIG_TYPE_INT, OFF(keep), 0, 1, 1000000, 0, 0, 0, NULL},
    {"resume", "TPMPI_RESUME", "0", NULL,
     "resume from the newest complete checkpoint in --ckpt-dir",
     CONFIG_GROUP_CKPT, CONFIG_TYPE_FLAG, OFF(resume), 0, 0, 1, 0, 0, 0, NULL},
    {"overwrite", "TPMPI_OVERWRITE", "0", NULL,
     "start afresh in a --ckpt-dir that holds another run's checkpoints: delete them first "
     "(without it, and without --resume, such a directory is refused)",
     CONFIG_GROUP_CKPT, CONFIG_TYPE_FLAG, OFF(overwrite), 0, 0, 1, 0, 0, 0, NULL},
    {"init-from", "TPMPI_INIT_FROM", "", "FILE",
     "start from the weights of FILE (a checkpoint, llmc:FILE for an llm.c model file, or "
     "hf:DIR for a Hugging Face LLaMA/Qwen2/Mistral directory whose config.json matches the "
     "model options); fresh optimizer",
     CONFIG_GROUP_CKPT, CONFIG_TYPE_STR, OFF(init_from), SZ(init_from), 0, 0, 0, 0, 0, NULL},
    {"ckpt", "TPMPI_CKPT", "", "PATH",
     "serve/export/eval: checkpoint file, or a --ckpt-dir (its latest checkpoint)",
     CONFIG_GROUP_CKPT, CONFIG_TYPE_STR, OFF(ckpt), SZ(ckpt), 0, 0, 0, 0, 0, NULL},
    {"format", "TPMPI_FORMAT", "llmc", NULL,
     "export: output format: llmc (an llm.c model file --out=FILE, GPT-2) or hf (a Hugging Face "
     "directory --out=DIR: config.json + model.safetensors, LLaMA family)",
     CONFIG_GROUP_CKPT, CONFIG_TYPE_CHOICE, OFF(format), SZ(format), 0, 0, 0, 0, 0, format_names},

    /* compression */
    {"grad-compression", "TPMPI_GRAD_COMPRESSION", "none", NULL,
     "gradient reduce-scatter: none (fp32) or 2bit (ternary codes + scales, all-to-all)",
     CONFIG_GROUP_COMPRESS, CONFIG_TYPE_CHOICE, OFF(grad_compression), SZ(grad_compression), 0,
     0, 0, 0, 0, compression_names},
    {"compression-residual", "TPMPI_COMPRESSION_RESIDUAL", "fp32", NULL,
     "error-feedback residual precision (none = unbiased stochastic ternary, no residual)",
     CONFIG_GROUP_COMPRESS, CONFIG_TYPE_CHOICE, OFF(compression_residual),
     SZ(compression_residual), 0, 0, 0, 0, 0, residual_names},
    {"compression-warmup", "TPMPI_COMPRESSION_WARMUP", "0", "K",
     "first K steps use the uncompressed reduce-scatter",
     CONFIG_GROUP_COMPRESS, CONFIG_TYPE_INT, OFF(compression_warmup), 0, 0, INT_MAX, 0, 0, 0,
     NULL},
    {"compression-block", "TPMPI_COMPRESSION_BLOCK", "256", "B",
     "values per scale in the 2-bit codec (multiple of 4)",
     CONFIG_GROUP_COMPRESS, CONFIG_TYPE_INT, OFF(compression_block), 0, 4, 1048576, 0, 0, 0,
     NULL},
    {"compression-freeze-v", "TPMPI_COMPRESSION_FREEZE_V", "0", NULL,
     "freeze AdamW's second moment at the end of the warm-up (1-bit Adam; needs "
     "--compression-warmup >= 1)",
     CONFIG_GROUP_COMPRESS, CONFIG_TYPE_FLAG, OFF(compression_freeze_v), 0, 0, 1, 0, 0, 0, NULL},

    /* serving */
    {"host", "TPMPI_HOST", "127.0.0.1", "ADDR", "serve: listen address",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_STR, OFF(host), SZ(host), 0, 0, 0, 0, 0, NULL},
    {"port", "TPMPI_PORT", "8080", "N", "serve: TCP port",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_INT, OFF(port), 0, 1, 65535, 0, 0, 0, NULL},
    {"api-key", "TPMPI_API_KEY", "", "KEY", "serve: require 'Authorization: Bearer KEY'",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_STR, OFF(api_key), SZ(api_key), 0, 0, 0, 0, 0, NULL},
    {"parallel", "TPMPI_PARALLEL", "4", "S", "serve: sequence slots (continuous batching)",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_INT, OFF(parallel), 0, 1, 4096, 0, 0, 0, NULL},
    {"serve-dtype", "TPMPI_SERVE_DTYPE", "fp32", NULL,
     "serve: matrix weights (QKV, projections, MLP, tied embedding/head) in fp32, bf16 or int8 "
     "(blocks of 32 + fp16 scale), made at load from the fp32 checkpoint; CPU backend",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_CHOICE, OFF(serve_dtype), SZ(serve_dtype), 0, 0, 0, 0, 0,
     serve_dtype_names},
    {"kv-dtype", "TPMPI_KV_DTYPE", "fp32", NULL,
     "serve: KV cache in fp32 or bf16 (half the memory; rounded when written); CPU backend",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_CHOICE, OFF(kv_dtype), SZ(kv_dtype), 0, 0, 0, 0, 0,
     precision_names},
    {"ctx-size", "TPMPI_CTX_SIZE", "0", "N", "serve: KV cache tokens per slot (0 = n_ctx)",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_INT, OFF(ctx_size), 0, 0, 1048576, 0, 0, 0, NULL},
    {"max-tokens", "TPMPI_MAX_TOKENS", "1024", "N", "serve: largest max_tokens a request may ask",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_INT, OFF(max_tokens), 0, 1, 1048576, 0, 0, 0, NULL},
    {"max-queue", "TPMPI_MAX_QUEUE", "64", "N", "serve: waiting requests before 503",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_INT, OFF(max_queue), 0, 0, 1000000, 0, 0, 0, NULL},
    {"max-body-bytes", "TPMPI_MAX_BODY_BYTES", "1048576", "N", "serve: request body limit",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_INT, OFF(max_body_bytes), 0, 64, 1073741824, 0, 0, 0,
     NULL},
    {"chat-template", "TPMPI_CHAT_TEMPLATE", "chatml", "NAME",
     "serve: how /v1/chat/completions renders messages: chatml or llama3",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_CHOICE, OFF(chat_template), SZ(chat_template), 0, 0, 0, 0, 0,
     chat_template_names},
    {"watch", "TPMPI_WATCH", "0", NULL,
     "serve: with --ckpt=DIR, load a newer checkpoint of DIR when one appears and swap it in "
     "(POST /admin/reload: now); a bad one is refused and the old weights kept",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_FLAG, OFF(watch), 0, 0, 1, 0, 0, 0, NULL},
    {"serve-ranks", "TPMPI_SERVE_RANKS", "0", "M",
     "trainserve: the last M ranks serve (tensor parallel), the others train (ZeRO-3); "
     "1 <= M < ranks",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_INT, OFF(serve_ranks), 0, 0, 1048576, 0, 0, 0, NULL},
    {"push-every", "TPMPI_PUSH_EVERY", "0", "S",
     "trainserve: push the trainer's weights to the serving ranks every S steps (0 = only at "
     "the end and on POST /admin/push)",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_I64, OFF(push_every), 0, 0, I64_MAX, 0, 0, 0, NULL},
    {"push-dtype", "TPMPI_PUSH_DTYPE", "fp32", NULL,
     "trainserve: precision of the pushed weights (bf16 halves the bytes; served in fp32)",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_CHOICE, OFF(push_dtype), SZ(push_dtype), 0, 0, 0, 0, 0,
     push_dtype_names},
    {"swap-policy", "TPMPI_SWAP_POLICY", "keep", NULL,
     "trainserve: running sequences at a weight swap keep their KV cache, or recompute it "
     "with the new weights",
     CONFIG_GROUP_SERVE, CONFIG_TYPE_CHOICE, OFF(swap_policy), SZ(swap_policy), 0, 0, 0, 0, 0,
     swap_policy_names},

    /* evaluation */
    {"split", "TPMPI_SPLIT", "val", NULL,
     "eval: the token split of --data whose loss is measured",
     CONFIG_GROUP_EVAL, CONFIG_TYPE_CHOICE, OFF(split), SZ(split), 0, 0, 0, 0, 0, split_names},
    {"eval-tokens", "TPMPI_EVAL_TOKENS", "0", "N",
     "eval: measure ceil(N / seq_len) windows (0 = --eval-batches global batches of the run)",
     CONFIG_GROUP_EVAL, CONFIG_TYPE_I64, OFF(eval_tokens), 0, 0, I64_MAX, 0, 0, 0, NULL},
    {"task", "TPMPI_TASK", "", "FILE",
     "eval: multiple-choice task (JSONL: context, choices, label) instead of the loss",
     CONFIG_GROUP_EVAL, CONFIG_TYPE_STR, OFF(task), SZ(task), 0, 0, 0, 0, 0, NULL},
};
/* clang-format on */

#define N_OPTIONS (sizeof(options) / sizeof(options[0]))

/* ---- value parsing ---------------------------------------------------------------------- */

/* Where a value came from, for error messages: "--steps" or "TPMPI_STEPS". */
typedef struct {
    char text[64];
} config_src_t;

static void config_src_option(const config_opt_t *opt, config_src_t *src)
{
    snprintf(src->text, sizeof(src->text), "--%s", opt->name);
}

static void config_src_env(const config_opt_t *opt, config_src_t *src)
{
    snprintf(src->text, sizeof(src->text), "%s", opt->env);
}

/* Flags, --help and --version take no value on the command line. */
static int config_takes_value(const config_opt_t *opt)
{
    return opt->type != CONFIG_TYPE_FLAG && opt->type != CONFIG_TYPE_HELP &&
           opt->type != CONFIG_TYPE_VERSION;
}

static void *config_field(tpm_config_t *cfg, const config_opt_t *opt)
{
    return (char *)cfg + opt->offset;
}

static const void *config_field_const(const tpm_config_t *cfg, const config_opt_t *opt)
{
    return (const char *)cfg + opt->offset;
}

static tpm_status_t config_parse_ll(const config_opt_t *opt, const char *src, const char *text,
                                    long long *value_p)
{
    char     *end;
    long long v;

    if (text[0] == '\0' || isspace((unsigned char)text[0])) {
        tpm_log_error("%s: '%s' is not an integer", src, text);
        return TPM_ERR_INVALID_ARG;
    }
    errno = 0;
    v     = strtoll(text, &end, 10);
    if (*end != '\0') {
        tpm_log_error("%s: '%s' is not an integer", src, text);
        return TPM_ERR_INVALID_ARG;
    }
    if (errno == ERANGE || v < opt->imin || v > opt->imax) {
        if (opt->imax == I64_MAX) {
            tpm_log_error("%s: '%s' is out of range (must be >= %lld)", src, text, opt->imin);
        } else {
            tpm_log_error("%s: '%s' is out of range (must be between %lld and %lld)", src, text,
                          opt->imin, opt->imax);
        }
        return TPM_ERR_INVALID_ARG;
    }
    *value_p = v;
    return TPM_OK;
}

static tpm_status_t config_parse_double(const config_opt_t *opt, const char *src, const char *text,
                                        double *value_p)
{
    char  *end;
    double v;
    int    below, above;

    if (text[0] == '\0' || isspace((unsigned char)text[0])) {
        tpm_log_error("%s: '%s' is not a number", src, text);
        return TPM_ERR_INVALID_ARG;
    }
    errno = 0;
    v     = strtod(text, &end);
    if (*end != '\0' || !isfinite(v)) {
        tpm_log_error("%s: '%s' is not a number", src, text);
        return TPM_ERR_INVALID_ARG;
    }
    below = (opt->range_flags & CONFIG_MIN_EXCL) ? !(v > opt->dmin) : !(v >= opt->dmin);
    above = (opt->range_flags & CONFIG_MAX_EXCL) ? !(v < opt->dmax) : !(v <= opt->dmax);
    if ((errno == ERANGE && v != 0.0) || below || above) {
        tpm_log_error("%s: '%s' is out of range (must be %s %g and %s %g)", src, text,
                      (opt->range_flags & CONFIG_MIN_EXCL) ? ">" : ">=", opt->dmin,
                      (opt->range_flags & CONFIG_MAX_EXCL) ? "<" : "<=", opt->dmax);
        return TPM_ERR_INVALID_ARG;
    }
    /* ERANGE with a tiny value is an underflow to (sub)normal: keep it */
    *value_p = v;
    return TPM_OK;
}

static tpm_status_t config_parse_choice(const char *const *choices, const char *src,
                                        const char *text, int *index_p)
{
    char   list[256];
    size_t n = 0;

    for (int i = 0; choices[i] != NULL; i++) {
        if (strcmp(text, choices[i]) == 0) {
            *index_p = i;
            return TPM_OK;
        }
    }
    list[0] = '\0';
    for (int i = 0; choices[i] != NULL && n < sizeof(list); i++) {
        n += (size_t)snprintf(list + n, sizeof(list) - n, "%s%s", i ? "|" : "", choices[i]);
    }
    tpm_log_error("%s: '%s' is not one of %s", src, text, list);
    return TPM_ERR_INVALID_ARG;
}

static tpm_status_t config_copy_str(char *dst, size_t size, const char *src, const char *text)
{
    size_t len = strlen(text);

    if (len >= size) {
        tpm_log_error("%s: value is %zu bytes long, the limit is %zu", src, len, size - 1);
        return TPM_ERR_INVALID_ARG;
    }
    memcpy(dst, text, len + 1);
    return TPM_OK;
}

static tpm_status_t config_add_input(tpm_config_t *cfg, const char *src, const char *text)
{
    if (text[0] == '\0') {
        tpm_log_error("%s: empty file name", src);
        return TPM_ERR_INVALID_ARG;
    }
    if (cfg->n_input >= TPM_MAX_INPUTS) {
        tpm_log_error("%s: more than %d input files", src, TPM_MAX_INPUTS);
        return TPM_ERR_INVALID_ARG;
    }
    TPM_CHECK(config_copy_str(cfg->input[cfg->n_input], TPM_PATH_MAX, src, text));
    cfg->n_input++;
    return TPM_OK;
}

/* Environment / default spelling of a flag value. */
static tpm_status_t config_parse_flag(const char *src, const char *text, int *value_p)
{
    static const char *const on[]  = {"1", "yes", "true", "on", NULL};
    static const char *const off[] = {"0", "no", "false", "off", NULL};

    for (int i = 0; on[i] != NULL; i++) {
        if (strcmp(text, on[i]) == 0) {
            *value_p = 1;
            return TPM_OK;
        }
        if (strcmp(text, off[i]) == 0) {
            *value_p = 0;
            return TPM_OK;
        }
    }
    tpm_log_error("%s: '%s' is not a boolean (1|0|yes|no|true|false|on|off)", src, text);
    return TPM_ERR_INVALID_ARG;
}

/* Parse @p text and store it in the field of @p opt. HELP/VERSION are handled by the caller. */
static tpm_status_t config_opt_set(tpm_config_t *cfg, const config_opt_t *opt, const char *src,
                                   const char *text)
{
    void     *field = config_field(cfg, opt);
    long long ll;
    double    d;
    int       idx;

    switch (opt->type) {
    case CONFIG_TYPE_INT:
        TPM_CHECK(config_parse_ll(opt, src, text, &ll));
        *(int *)field = (int)ll;
        return TPM_OK;
    case CONFIG_TYPE_I64:
        TPM_CHECK(config_parse_ll(opt, src, text, &ll));
        *(int64_t *)field = (int64_t)ll;
        return TPM_OK;
    case CONFIG_TYPE_U64:
        TPM_CHECK(config_parse_ll(opt, src, text, &ll));
        *(uint64_t *)field = (uint64_t)ll;
        return TPM_OK;
    case CONFIG_TYPE_DOUBLE:
        TPM_CHECK(config_parse_double(opt, src, text, &d));
        *(double *)field = d;
        return TPM_OK;
    case CONFIG_TYPE_STR: return config_copy_str((char *)field, opt->size, src, text);
    case CONFIG_TYPE_CHOICE:
        TPM_CHECK(config_parse_choice(opt->choices, src, text, &idx));
        return config_copy_str((char *)field, opt->size, src, opt->choices[idx]);
    case CONFIG_TYPE_MODE:
        TPM_CHECK(config_parse_choice(opt->choices, src, text, &idx));
        cfg->mode = (tpm_mode_t)idx;
        return TPM_OK;
    case CONFIG_TYPE_FLAG: return config_parse_flag(src, text, (int *)field);
    case CONFIG_TYPE_INPUT: return config_add_input(cfg, src, text);
    case CONFIG_TYPE_HELP:
    case CONFIG_TYPE_VERSION: break;
    }
    tpm_log_error("%s: option cannot take a value", src);
    return TPM_ERR_INTERNAL;
}

/* ---- defaults, presets, environment -------------------------------------------------------- */

void tpm_config_defaults(tpm_config_t *cfg)
{
    config_src_t src;

    memset(cfg, 0, sizeof(*cfg));
    for (size_t i = 0; i < N_OPTIONS; i++) {
        if (options[i].def == NULL) {
            continue;
        }
        config_src_option(&options[i], &src);
        /* the defaults are part of the program: a malformed one is a bug, not a user error */
        TPM_ASSERT(config_opt_set(cfg, &options[i], src.text, options[i].def) == TPM_OK);
    }
}

tpm_status_t tpm_config_apply_preset(tpm_config_t *cfg)
{
    for (size_t i = 0; i < sizeof(presets) / sizeof(presets[0]); i++) {
        const config_preset_t *p = &presets[i];

        if (strcmp(cfg->model, p->name) != 0) {
            continue;
        }
        if (cfg->n_layer == 0) {
            cfg->n_layer = p->n_layer;
        }
        if (cfg->n_embd == 0) {
            cfg->n_embd = p->n_embd;
        }
        if (cfg->n_head == 0) {
            cfg->n_head = p->n_head;
        }
        if (cfg->seq_len == 0) {
            cfg->seq_len = p->seq_len;
        }
        if (cfg->n_ctx == 0) {
            cfg->n_ctx = p->n_ctx;
        }
        /* training builds the preset's model; the other modes take it from a file, or none */
        if (strcmp(cfg->arch, p->arch) != 0 &&
            (cfg->mode == TPM_MODE_TRAIN || cfg->mode == TPM_MODE_EVAL ||
             cfg->mode == TPM_MODE_TRAINSERVE)) {
            tpm_log_error("--model=%s is a %s preset, but --arch=%s (give --arch=%s, or a %s "
                          "preset: %s)",
                          cfg->model, p->arch, cfg->arch, p->arch, cfg->arch,
                          strcmp(cfg->arch, "llama") == 0
                              ? "llama-tiny, smollm-135m, qwen2.5-0.5b, llama-3.2-1b"
                              : "tiny, small, gpt2-124m, gpt2-350m");
            return TPM_ERR_INVALID_ARG;
        }
        if (strcmp(p->arch, "llama") != 0 || strcmp(cfg->arch, "llama") != 0) {
            return TPM_OK;
        }
        if (cfg->vocab_size == 0) {
            cfg->vocab_size = p->vocab;
        }
        if (cfg->n_kv_head == 0) {
            cfg->n_kv_head = p->n_kv_head;
        }
        if (cfg->intermediate_size == 0) {
            cfg->intermediate_size = p->ffn;
        }
        if (cfg->rms_eps == 0.0) {
            cfg->rms_eps = p->rms_eps;
        }
        if (cfg->rope_theta == 0.0) {
            cfg->rope_theta = p->rope_theta;
        }
        if (cfg->rope_factor < 0.0) {
            cfg->rope_factor = p->rope_factor;
        }
        if (cfg->rope_low_freq_factor == 0.0) {
            cfg->rope_low_freq_factor = p->rope_low;
        }
        if (cfg->rope_high_freq_factor == 0.0) {
            cfg->rope_high_freq_factor = p->rope_high;
        }
        if (cfg->rope_orig_ctx == 0) {
            cfg->rope_orig_ctx = p->rope_orig_ctx;
        }
        if (cfg->tie_embeddings < 0) {
            cfg->tie_embeddings = p->tied;
        }
        if (cfg->qkv_bias < 0) {
            cfg->qkv_bias = p->qkv_bias;
        }
        return TPM_OK;
    }
    tpm_log_error("--model: unknown preset '%s'", cfg->model);
    return TPM_ERR_INVALID_ARG;
}

/*
 * --arch: the LLaMA-only options mean nothing to GPT-2; the CUDA backend has no LLaMA kernels
 * yet, and serving does not split a LLaMA model yet. Say which, before anything runs.
 */
static tpm_status_t config_check_arch(const tpm_config_t *cfg)
{
    if (strcmp(cfg->arch, "llama") != 0) {
        static const char *const only[] = {
            "--n-kv-head",  "--intermediate-size",    "--rms-eps",
            "--rope-theta", "--rope-scaling-factor",  "--rope-low-freq-factor",
            "--rope-high-freq-factor", "--rope-orig-ctx", "--tie-embeddings",
            "--qkv-bias"};
        const int set[] = {cfg->n_kv_head != 0,
                           cfg->intermediate_size != 0,
                           cfg->rms_eps != 0.0,
                           cfg->rope_theta != 0.0,
                           cfg->rope_factor >= 0.0,
                           cfg->rope_low_freq_factor != 0.0,
                           cfg->rope_high_freq_factor != 0.0,
                           cfg->rope_orig_ctx != 0,
                           cfg->tie_embeddings >= 0,
                           cfg->qkv_bias >= 0};

        for (size_t i = 0; i < sizeof(set) / sizeof(set[0]); i++) {
            if (set[i]) {
                tpm_log_error("%s is an --arch=llama option; this run is --arch=%s", only[i],
                              cfg->arch);
                return TPM_ERR_INVALID_ARG;
            }
        }
        return TPM_OK;
    }
    if (cfg->mode == TPM_MODE_PREPARE) {
        return TPM_OK;
    }
    if (cfg->mode == TPM_MODE_TRAINSERVE) {
        tpm_log_error("--mode=trainserve --arch=llama: the live weight push of a LLaMA model is "
                      "not implemented yet (train, then --mode=serve the checkpoint)");
        return TPM_ERR_INVALID_ARG;
    }
    if (strcmp(cfg->device, "cuda") == 0) {
        tpm_log_error("--device=cuda --arch=llama: the CUDA backend has no LLaMA kernels "
                      "(RMSNorm, RoPE, SwiGLU, grouped-query attention) that have run on a GPU "
                      "yet; use --device=cpu");
        return TPM_ERR_INVALID_ARG;
    }
    return TPM_OK;
}

/* TPMPI_INPUT holds a colon-separated list of files. */
static tpm_status_t config_env_inputs(tpm_config_t *cfg, const char *src, const char *value)
{
    char        name[TPM_PATH_MAX];
    const char *p = value;

    while (*p != '\0') {
        const char *colon = strchr(p, ':');
        size_t      len   = colon ? (size_t)(colon - p) : strlen(p);

        if (len >= sizeof(name)) {
            tpm_log_error("%s: file name is %zu bytes long, the limit is %zu", src, len,
                          sizeof(name) - 1);
            return TPM_ERR_INVALID_ARG;
        }
        if (len > 0) {
            memcpy(name, p, len);
            name[len] = '\0';
            TPM_CHECK(config_add_input(cfg, src, name));
        }
        p += len;
        if (*p == ':') {
            p++;
        }
    }
    return TPM_OK;
}

static tpm_status_t config_apply_env(tpm_config_t *cfg)
{
    config_src_t src;

    for (size_t i = 0; i < N_OPTIONS; i++) {
        const config_opt_t *opt = &options[i];
        const char         *value;

        if (opt->env == NULL) {
            continue;
        }
        value = getenv(opt->env);
        if (value == NULL || value[0] == '\0') {
            continue; /* set-but-empty counts as unset */
        }
        config_src_env(opt, &src);
        if (opt->type == CONFIG_TYPE_INPUT) {
            TPM_CHECK(config_env_inputs(cfg, src.text, value));
        } else {
            TPM_CHECK(config_opt_set(cfg, opt, src.text, value));
        }
    }
    return TPM_OK;
}

/* ---- --help -------------------------------------------------------------------------------- */

/* Write @p text word-wrapped from column @p col (the cursor is at column @p at). */
static void config_help_wrap(FILE *out, const char *text, int at, int col)
{
    const char *p = text;

    if (at > col - 2) {
        fputc('\n', out);
        at = 0;
    }
    fprintf(out, "%*s", col - at, "");
    at = col;
    while (*p != '\0') {
        const char *w   = p;
        int         len = 0;

        /* a "[default: X]" or "[env: Y]" note is kept on one line */
        int bracket = (w[0] == '[');

        while (w[len] != '\0' && (w[len] != ' ' || bracket)) {
            if (w[len] == ']') {
                bracket = 0;
            }
            len++;
        }
        if (at > col && at + 1 + len > CONFIG_HELP_WIDTH) {
            fprintf(out, "\n%*s", col, "");
            at = col;
        } else if (at > col) {
            fputc(' ', out);
            at++;
        }
        fwrite(w, 1, (size_t)len, out);
        at += len;
        p = w + len;
        while (*p == ' ') {
            p++;
        }
    }
    fputc('\n', out);
}

static void config_help_option(FILE *out, const config_opt_t *opt)
{
    char        left[128];
    char        text[512];
    char        values[128];
    const char *metavar = opt->metavar;
    size_t      n       = 0;
    int         at;

    if (metavar == NULL && opt->choices != NULL) {
        values[0] = '\0';
        for (int i = 0; opt->choices[i] != NULL && n < sizeof(values); i++) {
            n += (size_t)snprintf(values + n, sizeof(values) - n, "%s%s", i ? "|" : "",
                                  opt->choices[i]);
        }
        metavar = values;
    }
    if (config_takes_value(opt)) {
        at = snprintf(left, sizeof(left), "  --%s=%s", opt->name, metavar ? metavar : "VALUE");
    } else {
        at = snprintf(left, sizeof(left), "  --%s", opt->name);
    }
    fputs(left, out);

    n = (size_t)snprintf(text, sizeof(text), "%s", opt->help);
    if (opt->def != NULL && opt->def[0] != '\0' && opt->type != CONFIG_TYPE_FLAG &&
        n < sizeof(text)) {
        n += (size_t)snprintf(text + n, sizeof(text) - n, " [default: %s]", opt->def);
    }
    if (opt->env != NULL && n < sizeof(text)) {
        snprintf(text + n, sizeof(text) - n, " [env: %s]", opt->env);
    }
    config_help_wrap(out, text, at < 0 ? 0 : at, CONFIG_HELP_COL);
}

static void config_print_help(FILE *out)
{
    fprintf(out, "Usage: tpmpi [--name=value ...] [FILE ...]\n"
                 "       mpirun -np N tpmpi --mode=train [--name=value ...]\n"
                 "\n"
                 "Trains GPT-2 style models across MPI ranks (ZeRO-3). Every option can also be\n"
                 "set through its environment variable; the command line wins over the\n"
                 "environment, which wins over the --model preset and the built-in defaults.\n");
    for (int g = 0; g < CONFIG_GROUP_COUNT; g++) {
        fprintf(out, "\n%s:\n", group_titles[g]);
        for (size_t i = 0; i < N_OPTIONS; i++) {
            if ((int)options[i].group == g) {
                config_help_option(out, &options[i]);
            }
        }
    }
}

/* ---- command line -------------------------------------------------------------------------- */

/* The argv element that held the option getopt_long just returned (before the value). */
static const char *config_current_arg(char **argv)
{
    if (optarg != NULL && optind >= 2 && optarg == argv[optind - 1]) {
        return argv[optind - 2]; /* "--name value" */
    }
    return argv[optind - 1]; /* "--name" or "--name=value" */
}

/* Print "unknown option --foo" for an argv element (value after '=' left out). */
static void config_log_unknown(const char *arg)
{
    const char *eq  = strchr(arg, '=');
    int         len = eq ? (int)(eq - arg) : (int)strlen(arg);

    tpm_log_error("unknown option %.*s (see --help)", len, arg);
}

tpm_status_t tpm_config_parse(tpm_config_t *cfg, int argc, char **argv, FILE *out, int *exit_now_p)
{
    struct option longopts[N_OPTIONS + 1];
    config_src_t  src;
    int           argv_inputs = 0;
    int           c;

    if (exit_now_p != NULL) {
        *exit_now_p = 0;
    }
    if (out == NULL) {
        out = stdout;
    }
    tpm_config_defaults(cfg);
    TPM_CHECK(config_apply_env(cfg));

    for (size_t i = 0; i < N_OPTIONS; i++) {
        const config_opt_t *opt = &options[i];

        longopts[i].name    = opt->name;
        longopts[i].has_arg = config_takes_value(opt) ? required_argument : no_argument;
        longopts[i].flag    = NULL;
        longopts[i].val     = CONFIG_VAL_BASE + (int)i;
    }
    memset(&longopts[N_OPTIONS], 0, sizeof(longopts[N_OPTIONS]));

    optind = 0; /* glibc: full re-initialisation, so the parser can be called again */
    opterr = 0;
    /* leading ':' makes a missing value return ':' instead of '?' */
    while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
        const config_opt_t *opt;
        const char         *arg;
        size_t              i;

        if (c == '?') {
            if (optopt >= CONFIG_VAL_BASE && optopt < CONFIG_VAL_BASE + (int)N_OPTIONS) {
                tpm_log_error("--%s takes no value", options[optopt - CONFIG_VAL_BASE].name);
            } else if (optopt != 0) {
                tpm_log_error("unknown option -%c (options are --name=value; see --help)", optopt);
            } else {
                config_log_unknown(argv[optind - 1]);
            }
            return TPM_ERR_INVALID_ARG;
        }
        if (c == ':') {
            if (optopt >= CONFIG_VAL_BASE && optopt < CONFIG_VAL_BASE + (int)N_OPTIONS) {
                tpm_log_error("--%s: missing value", options[optopt - CONFIG_VAL_BASE].name);
            } else {
                tpm_log_error("%s: missing value", argv[optind - 1]);
            }
            return TPM_ERR_INVALID_ARG;
        }
        if (c < CONFIG_VAL_BASE || c >= CONFIG_VAL_BASE + (int)N_OPTIONS) {
            tpm_log_error("unexpected getopt_long result %d", c);
            return TPM_ERR_INTERNAL;
        }
        i   = (size_t)(c - CONFIG_VAL_BASE);
        opt = &options[i];

        /* getopt_long accepts unambiguous prefixes (--ste for --steps): refuse them, so that
         * a command line means the same thing when options are added later */
        arg = config_current_arg(argv);
        if (strncmp(arg, "--", 2) != 0 || strncmp(arg + 2, opt->name, strlen(opt->name)) != 0 ||
            (arg[2 + strlen(opt->name)] != '\0' && arg[2 + strlen(opt->name)] != '=')) {
            const char *eq  = strchr(arg, '=');
            int         len = eq ? (int)(eq - arg) : (int)strlen(arg);

            tpm_log_error("unknown option %.*s (did you mean --%s?)", len, arg, opt->name);
            return TPM_ERR_INVALID_ARG;
        }

        switch (opt->type) {
        case CONFIG_TYPE_HELP:
            config_print_help(out);
            if (exit_now_p != NULL) {
                *exit_now_p = 1;
            }
            return TPM_OK;
        case CONFIG_TYPE_VERSION:
            fprintf(out, "tpmpi %s\n", PACKAGE_VERSION);
            if (exit_now_p != NULL) {
                *exit_now_p = 1;
            }
            return TPM_OK;
        case CONFIG_TYPE_FLAG: *(int *)config_field(cfg, opt) = 1; break;
        case CONFIG_TYPE_INPUT:
            if (!argv_inputs) {
                cfg->n_input = 0; /* the command line replaces TPMPI_INPUT */
                argv_inputs  = 1;
            }
            /* fall through */
        default:
            config_src_option(opt, &src);
            TPM_CHECK(config_opt_set(cfg, opt, src.text, optarg));
            break;
        }
    }

    /* remaining arguments: input files of --mode=prepare */
    for (int i = optind; i < argc; i++) {
        if (cfg->mode != TPM_MODE_PREPARE) {
            tpm_log_error("unexpected argument '%s' (input files are for --mode=prepare)", argv[i]);
            return TPM_ERR_INVALID_ARG;
        }
        if (!argv_inputs) {
            cfg->n_input = 0;
            argv_inputs  = 1;
        }
        TPM_CHECK(config_add_input(cfg, "--input", argv[i]));
    }

    /* the LLaMA-only options are checked as given, before a LLaMA preset fills them */
    TPM_CHECK(config_check_arch(cfg));
    return tpm_config_apply_preset(cfg);
}

/* ---- JSON dump and hash -------------------------------------------------------------------- */

static void config_json_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
        switch (*p) {
        case '"': fputs("\\\"", f); break;
        case '\\': fputs("\\\\", f); break;
        case '\n': fputs("\\n", f); break;
        case '\r': fputs("\\r", f); break;
        case '\t': fputs("\\t", f); break;
        default:
            if (*p < 0x20) {
                fprintf(f, "\\u%04x", *p);
            } else {
                fputc(*p, f);
            }
        }
    }
    fputc('"', f);
}

/* Shortest %g spelling that reads back as the same double (values are finite). */
static void config_json_double(FILE *f, double v)
{
    char buf[40];

    for (int prec = 15; prec <= 17; prec++) {
        snprintf(buf, sizeof(buf), "%.*g", prec, v);
        if (strtod(buf, NULL) == v) {
            break;
        }
    }
    fputs(buf, f);
}

/* JSON key: the option name with '-' as '_' (the tpm_config_t field name). */
static void config_json_key(FILE *f, const char *name)
{
    fputc('"', f);
    for (const char *p = name; *p != '\0'; p++) {
        fputc(*p == '-' ? '_' : *p, f);
    }
    fputs("\":", f);
}

void tpm_config_dump_json(const tpm_config_t *cfg, FILE *f)
{
    fputs("{\"version\":", f);
    config_json_str(f, PACKAGE_VERSION);
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const config_opt_t *opt   = &options[i];
        const void         *field = config_field_const(cfg, opt);

        if (opt->type == CONFIG_TYPE_HELP || opt->type == CONFIG_TYPE_VERSION) {
            continue;
        }
        fputc(',', f);
        config_json_key(f, opt->name);
        switch (opt->type) {
        case CONFIG_TYPE_INT: fprintf(f, "%d", *(const int *)field); break;
        case CONFIG_TYPE_I64: fprintf(f, "%" PRId64, *(const int64_t *)field); break;
        case CONFIG_TYPE_U64: fprintf(f, "%" PRIu64, *(const uint64_t *)field); break;
        case CONFIG_TYPE_DOUBLE: config_json_double(f, *(const double *)field); break;
        case CONFIG_TYPE_STR:
        case CONFIG_TYPE_CHOICE:
            /* a secret: the dump says whether it is set, never what it is */
            if (field == (const void *)cfg->api_key && cfg->api_key[0] != '\0') {
                config_json_str(f, "<redacted>");
            } else {
                config_json_str(f, (const char *)field);
            }
            break;
        case CONFIG_TYPE_MODE: config_json_str(f, tpm_mode_name(cfg->mode)); break;
        case CONFIG_TYPE_FLAG: fputs(*(const int *)field ? "true" : "false", f); break;
        case CONFIG_TYPE_INPUT:
            fputc('[', f);
            for (int k = 0; k < cfg->n_input; k++) {
                if (k > 0) {
                    fputc(',', f);
                }
                config_json_str(f, cfg->input[k]);
            }
            fputc(']', f);
            break;
        case CONFIG_TYPE_HELP:
        case CONFIG_TYPE_VERSION: break;
        }
    }
    fputc('}', f);
}

/* FNV-1a, 64 bit */
static uint64_t config_hash_bytes(uint64_t h, const void *data, size_t n)
{
    const unsigned char *p = data;

    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* strings are hashed with their terminating NUL, so "ab","c" differs from "a","bc" */
static uint64_t config_hash_str(uint64_t h, const char *s)
{
    return config_hash_bytes(h, s, strlen(s) + 1);
}

uint64_t tpm_config_hash(const tpm_config_t *cfg)
{
    uint64_t h = 0xcbf29ce484222325ULL;

    h = config_hash_str(h, PACKAGE_VERSION);
    for (size_t i = 0; i < N_OPTIONS; i++) {
        const config_opt_t *opt   = &options[i];
        const void         *field = config_field_const(cfg, opt);
        int32_t             mode;

        h = config_hash_str(h, opt->name);
        switch (opt->type) {
        case CONFIG_TYPE_INT:
        case CONFIG_TYPE_FLAG: h = config_hash_bytes(h, field, sizeof(int)); break;
        case CONFIG_TYPE_I64: h = config_hash_bytes(h, field, sizeof(int64_t)); break;
        case CONFIG_TYPE_U64: h = config_hash_bytes(h, field, sizeof(uint64_t)); break;
        case CONFIG_TYPE_DOUBLE: h = config_hash_bytes(h, field, sizeof(double)); break;
        case CONFIG_TYPE_STR:
        case CONFIG_TYPE_CHOICE: h = config_hash_str(h, (const char *)field); break;
        case CONFIG_TYPE_MODE:
            mode = (int32_t)cfg->mode;
            h    = config_hash_bytes(h, &mode, sizeof(mode));
            break;
        case CONFIG_TYPE_INPUT:
            h = config_hash_bytes(h, &cfg->n_input, sizeof(cfg->n_input));
            for (int k = 0; k < cfg->n_input; k++) {
                h = config_hash_str(h, cfg->input[k]);
            }
            break;
        case CONFIG_TYPE_HELP:
        case CONFIG_TYPE_VERSION: break;
        }
    }
    return h;
}

const char *tpm_mode_name(tpm_mode_t mode)
{
    if ((int)mode >= 0 && (size_t)mode < sizeof(mode_names) / sizeof(mode_names[0]) - 1) {
        return mode_names[mode];
    }
    return "unknown";
}
