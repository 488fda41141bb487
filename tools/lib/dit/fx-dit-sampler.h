/* Sampling pieces shared by the diffusion-transformer families: a seeded
 * platform-independent Gaussian generator, the 2x2 latent packing of
 * FluxPipeline/QwenImagePipeline._pack_latents, the initial noise, the
 * token count of a resolution and the Euler trajectory's steps. Each
 * family's sampler (flux/fx-sampler.h, qwenimage/fx-qwen-sampler.h) adds
 * its schedule and forward. */
#ifndef FX_DIT_SAMPLER_H
#define FX_DIT_SAMPLER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "fx-err.h"

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

/* ---- latents --------------------------------------------------------------
 * z (c, h, w) <-> packed ((h/2)(w/2), 4c): token t = r·(w/2) + col, feature
 * ch·4 + dy·2 + dx = z[ch, 2r+dy, 2col+dx] (flux-transformer.md §3.2).
 * h and w even. */
void fx_latent_pack(float *packed, const float *z, int c, int h, int w);
void fx_latent_unpack(float *z, const float *packed, int c, int h, int w);
/* Initial noise: c·h·w normals drawn from fx_rng seeded with seed in
 * (ch, y, x) order, then packed; the sampler passes c = in_channels/4. */
void fx_sampler_noise(float *packed, int c, int h, int w, uint64_t seed);

/* Token count of a resolution: (height/16)·(width/16), or FX_E_ARG. */
int fx_sampler_tokens(int width, int height, int64_t *ni, struct fx_err *err);

/* ---- a trajectory -------------------------------------------------------- */

/* σ̂ = linspace(1, 1/steps, steps) as numpy computes it (in double: i·step
 * + 1, the last one exactly 1/steps), each rounded to f32, into s[0..steps). */
void fx_sampler_linspace(float *s, int steps);

/* The starting latents x (nv floats): a copy of init, or without init
 * fx_sampler_noise(x, c, h, w, seed) (nv = c·h·w). */
void fx_sampler_start(float *x, const float *init, int64_t nv, int c, int h, int w,
		      uint64_t seed);

/* One Euler step x ← x + dt·v over n values, in f32. */
void fx_sampler_euler(float *x, const float *v, float dt, int64_t n);

#endif
