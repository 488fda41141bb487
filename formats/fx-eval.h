/* fx-eval: sample with the source weights and with packed checkpoints run
 * through the emulated runtime, on the same conditioning and noise, and
 * compare the final latents (PSNR, cosine similarity). */
#ifndef FX_EVAL_H
#define FX_EVAL_H

#include "../common/fx-err.h"

#define FX_EVAL_MAX_CKPT 8

struct fx_eval_opts {
	const char *model;
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
};

int fx_eval_run(const struct fx_eval_opts *o, struct fx_eval_result *r, struct fx_err *err);
void fx_eval_result_release(struct fx_eval_result *r);
/* A bar chart of per-prompt PSNR, one colour per checkpoint, as PNG. */
int fx_eval_plot(const char *path, const struct fx_eval_result *r, struct fx_err *err);

#endif
