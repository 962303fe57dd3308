/* SPDX-License-Identifier: MIT */
/*
 * test_config.c: unit tests of src/cli/config.c: built-in defaults, --model presets,
 * precedence (default < preset < TPMPI_* environment < command line), strict rejection of
 * bad input with messages that name the option, --help/--version, the JSON dump (read back
 * with jansson) and the configuration hash. Each Criterion test runs in its own process, so
 * setenv() does not leak between tests.
 */
#ifdef HAVE_CONFIG_H
#include <config.h> /* PACKAGE_VERSION */
#endif

#include "cli/config.h"

#include <criterion/criterion.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef PACKAGE_VERSION
#define PACKAGE_VERSION "unknown"
#endif

#define MAX_ARGS 32

/* Every option of the table; --help must list each one. */
static const char *const all_options[] = {
    "mode",         "device",       "threads",
    "help",         "version",      "model",
    "n-layer",      "n-head",       "n-embd",
    "seq-len",      "vocab-size",   "data",
    "out",          "input",        "val-fraction",
    "steps",        "batch",        "grad-accum",
    "lr",           "min-lr",       "warmup",
    "weight-decay", "grad-clip",    "beta1",
    "beta2",        "eps",          "seed",
    "eval-every",   "eval-batches", "log-every",
    "metrics",      "log-level",    "debug-collectives",
};

/* Split @p line on spaces into argv (argv[0] = "tpmpi"); @p buf must outlive argv. */
static int split_args(char *buf, size_t size, const char *line, char **argv)
{
    int argc = 0;

    snprintf(buf, size, "%s", line);
    argv[argc++] = "tpmpi";
    for (char *tok = strtok(buf, " "); tok != NULL && argc < MAX_ARGS - 1;
         tok       = strtok(NULL, " ")) {
        argv[argc++] = tok;
    }
    argv[argc] = NULL;
    return argc;
}

/* Parse a space-separated command line; stderr (the log) goes to @p err if not NULL. */
static tpm_status_t parse_line(tpm_config_t *cfg, const char *line, char *err, size_t err_size)
{
    char         buf[4096];
    char        *argv[MAX_ARGS];
    int          argc     = split_args(buf, sizeof(buf), line, argv);
    int          exit_now = 0;
    int          saved    = -1;
    FILE        *tmp      = NULL;
    tpm_status_t status;

    if (err != NULL) {
        tmp = tmpfile();
        cr_assert_not_null(tmp);
        fflush(stderr);
        saved = dup(STDERR_FILENO);
        dup2(fileno(tmp), STDERR_FILENO);
    }
    status = tpm_config_parse(cfg, argc, argv, stdout, &exit_now);
    if (err != NULL) {
        size_t n;

        fflush(stderr);
        dup2(saved, STDERR_FILENO);
        close(saved);
        rewind(tmp);
        n      = fread(err, 1, err_size - 1, tmp);
        err[n] = '\0';
        fclose(tmp);
    }
    cr_assert_eq(exit_now, 0, "'%s' asked to exit", line);
    return status;
}

static void parse_ok(tpm_config_t *cfg, const char *line)
{
    char err[4096];

    cr_assert_eq(parse_line(cfg, line, err, sizeof(err)), TPM_OK, "'%s' was rejected: %s", line,
                 err);
}

/* Parse into a string with open_memstream-backed FILE for --help / --version. */
static char *parse_output(const char *line, int *exit_now_p, tpm_status_t *status_p)
{
    char         buf[1024];
    char        *argv[MAX_ARGS];
    int          argc = split_args(buf, sizeof(buf), line, argv);
    char        *text = NULL;
    size_t       len  = 0;
    FILE        *out  = open_memstream(&text, &len);
    tpm_config_t cfg;

    cr_assert_not_null(out);
    *status_p = tpm_config_parse(&cfg, argc, argv, out, exit_now_p);
    fclose(out);
    return text;
}

