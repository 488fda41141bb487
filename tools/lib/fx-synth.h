/* Deterministic synthetic FLUX transformers and conditioning (tests, demos).
 *
 * Generator: every tensor has its own stream, xoshiro256** seeded through
 * splitmix64 from (seed, FNV-1a 64 of its diffusers name); the elements of
 * row i of a linear weight come from a stream seeded by splitmix64 from
 * (a draw of the tensor's stream) ^ i. A normal deviate
 * is the Irwin-Hall sum of 12 uniforms minus 6 (mean 0, variance 1); the
 * log-normal scales use a local exp(). Only IEEE +,-,*,/ and sqrt are used,
 * so the output is bit-identical on every platform.
 *
 * Linear weights [n,k]: N(0,1)/sqrt(k) with log-normal row scales (sigma
 * 0.5), a rank-4 component (singular values ~ 1/(t+1)), and a few outlier
 * input columns scaled by 10..30. Biases N(0, 0.05^2); norm scales
 * 1 + N(0, 0.2^2). Modulation weights are generated like any linear. The
 * BFL layout is written from the same diffusers-named tensors (rows
 * concatenated, norm_out halves swapped), so both layouts hold the same
 * model. */
#ifndef FX_SYNTH_H
#define FX_SYNTH_H

#include "fx-err.h"
#include "fx-model.h"

struct fx_family;
struct fx_synth_opts {
	const struct fx_family *family;   /* NULL: FLUX */
	enum fx_layout layout;   /* diffusers: a folder; BFL: one file */
	int num_double;          /* 2 */
	int num_single;          /* 2 */
	int hidden;              /* 256, a multiple of 128 (head_dim 128) */
	int txt_dim;             /* 4096 */
	int in_channels;         /* 64 */
	uint64_t seed;           /* 1 */
	bool schnell;            /* no guidance embedder */
	int shards;              /* diffusers: > 1 writes shards + index */
	bool force;              /* overwrite an existing output */
};

struct fx_synth_cond_opts {
	const struct fx_family *family;   /* NULL: FLUX */
	int prompts;             /* 4 */
	int txt_len;             /* 64 */
	int txt_dim;             /* 4096 */
	int pooled_dim;          /* 768 */
	uint64_t seed;           /* 1 */
	bool force;
};

void fx_synth_opts_init(struct fx_synth_opts *o);
void fx_synth_cond_opts_init(struct fx_synth_cond_opts *o);

/* The config the options describe; FX_E_ARG when they are out of range. */
int fx_synth_config(struct fx_model_config *c, const struct fx_synth_opts *o,
		    struct fx_err *err);

/* Writes the model: diffusers -> folder out/ with config.json and
 * diffusion_pytorch_model.safetensors (or shards + index); BFL -> the file
 * out. Every file is written atomically; an existing out is refused
 * (FX_E_ARG) unless force. */
int fx_synth_model(const char *out, const struct fx_synth_opts *o, struct fx_err *err);

/* FLUX: writes prompt_embeds (P, L, txt_dim) and pooled_prompt_embeds
 * (P, pooled) in BF16, with a few large-magnitude channels. Qwen-Image:
 * prompt_embeds (P, L, txt_dim) BF16 padded per prompt (prompt p has
 * L - (p mod 4)·L/8 tokens), prompt_embeds_mask (P, L) I64 (1 token, 0
 * padding), negative_prompt_embeds (1, max(1, L/4), txt_dim) and its mask
 * (all ones), as QwenImagePipeline.encode_prompt returns them. */
int fx_synth_cond(const char *path, const struct fx_synth_cond_opts *o, struct fx_err *err);

/* Fills one tensor named in diffusers naming (n = prod(shape) BF16 values);
 * the kind (linear weight, bias, norm scale) follows from the name. */
int fx_synth_fill(uint16_t *dst, const char *name, int ndim, const int64_t *shape,
		  uint64_t seed, struct fx_err *err);

#endif
