/* The Qwen-Image transformer forward (diffusers QwenImageTransformer2DModel)
 * over a struct fx_model, in f32, on the CPU. Every block linear runs
 * through a fused group of the model (Nunchaku module names, nunchaku-
 * qwenimage-zimage-format.md §2.2), widened from BF16 per call into one
 * reusable buffer (the one-token adaLN linears read their BF16 weights in
 * place): memory is about the largest MLP group plus activations.
 * A struct fx_qwen is not thread-safe; use one per thread. */
#ifndef FX_QWEN_H
#define FX_QWEN_H

#include "fx-err.h"
#include "fx-model.h"

/* Overrides for the fused-group linears. Any callback may be NULL. */
struct fx_qwen_hooks {
	void *ctx;
	/* y (m, g->n) = x (m, g->k) · Wᵀ + b of fused group g, members
	 * concatenated along the output (attn.to_qkv: [q | k | v] per row).
	 * NULL: dense f32 (fx_qwen_linear_dense). */
	int (*linear)(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		      float *y, struct fx_err *err);
	/* Sees the input of every fused group once per forward, just before
	 * its linear: attn.to_qkv once for its 3 members; img_mod.1 and
	 * txt_mod.1 get SiLU(temb) with m = 1; the text groups get all nt rows,
	 * masked ones included (diffusers computes them too). x is valid
	 * during the call only. */
	int (*capture)(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		       struct fx_err *err);
};

/* One forward's inputs (batch 1, one frame). */
struct fx_qwen_input {
	int64_t ni, nt;            /* image and text tokens */
	const float *img;          /* (ni, in_channels) packed latents */
	const float *txt;          /* (nt, joint_dim) text-encoder hidden states */
	/* (nt): nonzero = a token keys may come from (diffusers casts the mask
	 * to bool); NULL = all. Masked tokens are left out as keys of the
	 * joint attention only: they are still queries, and their RoPE
	 * positions are their indices (diffusers' text_seq_len is nt). */
	const float *txt_mask;
	int img_h, img_w;          /* image in patches, img_h · img_w = ni */
	float sigma;               /* in [0,1]; the embedder sees fx_qwen_timestep(sigma) */
};

struct fx_qwen;

/* Checks that m has every fused group and plain tensor the forward needs
 * (shapes from its config) and sizes the buffers. m must outlive f. */
int fx_qwen_new(struct fx_qwen **out, const struct fx_model *m, struct fx_err *err);
void fx_qwen_free(struct fx_qwen *f);
const struct fx_model *fx_qwen_model(const struct fx_qwen *f);

/* Copies *h (NULL: none). */
void fx_qwen_set_hooks(struct fx_qwen *f, const struct fx_qwen_hooks *h);

struct fx_dit_linear;
/* The forward's group executor (fx-dit-linear.h): its hooks and dense
 * linear, borrowed from f. */
struct fx_dit_linear *fx_qwen_linear(struct fx_qwen *f);

/* out: (ni, 4·out_channels) velocity in the packed layout. Activation
 * buffers are kept in f between calls (grown when a larger input comes). */
int fx_qwen_forward(struct fx_qwen *f, const struct fx_qwen_input *in, float *out,
		    struct fx_err *err);

/* The dense f32 linear of a fused group (what a NULL hooks.linear does),
 * for hooks that handle only some groups. */
int fx_qwen_linear_dense(struct fx_qwen *f, const struct fx_group *g, const float *x,
			 int64_t m, float *y, struct fx_err *err);

/* The timestep the transformer receives from the diffusers BF16 pipeline at
 * σ: bf16(bf16(f32(1000σ)) / 1000) (pipeline_qwenimage.py: the scheduler's
 * timestep t = 1000σ, t.to(bf16), then timestep / 1000 in bf16). The
 * sinusoid then takes f32(f32(t·f_i)·1000) (Timesteps(scale=1000)); unlike
 * FLUX there is no bf16 rounding after the ·1000. */
float fx_qwen_timestep(float sigma);

/* RoPE tables cs, sn ((nt + ni), head_dim/2), text rows first, as diffusers'
 * QwenEmbedRope with scale_rope: image token (r, c) has positions
 * (0, r − ⌈h/2⌉, c − ⌈w/2⌉) (centred, negative half first), text token j has
 * (p, p, p) with p = max(h/2, w/2) + j (integer halves); pair k of axis a,
 * index i, has angle f32(p) · f32(1/f32(theta^(2i/axes[a]))) in f32 as
 * torch computes it, cos/sin rounded to f32. theta 10000. The power is
 * correctly rounded here; torch's vectorized f32 pow on the CPU is 1 ulp
 * off for a few exponents (axis width 56, i = 11: 0x1.2a351cp+5 instead of
 * 0x1.2a351ep+5), so for the real model's axes some entries differ from a
 * diffusers CPU run by up to ~4e-6 at text positions near 1000. */
void fx_qwen_rope_table(float *cs, float *sn, int64_t nt, int img_h, int img_w,
			const int axes[3]);

#endif