static char *dump_string(const tpm_config_t *cfg)
{
    char  *text = NULL;
    size_t len  = 0;
    FILE  *out  = open_memstream(&text, &len);

    cr_assert_not_null(out);
    tpm_config_dump_json(cfg, out);
    fclose(out);
    return text;
}

TestSuite(config, .timeout = 10);

Test(config, defaults_match_the_documented_values)
{
    tpm_config_t cfg;

    tpm_config_defaults(&cfg);
    cr_expect_eq(cfg.mode, TPM_MODE_TRAIN);
    cr_expect_str_eq(cfg.arch, "gpt2");
    cr_expect_str_eq(cfg.model, "tiny");
    cr_expect_eq(cfg.n_layer, 0);
    cr_expect_eq(cfg.n_head, 0);
    cr_expect_eq(cfg.n_embd, 0);
    cr_expect_eq(cfg.seq_len, 0);
    cr_expect_eq(cfg.vocab_size, 0);
    cr_expect_str_eq(cfg.data, "");
    cr_expect_str_eq(cfg.out, "");
    cr_expect_eq(cfg.n_input, 0);
    cr_expect_eq(cfg.val_fraction, 0.05);
    cr_expect_eq(cfg.steps, 100);
    cr_expect_eq(cfg.batch, 4);
    cr_expect_eq(cfg.grad_accum, 1);
    cr_expect_eq(cfg.lr, 3e-4);
    cr_expect_eq(cfg.min_lr, 3e-5);
    cr_expect_eq(cfg.warmup, 0);
    cr_expect_eq(cfg.weight_decay, 0.1);
    cr_expect_eq(cfg.grad_clip, 1.0);
    cr_expect_eq(cfg.beta1, 0.9);
    cr_expect_eq(cfg.beta2, 0.95);
    cr_expect_eq(cfg.eps, 1e-8);
    cr_expect_eq(cfg.seed, 1337);
    cr_expect_eq(cfg.threads, 0);
    cr_expect_eq(cfg.eval_every, 0);
    cr_expect_eq(cfg.eval_batches, 4);
    cr_expect_eq(cfg.log_every, 10);
    cr_expect_str_eq(cfg.metrics, "");
    cr_expect_str_eq(cfg.device, "cpu");
    cr_expect_eq(cfg.debug_collectives, 0);
    cr_expect_str_eq(cfg.log_level, "info");
}

Test(config, empty_command_line_gives_the_tiny_preset)
{
    tpm_config_t cfg;

    parse_ok(&cfg, "");
    cr_expect_eq(cfg.mode, TPM_MODE_TRAIN);
    cr_expect_eq(cfg.n_layer, 2);
    cr_expect_eq(cfg.n_embd, 64);
    cr_expect_eq(cfg.n_head, 4);
    cr_expect_eq(cfg.seq_len, 64);
    cr_expect_eq(cfg.vocab_size, 0);
}

Test(config, every_preset_sets_its_shape)
{
    static const struct {
        const char *line;
        int         n_layer, n_embd, n_head, seq_len;
    } cases[] = {
        {"--model=tiny", 2, 64, 4, 64},
        {"--model=small", 4, 256, 4, 64},
        {"--model=gpt2-124m", 12, 768, 12, 1024},
        {"--model=gpt2-350m", 24, 1024, 16, 1024},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tpm_config_t cfg;

        parse_ok(&cfg, cases[i].line);
        cr_expect_eq(cfg.n_layer, cases[i].n_layer, "%s", cases[i].line);
        cr_expect_eq(cfg.n_embd, cases[i].n_embd, "%s", cases[i].line);
        cr_expect_eq(cfg.n_head, cases[i].n_head, "%s", cases[i].line);
        cr_expect_eq(cfg.seq_len, cases[i].seq_len, "%s", cases[i].line);
    }
}

