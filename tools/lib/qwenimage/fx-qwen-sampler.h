/* Qwen-Image sampling (diffusers pipeline_qwenimage.py with its scheduler
 * config): the sigma schedule, true classifier-free guidance with the norm
 * rescale, and a whole Euler trajectory over fx_qwen_forward. The noise and
 * the latent packing are the families' shared ones (fx-dit-sampler.h:
 * fx_rng, fx_latent_pack, fx_sampler_noise): QwenImagePipeline._pack_latents
 * is FLUX's layout. */
#ifndef FX_QWEN_SAMPLER_H
#define FX_QWEN_SAMPLER_H

#include "fx-err.h"
#include "fx-qwen.h"

/* ---- schedule ------------------------------------------------------------ */

/* calculate_shift with the Qwen-Image scheduler config (base_image_seq_len
 * 256, max_image_seq_len 8192, base_shift 0.5, max_shift 0.9):
 * μ = L·m + (0.5 − 256·m), m = 0.4/7936, in double, not clamped. */
double fx_qwen_mu(int64_t image_seq_len);

/* sigmas[0..steps] (steps + 1 values, the last 0) as diffusers'
 * FlowMatchEulerDiscreteScheduler computes them for Qwen-Image
 * (use_dynamic_shifting, time_shift_type "exponential", shift_terminal
 * 0.02), numpy 2 / NEP 50 promotion, f32 arithmetic throughout:
 *   σ̂ = f32(linspace(1, 1/steps, steps)) (computed in double);
 *   σ = e / (e + (1/σ̂ − 1)), e = f32(exp μ), μ = fx_qwen_mu(image_seq_len);
 *   z = 1 − σ; s = z[steps−1] / f32(0.98); σ ← 1 − z / s
 * so the last σ is 0.02 (to rounding). FX_E_ARG for steps outside
 * 2..100000: at 1 step z[0] = 0 and diffusers' stretch yields NaN. */
int fx_qwen_sigmas(float *sigmas, int steps, int64_t image_seq_len, struct fx_err *err);

/* True CFG of one step, in place on pos (n tokens of c values; n·c floats):
 *   comb = neg + scale·(pos − neg);  pos ← comb · (‖pos‖ / ‖comb‖)
 * with the norms per token over its c values (torch.norm(dim=-1)), in
 * double, rounded to f32; the products in f32 as torch does. A zero ‖comb‖
 * gives Inf/NaN, as in diffusers. */
void fx_qwen_cfg(float *pos, const float *neg, int64_t n, int64_t c, float scale);

/* ---- a trajectory ------------------------------------------------------- */
struct fx_qwen_sample_params {
	int width, height;        /* pixels, multiples of 16 */
	int steps;
	float true_cfg;           /* true CFG when > 1 and a negative prompt is given */
	uint64_t seed;            /* noise, unless init is given */
	const float *init;        /* packed initial latents (ni, in_channels) or NULL */
	/* called before each forward with the step (0 .. steps-1), its σ and
	 * the pass: 0 the positive prompt, 1 the negative one (only with true
	 * CFG, right after pass 0 of the same step); e.g. to tell a capture
	 * hook where its rows come from. May be NULL. */
	int (*step_begin)(void *ctx, int step, float sigma, int pass, struct fx_err *err);
	void *step_ctx;
};

/* Defaults of QwenImagePipeline: 1024×1024 (default_sample_size 128 × vae
 * scale 8), 50 steps, true_cfg 4.0, seed 0. */
void fx_qwen_sample_params_init(struct fx_qwen_sample_params *p);

/* Runs steps Euler steps x ← x + (σ_{i+1} − σ_i)·v from the noise
 * (fx_sampler_noise with in_channels/4 channels, unless init), where v is
 * the forward's velocity with the prompt txt (nt, joint_dim) and its mask
 * (NULL: all valid), combined by fx_qwen_cfg with the velocity of the
 * negative prompt neg_txt (nneg, joint_dim), neg_mask, when p->true_cfg > 1
 * and neg_txt is not NULL (else the negative prompt is not used). Through
 * f with its hooks. out: final packed latents (ni, in_channels). */
int fx_qwen_sample_run(struct fx_qwen *f, const struct fx_qwen_sample_params *p,
		       const float *txt, const float *txt_mask, int64_t nt, const float *neg_txt,
		       const float *neg_mask, int64_t nneg, float *out, struct fx_err *err);

#endif
