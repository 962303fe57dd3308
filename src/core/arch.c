/* SPDX-License-Identifier: MIT */
/*
 * arch.c: the per-architecture tensor tables (see arch.h, docs/MODEL.md) and the shard rule's
 * row arithmetic.
 *
 * GPT-2. Hugging Face's GPT2LMHeadModel uses Conv1D, whose weight is stored [in, out]: the
 * QKV weight (C, 3C) is the transpose of q | k | v blocks, c_fc (C, 4C) the transpose of
 * tpmpi's fcw, while c_proj (attention and MLP) already has tpmpi's [in, out] layout. llm.c
 * stores every weight (out, in) with q | k | v blocks.
 */
#include "core/arch.h"

#include "core/model.h"

int64_t tpm_split_block_rows(int64_t rows, int world)
{
    return (rows + world - 1) / world;
}

void tpm_split_rows(int64_t rows, int world, int rank, int64_t *row0_p, int64_t *nrows_p)
{
    int64_t r    = tpm_split_block_rows(rows, world);
    int64_t row0 = r * rank < rows ? r * rank : rows;
    int64_t end  = row0 + r < rows ? row0 + r : rows;

    *row0_p  = row0;
    *nrows_p = end - row0;
}

static const tpm_tensor_spec_t gpt2_block[TPM_BLOCK_NT] = {
    [TPM_B_LN1W]     = {"ln1w", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ONE, 0,
                        "transformer.h.%d.ln_1.weight", TPM_XFORM_SAME, 2, TPM_XFORM_SAME},
    [TPM_B_LN1B]     = {"ln1b", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ZERO, 0,
                        "transformer.h.%d.ln_1.bias", TPM_XFORM_SAME, 3, TPM_XFORM_SAME},
    [TPM_B_QKVW]     = {"qkvw", TPM_DIM_3C, TPM_DIM_C, TPM_SPLIT_HEADS_QKV, TPM_INIT_W, 1,
                        "transformer.h.%d.attn.c_attn.weight", TPM_XFORM_QKV_T, 4, TPM_XFORM_QKV},
    [TPM_B_QKVB]     = {"qkvb", TPM_DIM_3C, TPM_DIM_1, TPM_SPLIT_HEADS_QKV, TPM_INIT_ZERO, 0,
                        "transformer.h.%d.attn.c_attn.bias", TPM_XFORM_QKV, 5, TPM_XFORM_QKV},
    [TPM_B_ATTPROJW] = {"attprojw", TPM_DIM_C, TPM_DIM_C, TPM_SPLIT_HEADS_IN, TPM_INIT_W_RESID, 1,
                        "transformer.h.%d.attn.c_proj.weight", TPM_XFORM_SAME, 6,
                        TPM_XFORM_TRANSPOSE},
    [TPM_B_ATTPROJB] = {"attprojb", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ZERO, 0,
                        "transformer.h.%d.attn.c_proj.bias", TPM_XFORM_SAME, 7, TPM_XFORM_SAME},
    [TPM_B_LN2W]     = {"ln2w", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ONE, 0,
                        "transformer.h.%d.ln_2.weight", TPM_XFORM_SAME, 8, TPM_XFORM_SAME},
    [TPM_B_LN2B]     = {"ln2b", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ZERO, 0,
                        "transformer.h.%d.ln_2.bias", TPM_XFORM_SAME, 9, TPM_XFORM_SAME},
    [TPM_B_FCW]      = {"fcw", TPM_DIM_4C, TPM_DIM_C, TPM_SPLIT_COL, TPM_INIT_W, 1,
                        "transformer.h.%d.mlp.c_fc.weight", TPM_XFORM_TRANSPOSE, 10, TPM_XFORM_SAME},
    [TPM_B_FCB]      = {"fcb", TPM_DIM_4C, TPM_DIM_1, TPM_SPLIT_COL, TPM_INIT_ZERO, 0,
                        "transformer.h.%d.mlp.c_fc.bias", TPM_XFORM_SAME, 11, TPM_XFORM_SAME},
    [TPM_B_FCPROJW]  = {"fcprojw", TPM_DIM_4C, TPM_DIM_C, TPM_SPLIT_ROW, TPM_INIT_W_RESID, 1,
                        "transformer.h.%d.mlp.c_proj.weight", TPM_XFORM_SAME, 12,
                        TPM_XFORM_TRANSPOSE},
    [TPM_B_FCPROJB]  = {"fcprojb", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ZERO, 0,
                        "transformer.h.%d.mlp.c_proj.bias", TPM_XFORM_SAME, 13, TPM_XFORM_SAME},
};

static const tpm_tensor_spec_t gpt2_emb[TPM_EMB_NT] = {
    [TPM_E_WTE]  = {"wte", TPM_DIM_VP, TPM_DIM_C, TPM_SPLIT_VOCAB, TPM_INIT_W, 1,
                    "transformer.wte.weight", TPM_XFORM_SAME, 0, TPM_XFORM_SAME},
    [TPM_E_WPE]  = {"wpe", TPM_DIM_MAXT, TPM_DIM_C, TPM_SPLIT_REPLICATED, TPM_INIT_W, 1,
                    "transformer.wpe.weight", TPM_XFORM_SAME, 1, TPM_XFORM_SAME},
    [TPM_E_LNFW] = {"lnfw", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ONE, 0,
                    "transformer.ln_f.weight", TPM_XFORM_SAME, 14, TPM_XFORM_SAME},
    [TPM_E_LNFB] = {"lnfb", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ZERO, 0,
                    "transformer.ln_f.bias", TPM_XFORM_SAME, 15, TPM_XFORM_SAME},
};