Test(config, explicit_shape_overrides_the_preset)
{
    tpm_config_t cfg;

    parse_ok(&cfg, "--n-layer=3 --model=gpt2-124m --seq-len=256");
    cr_expect_eq(cfg.n_layer, 3);
    cr_expect_eq(cfg.n_embd, 768);
    cr_expect_eq(cfg.n_head, 12);
    cr_expect_eq(cfg.seq_len, 256);
}

Test(config, apply_preset_only_fills_zero_fields_and_rejects_unknown_models)
{
    tpm_config_t cfg;

    tpm_config_defaults(&cfg);
    snprintf(cfg.model, sizeof(cfg.model), "small");
    cfg.n_head = 8;
    cr_assert_eq(tpm_config_apply_preset(&cfg), TPM_OK);
    cr_expect_eq(cfg.n_layer, 4);
    cr_expect_eq(cfg.n_head, 8);
    snprintf(cfg.model, sizeof(cfg.model), "huge");
    cr_expect_eq(tpm_config_apply_preset(&cfg), TPM_ERR_INVALID_ARG);
}

Test(config, values_of_every_type_are_parsed)
{
    tpm_config_t cfg;

    parse_ok(&cfg, "--mode=prepare --device=cuda --threads=3 --vocab-size=50257 --data=d "
                   "--out=o --input=a.txt --input=b.txt --val-fraction=0 --steps=12345678901 "
                   "--batch=65536 --grad-accum=8 --lr=1e-3 --min-lr=0 --warmup=10 "
                   "--weight-decay=0 --grad-clip=0 --beta1=0 --beta2=0.999 --eps=1e-6 "
                   "--seed=9223372036854775807 --eval-every=5 --eval-batches=2 --log-every=1 "
                   "--metrics=m.jsonl --log-level=debug --debug-collectives");
    cr_expect_eq(cfg.mode, TPM_MODE_PREPARE);
    cr_expect_str_eq(cfg.device, "cuda");
    cr_expect_eq(cfg.threads, 3);
    cr_expect_eq(cfg.vocab_size, 50257);
    cr_expect_str_eq(cfg.data, "d");
    cr_expect_str_eq(cfg.out, "o");
    cr_expect_eq(cfg.n_input, 2);
    cr_expect_str_eq(cfg.input[0], "a.txt");
    cr_expect_str_eq(cfg.input[1], "b.txt");
    cr_expect_eq(cfg.val_fraction, 0.0);
    cr_expect_eq(cfg.steps, 12345678901LL);
    cr_expect_eq(cfg.batch, 65536);
    cr_expect_eq(cfg.grad_accum, 8);
    cr_expect_eq(cfg.lr, 1e-3);
    cr_expect_eq(cfg.min_lr, 0.0);
    cr_expect_eq(cfg.warmup, 10);
    cr_expect_eq(cfg.weight_decay, 0.0);
    cr_expect_eq(cfg.grad_clip, 0.0);
    cr_expect_eq(cfg.beta1, 0.0);
    cr_expect_eq(cfg.beta2, 0.999);
    cr_expect_eq(cfg.eps, 1e-6);
    cr_expect_eq(cfg.seed, 9223372036854775807ULL);
    cr_expect_eq(cfg.eval_every, 5);
    cr_expect_eq(cfg.eval_batches, 2);
    cr_expect_eq(cfg.log_every, 1);
    cr_expect_str_eq(cfg.metrics, "m.jsonl");
    cr_expect_str_eq(cfg.log_level, "debug");
    cr_expect_eq(cfg.debug_collectives, 1);
}

Test(config, separate_value_form_is_accepted)
{
    tpm_config_t cfg;

    parse_ok(&cfg, "--steps 7 --lr 0.5");
    cr_expect_eq(cfg.steps, 7);
    cr_expect_eq(cfg.lr, 0.5);
}

