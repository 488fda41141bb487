/* The fx-lowrank stage: for every W4A4 fused group of the chosen blocks, the
 * smoothing vector and the low-rank branch (fx.branch, design.md §2), found
 * by the search of kernels/fx-lowrank.h on the rows of an fx.calib file.
 *
 * fx.branch tensors per group (P.F = "transformer_blocks.3.qkv_proj"; N, K
 * the fused group's output and input features, r the rank):
 *   P.F.smooth (K) F32     s > 0, BF16-representable; the runtime's x' = x/s
 *   P.F.down   (r,K) F32   acts on the smoothed input x/s
 *   P.F.up     (N,r) F32   W·diag(s) ≈ up·down + R
 *   P.F.splits (nmembers+1) I64   member row offsets along N
 *                          (qkv_proj: 0, D, 2D, 3D; one member: 0, N)
 *   P.F.stats  (FX_BRANCH_STAT_COUNT) F32, indexed by enum fx_branch_stat
 * Metadata besides the fx.* keys of design.md §3: fx.model =
 * {"num_double","num_single","hidden","mlp_hidden"}; fx.params holds rank,
 * precision, grid, iters, method, blocks ("A-B", global numbering of
 * fx-blocks.h) and the search constants (search_rows, oversample, power,
 * seed), and gptq_weight when the search was for GPTQ (absent: 0). Only
 * W4A4 groups have a branch (adaLN groups have none).
 *
 * Layer recipe (fx.layers): the group's name, its members' weight tensors'
 * bytes, its calib absmax and samples bytes, and the parameters except
 * blocks, so a block range or a model edit recomputes only what changed.
 */
#ifndef FX_LOWRANK_STAGE_H
#define FX_LOWRANK_STAGE_H

#include "fx-err.h"

#include "fx-file.h"   /* enum fx_branch_stat */

struct fx_loras;

#define FX_SEARCH_GPTQ_WEIGHT 0.05   /* flat over 0.03-0.1 on fx-synth models */

struct fx_lowrank_stage_opts {
	const char *model;
	const struct fx_loras *loras;   /* merged into the model; NULL: none */
	const char *calib;
	const char *output;
	int rank;                /* 32 */
	const char *precision;   /* "fp4" (default) | "int4" */
	int grid;                /* 20: 39 smoothing candidates */
	int iters;               /* 100, with early stop */
	int finalists;           /* 3: best-ranked candidates refined to the end */
	double gptq_weight;      /* 0: search for RTN residuals; > 0 (FX_SEARCH_GPTQ_WEIGHT
				  * for --for-gptq): for residuals fx-quant --gptq
				  * quantizes (fx-lowrank.h) */
	const char *method;      /* "rsvd" (default) | "svd" */
	int first_block, last_block;   /* global numbering (fx-blocks.h); -1: all */
	const char *device;      /* "cpu" | "cuda[:N]"; no GPU: CPU with a warning */
	int jobs;                /* layers searched at once on the CPU, each on its
				  * share of the threads; 0: 2 (capped by the
				  * threads); the bytes do not depend on it */
	bool force;
};

void fx_lowrank_stage_opts_init(struct fx_lowrank_stage_opts *o);

struct fx_stage;

/* Runs the stage. *up_to_date tells whether nothing had to be done; the
 * stage (for reports) is returned in *stage_out when non-NULL (caller frees).
 * A calib file recorded from another model gives FX_E_HASH; missing or
 * misshapen calib tensors FX_E_FORMAT; NaN/Inf in them FX_E_VALUE. */
int fx_lowrank_run(const struct fx_lowrank_stage_opts *o, bool *up_to_date,
		   struct fx_stage **stage_out, struct fx_err *err);

#endif