const tpm_arch_t tpm_arch_gpt2 = {
    .name    = "gpt2",
    .n_block = TPM_BLOCK_NT,
    .block   = gpt2_block,
    .n_emb   = TPM_EMB_NT,
    .emb     = gpt2_emb,
};

/*
 * LLaMA (LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM). Hugging Face keeps q_proj,
 * k_proj and v_proj as three nn.Linear weights (out, in); tpmpi stores them as one (QKV, C)
 * tensor whose rows are grouped by KV group (backend.h: the q of the group's NH / NKV heads,
 * then its k, then its v), so that a tensor-parallel rank owning whole KV groups owns
 * contiguous rows. The "%d" names below are q_proj's; the layout TPM_XFORM_QKV_GQA says the
 * rows come from the three files' tensors (docs/MODEL.md). o_proj and down_proj are stored
 * transposed ([in, out], row-parallel). There is no llm.c layout (llmc_index -1).
 * Hugging Face initialises every linear weight N(0, initializer_range = 0.02): no residual
 * scaling.
 */
static const tpm_tensor_spec_t llama_block[TPM_LBLOCK_NT] = {
    [TPM_LB_LN1W]  = {"ln1w", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ONE, 0,
                      "model.layers.%d.input_layernorm.weight", TPM_XFORM_SAME, -1, TPM_XFORM_SAME},
    [TPM_LB_QKVW]  = {"qkvw", TPM_DIM_QKV, TPM_DIM_C, TPM_SPLIT_HEADS_QKV, TPM_INIT_W, 1,
                      "model.layers.%d.self_attn.q_proj.weight", TPM_XFORM_QKV_GQA, -1,
                      TPM_XFORM_SAME},
    [TPM_LB_OW]    = {"ow", TPM_DIM_C, TPM_DIM_C, TPM_SPLIT_HEADS_IN, TPM_INIT_W, 1,
                      "model.layers.%d.self_attn.o_proj.weight", TPM_XFORM_TRANSPOSE, -1,
                      TPM_XFORM_SAME},
    [TPM_LB_LN2W]  = {"ln2w", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ONE, 0,
                      "model.layers.%d.post_attention_layernorm.weight", TPM_XFORM_SAME, -1,
                      TPM_XFORM_SAME},
    [TPM_LB_GATEW] = {"gatew", TPM_DIM_F, TPM_DIM_C, TPM_SPLIT_COL, TPM_INIT_W, 1,
                      "model.layers.%d.mlp.gate_proj.weight", TPM_XFORM_SAME, -1, TPM_XFORM_SAME},
    [TPM_LB_UPW]   = {"upw", TPM_DIM_F, TPM_DIM_C, TPM_SPLIT_COL, TPM_INIT_W, 1,
                      "model.layers.%d.mlp.up_proj.weight", TPM_XFORM_SAME, -1, TPM_XFORM_SAME},
    [TPM_LB_DOWNW] = {"downw", TPM_DIM_F, TPM_DIM_C, TPM_SPLIT_ROW, TPM_INIT_W, 1,
                      "model.layers.%d.mlp.down_proj.weight", TPM_XFORM_TRANSPOSE, -1,
                      TPM_XFORM_SAME},
    [TPM_LB_QKVB]  = {"qkvb", TPM_DIM_QKV, TPM_DIM_1, TPM_SPLIT_HEADS_QKV, TPM_INIT_ZERO, 0,
                      "model.layers.%d.self_attn.q_proj.bias", TPM_XFORM_QKV_GQA, -1,
                      TPM_XFORM_SAME},
};

static const tpm_tensor_spec_t llama_emb[TPM_LEMB_NT] = {
    [TPM_LE_WTE]  = {"wte", TPM_DIM_VP, TPM_DIM_C, TPM_SPLIT_VOCAB, TPM_INIT_W, 1,
                     "model.embed_tokens.weight", TPM_XFORM_SAME, -1, TPM_XFORM_SAME},
    [TPM_LE_LNFW] = {"lnfw", TPM_DIM_C, TPM_DIM_1, TPM_SPLIT_REPLICATED, TPM_INIT_ONE, 0,
                     "model.norm.weight", TPM_XFORM_SAME, -1, TPM_XFORM_SAME},
    [TPM_LE_HEAD] = {"lm_head", TPM_DIM_VP, TPM_DIM_C, TPM_SPLIT_VOCAB, TPM_INIT_W, 1,
                     "lm_head.weight", TPM_XFORM_SAME, -1, TPM_XFORM_SAME},
};

#define LLAMA_ARCH(_bias, _untied)                                                                 \
    {.name    = "llama",                                                                           \
     .n_block = TPM_LB_QKVB + (_bias),                                                             \
     .block   = llama_block,                                                                       \
     .n_emb   = TPM_LE_HEAD + (_untied),                                                           \
     .emb     = llama_emb}

const tpm_arch_t tpm_arch_llama[2][2] = {
    {LLAMA_ARCH(0, 0), LLAMA_ARCH(0, 1)},
    {LLAMA_ARCH(1, 0), LLAMA_ARCH(1, 1)},
};