Test(config, parser_can_be_called_again)
{
    tpm_config_t cfg;

    parse_ok(&cfg, "--steps=5");
    cr_expect_eq(cfg.steps, 5);
    parse_ok(&cfg, "--batch=2");
    cr_expect_eq(cfg.steps, 100, "a second parse starts again from the defaults");
    cr_expect_eq(cfg.batch, 2);
}

Test(config, environment_overrides_defaults_and_preset)
{
    tpm_config_t cfg;

    setenv("TPMPI_STEPS", "7", 1);
    setenv("TPMPI_MODEL", "small", 1);
    setenv("TPMPI_N_HEAD", "8", 1);
    setenv("TPMPI_LR", "1e-2", 1);
    setenv("TPMPI_DEBUG_COLLECTIVES", "yes", 1);
    setenv("TPMPI_BATCH", "", 1); /* set but empty: ignored */
    parse_ok(&cfg, "");
    cr_expect_eq(cfg.steps, 7);
    cr_expect_str_eq(cfg.model, "small");
    cr_expect_eq(cfg.n_layer, 4, "preset fills what the environment left at 0");
    cr_expect_eq(cfg.n_head, 8, "environment wins over the preset");
    cr_expect_eq(cfg.lr, 1e-2);
    cr_expect_eq(cfg.debug_collectives, 1);
    cr_expect_eq(cfg.batch, 4);
}

Test(config, command_line_overrides_environment)
{
    tpm_config_t cfg;

    setenv("TPMPI_STEPS", "7", 1);
    setenv("TPMPI_MODEL", "small", 1);
    setenv("TPMPI_LOG_LEVEL", "debug", 1);
    parse_ok(&cfg, "--steps=9 --model=gpt2-124m");
    cr_expect_eq(cfg.steps, 9);
    cr_expect_str_eq(cfg.model, "gpt2-124m");
    cr_expect_eq(cfg.n_layer, 12);
    cr_expect_str_eq(cfg.log_level, "debug");
}

Test(config, input_list_from_environment_is_replaced_by_the_command_line)
{
    tpm_config_t cfg;

    setenv("TPMPI_INPUT", "a.txt:b.txt::c.txt", 1);
    parse_ok(&cfg, "--mode=prepare");
    cr_assert_eq(cfg.n_input, 3);
    cr_expect_str_eq(cfg.input[0], "a.txt");
    cr_expect_str_eq(cfg.input[2], "c.txt");

    parse_ok(&cfg, "--mode=prepare --input=x.txt y.txt");
    cr_assert_eq(cfg.n_input, 2);
    cr_expect_str_eq(cfg.input[0], "x.txt");
    cr_expect_str_eq(cfg.input[1], "y.txt");
}

Test(config, positional_arguments_are_prepare_inputs)
{
    tpm_config_t cfg;
    char         err[1024];

    parse_ok(&cfg, "one.txt --mode=prepare two.txt");
    cr_assert_eq(cfg.n_input, 2);
    cr_expect_str_eq(cfg.input[0], "one.txt");
    cr_expect_str_eq(cfg.input[1], "two.txt");

    cr_expect_eq(parse_line(&cfg, "--mode=train stray.txt", err, sizeof(err)), TPM_ERR_INVALID_ARG);
    cr_expect(strstr(err, "unexpected argument 'stray.txt'") != NULL, "got: %s", err);
}

Test(config, too_many_inputs_are_rejected)
{
    char        *argv[TPM_MAX_INPUTS + 4];
    char         names[TPM_MAX_INPUTS + 1][16];
    int          argc = 0, exit_now = 0;
    tpm_config_t cfg;

    argv[argc++] = "tpmpi";
    argv[argc++] = "--mode=prepare";
    for (int i = 0; i <= TPM_MAX_INPUTS; i++) {
        snprintf(names[i], sizeof(names[i]), "f%d.txt", i);
        argv[argc++] = names[i];
    }
    argv[argc] = NULL;
    cr_expect_eq(tpm_config_parse(&cfg, argc, argv, stdout, &exit_now), TPM_ERR_INVALID_ARG);
    /* exactly the limit is fine */
    argc--;
    argv[argc] = NULL;
    cr_expect_eq(tpm_config_parse(&cfg, argc, argv, stdout, &exit_now), TPM_OK);
    cr_expect_eq(cfg.n_input, TPM_MAX_INPUTS);
}

