/* fx-eval: sample with the source weights and with packed checkpoints run
 * through the emulated runtime, on the same conditioning and noise, and
 * compare the final latents, the latents after every step (PSNR, cosine
 * similarity) and every layer's output on the sampler's own activations
 * (SNR). */
#ifndef FX_EVAL_H
#define FX_EVAL_H

#include "fx-err.h"

#define FX_EVAL_MAX_CKPT 8
#define FX_EVAL_LAYER_NAME 96
/* PSNR/SNR reported for identical outputs (no error at all). */
#define FX_EVAL_EXACT_DB 999.0

struct fx_loras;

struct fx_eval_opts {
	const char *model;
	const struct fx_loras *loras;   /* merged into the model; NULL: none */
	const char *cond;
	const char *ckpt[FX_EVAL_MAX_CKPT];
	int nckpt;
	int prompts;            /* 0: all */
	int steps;              /* 0: 4 */
	int width, height;      /* 0: 256x256 */
	float guidance;         /* < 0: 3.5 */
	uint64_t seed;          /* noise of prompt p: seed + p */
};

struct fx_eval_result {
	int nprompts, nckpt;
	double *psnr;           /* [ckpt][prompt] dB; peak = max |reference| */
	double *cosine;         /* [ckpt][prompt] */
	double mean_psnr[FX_EVAL_MAX_CKPT], mean_cosine[FX_EVAL_MAX_CKPT];
	/* latents after step s (the last one: the final latents) */
	int nsteps;
	double *step_psnr;      /* [ckpt][prompt][step] */
	double *step_cosine;    /* [ckpt][prompt][step] */
	double *mean_step_psnr; /* [ckpt][step], over the prompts */
	/* every fused group (model order): emulated runtime output against the
	 * dense source layer on the inputs it saw, over all prompts and steps */
	int nlayers;
	char (*layer)[FX_EVAL_LAYER_NAME];   /* "qkv_proj (block 0)", "mlp_fc2 (single block 1)" */
	double *layer_snr;      /* [ckpt][layer] dB */
};

int fx_eval_run(const struct fx_eval_opts *o, struct fx_eval_result *r, struct fx_err *err);
void fx_eval_result_release(struct fx_eval_result *r);
/* A PNG of three panels, one colour per checkpoint: per-prompt PSNR bars,
 * the mean PSNR after each step and the SNR of each layer as lines. */
int fx_eval_plot(const char *path, const struct fx_eval_result *r, struct fx_err *err);

#endif
