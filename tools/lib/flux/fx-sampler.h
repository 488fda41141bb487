/* FLUX sampling (flux-transformer.md §4): the flow-matching sigma schedule,
 * a seeded platform-independent Gaussian generator, latent packing and a
 * whole Euler trajectory over fx_flux_forward. */
#ifndef FX_SAMPLER_H
#define FX_SAMPLER_H

#include "fx-err.h"
#include "fx-flux.h"

/* ---- Gaussian generator --------------------------------------------------
 * state s (u64) starts at the seed. Each 64-bit draw (splitmix64):
 *   s += 0x9E3779B97F4A7C15;  z = s;
 *   z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9;
 *   z = (z ^ (z >> 27)) * 0x94D049BB133111EB;
 *   return z ^ (z >> 31);                       (all mod 2^64)
 * uniform: u = ((z >> 11) + 0.5) · 2^-53, a double in (0, 1).
 * normal (Box-Muller, basic form), from two uniforms u1 then u2:
 *   r = sqrt(-2 ln u1), a = 2π u2 (π as the double M_PI);
 *   first value r·cos(a), second r·sin(a) (kept for the next call).
 * Values are computed in double; the f32 fill rounds each to nearest.
 * Only IEEE double arithmetic and libm log/cos/sin/sqrt are involved; a libm
 * that differs by an ulp in double flips an f32 value only when the double
 * lies within that ulp of an f32 rounding midpoint (about 1 in 2^29), so
 * f32 outputs agree across common platforms but are not proven identical.
 * Documented in fx-calib(1), Noise. */
struct fx_rng {
	uint64_t s;
	double spare;
	bool has_spare;
};

void fx_rng_init(struct fx_rng *r, uint64_t seed);
uint64_t fx_rng_u64(struct fx_rng *r);
double fx_rng_uniform(struct fx_rng *r);
double fx_rng_normal(struct fx_rng *r);
void fx_rng_normal_f32(struct fx_rng *r, float *dst, size_t n);

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

/* ---- latents --------------------------------------------------------------
 * z (c, h, w) <-> packed ((h/2)(w/2), 4c): token t = r·(w/2) + col, feature
 * ch·4 + dy·2 + dx = z[ch, 2r+dy, 2col+dx] (§3.2). h and w even. */
void fx_latent_pack(float *packed, const float *z, int c, int h, int w);
void fx_latent_unpack(float *z, const float *packed, int c, int h, int w);
/* ids (hp·wp, 3) = (0, r, col) in token order. */
void fx_sampler_img_ids(float *ids, int hp, int wp);
/* Initial noise: c·h·w normals drawn from fx_rng seeded with seed in
 * (ch, y, x) order, then packed; the sampler passes c = in_channels/4. */
void fx_sampler_noise(float *packed, int c, int h, int w, uint64_t seed);

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

/* Token count of a resolution: (height/16)·(width/16), or FX_E_ARG. */
int fx_sampler_tokens(int width, int height, int64_t *ni, struct fx_err *err);

/* Runs steps Euler steps x ← x + (σ_{i+1} − σ_i)·v(x, σ_i) from the noise
 * with the text conditioning txt (nt, joint_dim) and pooled (pooled_dim),
 * through f (with its hooks). out: final packed latents (ni, in_channels). */
int fx_sampler_run(struct fx_flux *f, const struct fx_sample_params *p, const float *txt,
		   int64_t nt, const float *pooled, float *out, struct fx_err *err);

#endif