Test(config, bad_input_is_rejected_with_a_message_naming_the_option)
{
    static const struct {
        const char *line;
        const char *message;
    } cases[] = {
        {"--steps=abc", "--steps: 'abc' is not an integer"},
        {"--steps=5x", "--steps: '5x' is not an integer"},
        {"--steps=0x10", "--steps: '0x10' is not an integer"},
        {"--steps=0", "--steps: '0' is out of range"},
        {"--steps=-3", "--steps: '-3' is out of range"},
        {"--steps=99999999999999999999", "--steps: '99999999999999999999' is out of range"},
        {"--batch=0", "--batch: '0' is out of range"},
        {"--batch=65537", "--batch: '65537' is out of range"},
        {"--n-layer=-1", "--n-layer: '-1' is out of range"},
        {"--threads=1.5", "--threads: '1.5' is not an integer"},
        {"--seed=-1", "--seed: '-1' is out of range"},
        {"--lr=0", "--lr: '0' is out of range"},
        {"--lr=-1e-3", "--lr: '-1e-3' is out of range"},
        {"--lr=fast", "--lr: 'fast' is not a number"},
        {"--lr=nan", "--lr: 'nan' is not a number"},
        {"--lr=inf", "--lr: 'inf' is not a number"},
        {"--lr=1e-3x", "--lr: '1e-3x' is not a number"},
        {"--beta1=1", "--beta1: '1' is out of range"},
        {"--beta2=-0.1", "--beta2: '-0.1' is out of range"},
        {"--eps=0", "--eps: '0' is out of range"},
        {"--val-fraction=1", "--val-fraction: '1' is out of range"},
        {"--grad-clip=-1", "--grad-clip: '-1' is out of range"},
        {"--mode=bogus", "--mode: 'bogus' is not one of train|prepare|serve|export|eval"},
        {"--model=huge", "--model: 'huge' is not one of tiny|small|gpt2-124m|gpt2-350m"},
        {"--device=tpu", "--device: 'tpu' is not one of cpu|cuda"},
        {"--arch=bert", "--arch: 'bert' is not one of gpt2|llama"},
        {"--arch=llama", "--model=tiny is a gpt2 preset, but --arch=llama"},
        {"--model=llama-tiny", "--model=llama-tiny is a llama preset, but --arch=gpt2"},
        {"--n-kv-head=2", "--n-kv-head is an --arch=llama option; this run is --arch=gpt2"},
        {"--model=qwen2.5-0.5b --qkv-bias=0", "--qkv-bias is an --arch=llama option"},
        {"--arch=llama --device=cuda", "--device=cuda --arch=llama: the CUDA backend has no LLaMA"},
        {"--log-level=loud", "--log-level: 'loud' is not one of error|warn|info|debug"},
        {"--foo", "unknown option --foo"},
        {"--foo=3", "unknown option --foo"},
        {"--ste=5", "unknown option --ste"},
        {"--s=5", "unknown option --s"},
        {"-s", "unknown option -s"},
        {"--steps", "--steps: missing value"},
        {"--debug-collectives=1", "--debug-collectives takes no value"},
        {"--help=1", "--help takes no value"},
        {"--steps=", "--steps: '' is not an integer"},
    };

    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        tpm_config_t cfg;
        char         err[2048];

        cr_expect_eq(parse_line(&cfg, cases[i].line, err, sizeof(err)), TPM_ERR_INVALID_ARG,
                     "'%s' was accepted", cases[i].line);
        cr_expect(strstr(err, cases[i].message) != NULL, "'%s': expected '%s', got '%s'",
                  cases[i].line, cases[i].message, err);
        cr_expect(strstr(err, "error: ") != NULL, "'%s': not logged as an error: %s", cases[i].line,
                  err);
    }
}

