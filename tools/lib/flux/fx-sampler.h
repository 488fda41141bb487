/* FLUX sampling (flux-transformer.md §4): the flow-matching sigma schedule
 * and a whole Euler trajectory over fx_flux_forward. The Gaussian
 * generator, latent packing and noise are the families' shared ones
 * (fx-dit-sampler.h, included here). */
#ifndef FX_SAMPLER_H
#define FX_SAMPLER_H

#include "fx-dit-sampler.h"
#include "fx-err.h"
#include "fx-flux.h"

/* ---- schedule ------------------------------------------------------------ */

/* FluxPipeline's calculate_shift: μ = L·m + (0.5 − 256·m), m = 0.65/3840,
 * in double (0.5 at 256 tokens, 1.15 at 4096, not clamped). */
double fx_sampler_mu(int64_t image_seq_len);

/* sigmas[0..steps] (steps + 1 values, the last 0), computed as diffusers'
 * FlowMatchEulerDiscreteScheduler does: σ̂ = linspace(1, 1/steps, steps) in
 * double, rounded to f32; dynamic: σ = e / (e + (1/σ̂ − 1)) with e = f32(exp μ),
 * μ = fx_sampler_mu(image_seq_len); else σ = s·σ̂ / (1 + (s − 1)·σ̂) with
 * s = shift (1: no shift; schnell). f32 arithmetic. Spelled out, with the
 * timestep rounding of fx_flux_timestep, in fx-calib(1), Sampling. */
int fx_sampler_sigmas(float *sigmas, int steps, int64_t image_seq_len, bool dynamic,
		      float shift, struct fx_err *err);

/* ---- latents: packing and noise in fx-dit-sampler.h --------------------- */

/* ids (hp·wp, 3) = (0, r, col) in token order. */
void fx_sampler_img_ids(float *ids, int hp, int wp);

/* ---- a trajectory ------------------------------------------------------- */
struct fx_sample_params {
	int width, height;        /* pixels, multiples of 16 */
	int steps;
	float guidance;           /* dev; ignored by a model without guidance */
	bool dynamic_shift;       /* dev: true (μ from the token count) */
	float shift;              /* without dynamic shift (schnell: 1) */
	uint64_t seed;            /* noise, unless init is given */
	const float *init;        /* packed initial latents (ni, in_channels) or NULL */
	/* called before each step's forward (step 0 .. steps-1) with its σ;
	 * e.g. to tell a capture hook the step. May be NULL. */
	int (*step_begin)(void *ctx, int step, float sigma, struct fx_err *err);
	void *step_ctx;
};

/* Defaults for the model: dev (guidance embedder) 50 steps, guidance 3.5,
 * dynamic shift; schnell 4 steps, shift 1; 1024×1024, seed 0. */
void fx_sample_params_init(struct fx_sample_params *p, const struct fx_model_config *c);

/* Runs steps Euler steps x ← x + (σ_{i+1} − σ_i)·v(x, σ_i) from the noise
 * with the text conditioning txt (nt, joint_dim) and pooled (pooled_dim),
 * through f (with its hooks). out: final packed latents (ni, in_channels). */
int fx_sampler_run(struct fx_flux *f, const struct fx_sample_params *p, const float *txt,
		   int64_t nt, const float *pooled, float *out, struct fx_err *err);

#endif
