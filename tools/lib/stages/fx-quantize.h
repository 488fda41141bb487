/* The fx-quant stage: residual of every fused group (W·diag(s) − up·down, or
 * W without a branch file) quantized into an fx.quant file (design.md §2). */
#ifndef FX_QUANTIZE_H
#define FX_QUANTIZE_H

#include "fx-err.h"

struct fx_loras;

struct fx_quantize_opts {
	const char *model;
	const struct fx_loras *loras;   /* merged into the model; NULL: none */
	const char *branch;      /* NULL: plain round-to-nearest */
	const char *calib;       /* for --search and --gptq */
	const char *precision;   /* "fp4" | "int4" */
	bool search;
	bool gptq;               /* GPTQ codes against the calib file's XᵀX */
	double gptq_damp;        /* fraction of mean(diag H); 0: FX_GPTQ_DAMP */
	double gptq_thin_damp;   /* for layers with fewer XᵀX rows than inputs; 0: FX_GPTQ_THIN_DAMP */
	int gptq_block;          /* columns per deferred update; 0: FX_GPTQ_BLOCK */
	int first_block, last_block;   /* global numbering, fx-blocks.h; -1: all */
	bool force;
	const char *output;
};

struct fx_stage;

/* Runs the stage. *up_to_date tells whether nothing had to be done; the
 * stage (for reports) is returned in *stage_out when non-NULL (caller frees). */
int fx_quantize_run(const struct fx_quantize_opts *o, bool *up_to_date,
		    struct fx_stage **stage_out, struct fx_err *err);

#endif
