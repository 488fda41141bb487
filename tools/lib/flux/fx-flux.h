/* The FLUX.1 transformer forward over a struct fx_model, in f32
 * (shared/spec/flux-transformer.md §3.5–3.9). Every block linear runs
 * through a fused group of the model, widened from BF16 per call into one
 * reusable buffer: memory is about the largest group plus activations.
 * A struct fx_flux is not thread-safe; use one per thread. */
#ifndef FX_FLUX_H
#define FX_FLUX_H

#include "fx-err.h"
#include "fx-model.h"

/* Overrides for the fused-group linears. Any callback may be NULL. */
struct fx_flux_hooks {
	void *ctx;
	/* y (m, g->n) = x (m, g->k) · Wᵀ + b of fused group g, members
	 * concatenated along the output (qkv_proj: [q | k | v] per row).
	 * NULL: dense f32 (fx_flux_linear_dense). */
	int (*linear)(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		      float *y, struct fx_err *err);
	/* Sees the input of every fused group once per forward, just before
	 * its linear: qkv_proj once for its 3 members; for adaLN groups x is
	 * SiLU(temb) with m = 1; single-block qkv_proj and mlp_fc1 get the
	 * same x. x is valid during the call only. */
	int (*capture)(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		       struct fx_err *err);
};

/* One forward's inputs (batch 1). */
struct fx_flux_input {
	int64_t ni, nt;            /* image and text tokens */
	const float *img;          /* (ni, in_channels) packed latents */
	const float *txt;          /* (nt, joint_dim) T5 hidden states */
	const float *pooled;       /* (pooled_dim) CLIP pooled embedding */
	const float *img_ids;      /* (ni, 3) position ids, (0, r, c) */
	const float *txt_ids;      /* (nt, 3), or NULL for zeros */
	float sigma;               /* in [0,1]; the embedder sees fx_flux_timestep(sigma) */
	float guidance;            /* dev only; the embedder sees fx_flux_guidance(guidance) */
};

struct fx_flux;

/* Checks that m has every group and plain tensor the forward needs (shapes
 * from its config) and sizes the weight buffer. m must outlive f. */
int fx_flux_new(struct fx_flux **out, const struct fx_model *m, struct fx_err *err);
void fx_flux_free(struct fx_flux *f);
const struct fx_model *fx_flux_model(const struct fx_flux *f);

/* Copies *h (NULL: none). */
void fx_flux_set_hooks(struct fx_flux *f, const struct fx_flux_hooks *h);

struct fx_dit_linear;
/* The forward's group executor (fx-dit-linear.h): its hooks and dense
 * linear, borrowed from f. */
struct fx_dit_linear *fx_flux_linear(struct fx_flux *f);

struct fx_device;
/* Where the forward runs: NULL or a CPU device is the CPU path (the
 * default); a CUDA device (fx_device_select) runs the blocks on that GPU
 * (kernels/fx-ops-cuda.h): activations stay on the device for the whole
 * forward, weights are widened on the host per linear and uploaded. Hooks
 * still receive host pointers (the group input is copied back only when a
 * hook is set). FX_E_UNSUPPORTED in a build without CUDA; on any error the
 * previous device is kept. Results match the CPU path to f32 rounding. */
int fx_flux_set_device(struct fx_flux *f, const struct fx_device *dev, struct fx_err *err);

/* On a CUDA device: the block linears as BF16 GEMMs (the weights as stored,
 * rounded to BF16 when they are not; inputs rounded to BF16 on the device;
 * f32 accumulate), as a BF16 pipeline computes them, half the upload of f32.
 * Off (the default): f32 as on the CPU. The CPU path always computes in f32.
 * Returns whether BF16 GEMMs are in effect. */
bool fx_flux_set_bf16_gemm(struct fx_flux *f, bool on);

/* out: (ni, out_channels) velocity in the packed layout. Activation
 * buffers are kept in f between calls (grown when a larger input comes). */
int fx_flux_forward(struct fx_flux *f, const struct fx_flux_input *in, float *out,
		    struct fx_err *err);

/* The dense f32 linear of a fused group (what a NULL hooks.linear does),
 * for hooks that handle only some groups. */
int fx_flux_linear_dense(struct fx_flux *f, const struct fx_group *g, const float *x,
			 int64_t m, float *y, struct fx_err *err);

/* What the timestep/guidance embedders see, replicating the BF16 rounding
 * of the diffusers pipeline (spec §3.5): bf16(bf16(bf16(f32(1000σ))/1000)·1000)
 * and bf16(bf16(g)·1000) (3.5 → 3504). */
float fx_flux_timestep(float sigma);
float fx_flux_guidance(float guidance);

#endif
