/* SPDX-License-Identifier: MIT */
/*
 * hf.h: Hugging Face model directories (config.json, model.safetensors or the sharded
 * model.safetensors.index.json form) of the LLaMA family (LlamaForCausalLM,
 * Qwen2ForCausalLM, MistralForCausalLM) as a tensor source (core/tensor_io.h) in tpmpi's
 * layout (docs/MODEL.md "LLaMA"): q/k/v rows regrouped by KV group, o_proj and down_proj
 * transposed, embed_tokens and lm_head padded to Vp. F32, BF16 and F16 files are read as fp32.
 * Each rank reads only the rows it asks for. The safetensors files are checked entry by
 * entry when opened (ckpt/safetensors.h).
 */
#ifndef TPM_CKPT_HF_H
#define TPM_CKPT_HF_H

#include "base/status.h"
#include "core/model.h"
#include "core/tensor_io.h"
#include "zero3/zero3.h"

typedef struct tpm_hf tpm_hf_t;

/**
 * Open model directory @p dir for model @p cfg (borrowed; a LLaMA configuration). config.json
 * must describe the same model: a field that differs is named with the option that sets it
 * (TPM_ERR_INVALID_ARG); every tensor tpmpi needs must be in the files with its shape
 * (TPM_ERR_FORMAT); unreadable files are TPM_ERR_IO. Not collective. Caller owns *h_p.
 */
tpm_status_t tpm_hf_open(const char *dir, const tpm_model_config_t *cfg, tpm_hf_t **h_p);
void         tpm_hf_close(tpm_hf_t *h); /* no-op on NULL */

/** A whole tensor source reading @p h (borrowed). */
tpm_tensor_io_t tpm_hf_tensor_io(tpm_hf_t *h);

/**
 * --init-from=hf:DIR: load the weights of @p dir into the parameter shards of @p z (each
 * rank reads its rows) and zero the AdamW moments. Collective over z->comm; every rank
 * returns the same status.
 */
tpm_status_t tpm_ckpt_import_hf(tpm_zero3_t *z, const char *dir);

/**
 * --mode=export --format=hf: write checkpoint @p ckpt_path (a LLaMA-family model) as a Hugging
 * Face directory @p dir: config.json (LlamaForCausalLM, or Qwen2ForCausalLM with q/k/v
 * biases) and model.safetensors (F32, the vocabulary padding left out), written by rank 0
 * under temporary names and renamed. Collective over @p comm (each tensor is read whole on
 * rank 0); every rank returns the same status. A GPT-2 checkpoint is TPM_ERR_UNSUPPORTED.
 */
tpm_status_t tpm_ckpt_export_hf(tpm_comm_t *comm, const char *ckpt_path, const char *dir);

#endif /* TPM_CKPT_HF_H */