Test(config, arch_llama_trains_a_llama_preset_with_its_configuration)
{
    tpm_config_t cfg;
    char         err[2048];

    cr_expect_eq(parse_line(&cfg, "--mode=prepare --arch=llama", err, sizeof(err)), TPM_OK, "%s",
                 err);
    cr_expect_str_eq(cfg.arch, "llama");
    /* export and serve take the model from the checkpoint: the preset does not matter */
    cr_expect_eq(parse_line(&cfg, "--mode=export --arch=llama", err, sizeof(err)), TPM_OK, "%s",
                 err);
    cr_expect_eq(parse_line(&cfg, "--arch=gpt2", err, sizeof(err)), TPM_OK, "%s", err);
    cr_expect_eq(cfg.n_kv_head, 0, "gpt2 presets leave the LLaMA fields unset");

    cr_assert_eq(parse_line(&cfg, "--arch=llama --model=llama-tiny", err, sizeof(err)), TPM_OK,
                 "%s", err);
    cr_expect_eq(cfg.n_layer, 2);
    cr_expect_eq(cfg.n_head, 4);
    cr_expect_eq(cfg.n_kv_head, 2);
    cr_expect_eq(cfg.intermediate_size, 160);
    cr_expect_eq(cfg.tie_embeddings, 0);
    cr_expect_eq(cfg.qkv_bias, 0);
    cr_expect(cfg.rope_factor == 4.0 && cfg.rope_orig_ctx == 16);

    cr_assert_eq(parse_line(&cfg, "--arch=llama --model=smollm-135m", err, sizeof(err)), TPM_OK,
                 "%s", err);
    cr_expect(cfg.n_layer == 30 && cfg.n_embd == 576 && cfg.n_head == 9 && cfg.n_kv_head == 3);
    cr_expect(cfg.vocab_size == 49152 && cfg.tie_embeddings == 1 && cfg.qkv_bias == 0);
    cr_expect(cfg.rope_factor == 0.0);

    cr_assert_eq(parse_line(&cfg, "--arch=llama --model=qwen2.5-0.5b", err, sizeof(err)), TPM_OK,
                 "%s", err);
    cr_expect(cfg.n_layer == 24 && cfg.n_embd == 896 && cfg.n_head == 14 && cfg.n_kv_head == 2);
    cr_expect(cfg.qkv_bias == 1 && cfg.tie_embeddings == 1 && cfg.rope_theta == 1e6);

    cr_assert_eq(parse_line(&cfg, "--arch=llama --model=llama-3.2-1b --tie-embeddings=0", err,
                            sizeof(err)),
                 TPM_OK, "%s", err);
    cr_expect(cfg.n_layer == 16 && cfg.n_embd == 2048 && cfg.n_head == 32 && cfg.n_kv_head == 8);
    cr_expect(cfg.rope_factor == 32.0 && cfg.rope_orig_ctx == 8192 && cfg.rope_theta == 500000.0);
    cr_expect_eq(cfg.tie_embeddings, 0, "an explicit option overrides the preset");
}

Test(config, bad_environment_value_is_rejected_naming_the_variable)
{
    tpm_config_t cfg;
    char         err[1024];

    setenv("TPMPI_STEPS", "many", 1);
    cr_expect_eq(parse_line(&cfg, "", err, sizeof(err)), TPM_ERR_INVALID_ARG);
    cr_expect(strstr(err, "TPMPI_STEPS: 'many' is not an integer") != NULL, "got: %s", err);
    unsetenv("TPMPI_STEPS");

    setenv("TPMPI_DEBUG_COLLECTIVES", "maybe", 1);
    cr_expect_eq(parse_line(&cfg, "", err, sizeof(err)), TPM_ERR_INVALID_ARG);
    cr_expect(strstr(err, "TPMPI_DEBUG_COLLECTIVES: 'maybe' is not a boolean") != NULL, "got: %s",
              err);
}

