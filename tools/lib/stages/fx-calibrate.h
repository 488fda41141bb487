/* The fx-calib stage: run the sampler over the conditioning and record, for
 * the input of every fused group, per-channel absmax, a reservoir sample of
 * rows and optionally XᵀX (fx.calib, design.md §2). With XᵀX the layers are
 * split into passes whose statistics fit a memory budget; each pass reruns
 * the (deterministic) sampling and streams its layers to the output. */
#ifndef FX_CALIBRATE_H
#define FX_CALIBRATE_H

#include "fx-err.h"

struct fx_loras;

/* Default --hessian-mem: 4 GiB. */
#define FX_CALIB_HESSIAN_MEM ((uint64_t)4 << 30)

struct fx_calibrate_opts {
	const char *model;
	const struct fx_loras *loras;   /* merged into the model; NULL: none */
	const char *cond;
	const char *output;
	int prompts;            /* 0: every entry of the conditioning file */
	int steps;              /* 0: model default (dev 50, schnell 4) */
	int width, height;      /* 0: 1024x1024 */
	float guidance;         /* < 0: 3.5 */
	uint64_t seed;          /* noise of prompt p uses seed + p; reservoir uses seed */
	int samples;            /* rows kept per group, default 512 */
	bool hessian;
	uint64_t hessian_mem;   /* with hessian: bytes of statistics one sampling
				 * pass may hold; 0: FX_CALIB_HESSIAN_MEM */
	int first_block, last_block;   /* global numbering; -1: all */
	bool force;
	const char *device;     /* NULL/"cpu", "cuda", "cuda:N" (fx_device_select); a
				 * CUDA request without a GPU runs on the CPU, and
				 * the device is not part of the recipe */
	const char *gemm;       /* block linears on CUDA: NULL/"bf16" BF16 GEMMs (the
				 * recipe records "gemm": "bf16"), "f32" as on the CPU;
				 * the CPU path always computes in f32 */
};

struct fx_stage;

int fx_calibrate_run(const struct fx_calibrate_opts *o, bool *up_to_date,
		     struct fx_stage **stage_out, struct fx_err *err);

#endif