Test(config, too_long_path_is_rejected)
{
    char         line[TPM_PATH_MAX + 64];
    char         err[1024];
    tpm_config_t cfg;
    int          n = snprintf(line, sizeof(line), "--data=");

    memset(line + n, 'a', TPM_PATH_MAX);
    line[n + TPM_PATH_MAX] = '\0';
    cr_expect_eq(parse_line(&cfg, line, err, sizeof(err)), TPM_ERR_INVALID_ARG);
    cr_expect(strstr(err, "--data: value is 1024 bytes long, the limit is 1023") != NULL, "got: %s",
              err);
    line[n + TPM_PATH_MAX - 1] = '\0';
    parse_ok(&cfg, line);
    cr_expect_eq(strlen(cfg.data), TPM_PATH_MAX - 1);
}

Test(config, help_lists_every_option_and_asks_to_exit)
{
    int          exit_now = 0;
    tpm_status_t status;
    char        *text = parse_output("--steps=5 --help", &exit_now, &status);

    cr_assert_eq(status, TPM_OK);
    cr_expect_eq(exit_now, 1);
    for (size_t i = 0; i < sizeof(all_options) / sizeof(all_options[0]); i++) {
        char needle[64];

        snprintf(needle, sizeof(needle), "  --%s", all_options[i]);
        cr_expect(strstr(text, needle) != NULL, "--help does not list --%s", all_options[i]);
    }
    cr_expect(strstr(text, "General:") && strstr(text, "Model:") && strstr(text, "Data:") &&
              strstr(text, "Training:") && strstr(text, "Logging:"));
    cr_expect(strstr(text, "TPMPI_GRAD_ACCUM") != NULL);
    cr_expect(strstr(text, "[default: 3e-4]") != NULL);
    for (const char *line = text; *line != '\0';) {
        const char *nl  = strchr(line, '\n');
        size_t      len = nl ? (size_t)(nl - line) : strlen(line);

        cr_expect_leq(len, 100, "help line longer than 100 columns: %.*s", (int)len, line);
        line += len + (nl != NULL);
    }
    free(text);
}

Test(config, version_prints_the_package_version)
{
    int          exit_now = 0;
    tpm_status_t status;
    char        *text = parse_output("--version", &exit_now, &status);

    cr_assert_eq(status, TPM_OK);
    cr_expect_eq(exit_now, 1);
    cr_expect_str_eq(text, "tpmpi " PACKAGE_VERSION "\n");
    free(text);
}

Test(config, json_dump_is_valid_and_holds_the_values)
{
    tpm_config_t cfg;
    json_error_t jerr;
    json_t      *root;
    char        *text;

    parse_ok(&cfg, "--mode=prepare --steps=42 --lr=0.001 --out=a\"b\\c --input=x.txt "
                   "--debug-collectives --model=small");
    text = dump_string(&cfg);
    root = json_loads(text, 0, &jerr);
    cr_assert_not_null(root, "invalid JSON (%s): %s", jerr.text, text);
    cr_expect_str_eq(json_string_value(json_object_get(root, "version")), PACKAGE_VERSION);
    cr_expect_str_eq(json_string_value(json_object_get(root, "mode")), "prepare");
    cr_expect_eq(json_integer_value(json_object_get(root, "steps")), 42);
    cr_expect_eq(json_real_value(json_object_get(root, "lr")), 0.001);
    cr_expect_eq(json_integer_value(json_object_get(root, "n_layer")), 4);
    cr_expect_str_eq(json_string_value(json_object_get(root, "out")), "a\"b\\c");
    cr_expect_str_eq(json_string_value(json_array_get(json_object_get(root, "input"), 0)), "x.txt");
    cr_expect(json_is_true(json_object_get(root, "debug_collectives")));
    cr_expect_eq(json_integer_value(json_object_get(root, "seed")), 1337);
    cr_expect_null(json_object_get(root, "help"));
    /* every value option appears under its field name */
    for (size_t i = 0; i < sizeof(all_options) / sizeof(all_options[0]); i++) {
        char key[64];

        if (strcmp(all_options[i], "help") == 0 || strcmp(all_options[i], "version") == 0) {
            continue;
        }
        snprintf(key, sizeof(key), "%s", all_options[i]);
        for (char *p = key; *p != '\0'; p++) {
            *p = (*p == '-') ? '_' : *p;
        }
        cr_expect_not_null(json_object_get(root, key), "dump lacks %s", key);
    }
    json_decref(root);
    free(text);
}

Test(config, hash_is_stable_and_changes_with_any_field)
{
    static const char *const changes[] = {
        "--steps=101",
        "--lr=3.0001e-4",
        "--model=small",
        "--n-layer=3",
        "--data=x",
        "--out=y",
        "--metrics=m",
        "--seed=1338",
        "--debug-collectives",
        "--log-level=debug",
        "--device=cuda",
        "--mode=prepare",
        "--beta2=0.96",
        "--mode=prepare --input=a",
        "--threads=1",
        "--val-fraction=0.1",
    };
    tpm_config_t base, same, other;
    uint64_t     h;

    parse_ok(&base, "");
    parse_ok(&same, "--steps=100 --model=tiny --n-layer=2");
    h = tpm_config_hash(&base);
    cr_expect_eq(h, tpm_config_hash(&base));
    cr_expect_eq(h, tpm_config_hash(&same), "the same resolved values must hash the same");

    for (size_t i = 0; i < sizeof(changes) / sizeof(changes[0]); i++) {
        parse_ok(&other, changes[i]);
        cr_expect_neq(tpm_config_hash(&other), h, "hash unchanged by %s", changes[i]);
    }

    /* string contents count, not bytes left behind a shorter string */
    parse_ok(&other, "--data=abcdef");
    snprintf(other.data, sizeof(other.data), "x");
    parse_ok(&same, "--data=x");
    cr_expect_eq(tpm_config_hash(&other), tpm_config_hash(&same));
}

Test(config, mode_names)
{
    cr_expect_str_eq(tpm_mode_name(TPM_MODE_TRAIN), "train");
    cr_expect_str_eq(tpm_mode_name(TPM_MODE_PREPARE), "prepare");
    cr_expect_str_eq(tpm_mode_name(TPM_MODE_SERVE), "serve");
    cr_expect_str_eq(tpm_mode_name(TPM_MODE_EXPORT), "export");
    cr_expect_str_eq(tpm_mode_name(TPM_MODE_EVAL), "eval");
    cr_expect_str_eq(tpm_mode_name((tpm_mode_t)42), "unknown");
}

Test(config, json_dump_never_shows_the_api_key)
{
    tpm_config_t cfg;
    json_t      *root;
    char        *text;

    parse_ok(&cfg, "--mode=serve --api-key=s3cret-value");
    cr_assert_str_eq(cfg.api_key, "s3cret-value");
    text = dump_string(&cfg);
    cr_expect_null(strstr(text, "s3cret"), "the key leaked into the dump: %s", text);
    root = json_loads(text, 0, NULL);
    cr_assert_not_null(root);
    cr_expect_str_eq(json_string_value(json_object_get(root, "api_key")), "<redacted>");
    json_decref(root);
    free(text);
    /* unset stays visibly unset */
    parse_ok(&cfg, "--mode=serve");
    text = dump_string(&cfg);
    root = json_loads(text, 0, NULL);
    cr_expect_str_eq(json_string_value(json_object_get(root, "api_key")), "");
    json_decref(root);
    free(text);
}
