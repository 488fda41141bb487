/* The numerics of fx-lowrank on plain arrays (flux-transformer.md §5.6,
 * §5.7; design.md §6): truncated SVD (LAPACK) and randomized SVD, the
 * smoothing candidates, the runtime-faithful output error, and the whole
 * per-group search. No file formats here; the caller opens files.
 *
 * Conventions. W (n,k) is the fused weight (members concatenated along n),
 * X (m,k) the calibration rows (unshifted inputs), s (k) the smoothing
 * vector. The branch acts on the smoothed input: W·diag(s) ≈ up·down + R,
 * down (r,k), up (n,r). The runtime (nunchaku-svdq-format.md §3.2) computes
 *   y = Q_a(x') · deq(Q(R))ᵀ + x · bf16(down/s)ᵀ · bf16(up)ᵀ + bias_stored,
 *   x' = bf16(bf16(x + c) / s),  bias_stored = b − deq(Q(R)) · (c/s)
 * with c = FX_LOWRANK_SHIFT for INT4 GELU-input groups (*_fc2; activations
 * unsigned) and 0 otherwise. So, with Rdq = deq(Q(R)) and
 * Xq = deq(Q_a(x')) − c/s, the output error against the original layer is
 *   E = X·Wᵀ − (Xq·Rdqᵀ + X·bf16(down/s)ᵀ·bf16(up)ᵀ)
 * (the checkpoint stores lora_down = down/s and lora_up in BF16: at rank
 * 128 that rounding can cost more than the 4-bit residual; R itself is
 * that of the f32 branch, as fx-quant computes it) and the reported
 * error is ‖E‖²_F / ‖X·Wᵀ‖²_F (sums in f64).
 * Weights are quantized by round-to-nearest exactly as fx_quant_int4_cpu /
 * fx_quant_nvfp4_cpu do without a clipping search (NVFP4: one tensor scale
 * per fused member); activations exactly as fx_actq_*_ref.
 *
 * Smoothing candidates (α, β): (0,0), then (α,0) for α = 1/G .. (G−1)/G,
 * then (α,1−α) for α = (G−1)/G .. 1/G (G = grid; 20 gives 39 candidates as
 * DeepCompressor's num_grids 20). The order walks neighbouring candidates
 * so the randomized SVD can start from the previous candidate's subspace.
 * s = xspan^α / wmax^β (wmax: column absmax of W; xspan the input absmax,
 * plus c for a shifted group: the span of what it quantizes, x + c), zeros
 * → 1, any NaN/Inf → all ones, then rounded to BF16 (what the packed
 * checkpoint stores, so the evaluated s is the one the runtime uses).
 *
 * The search ranks every candidate on `search_rows` evenly spaced rows of X
 * (time is dominated by passes over W and the error GEMM; fewer rows make
 * the latter cheaper), each with the branch of a warm-started randomized
 * SVD (no power iteration). The `finalists` best-ranked candidates are then
 * finished: branch recomputed with the full method, refined for up to
 * `iters` rounds (branch from the SVD of W·diag(s) − Rdq, `refine_power`
 * power iterations from the previous round's subspace; stop at the first
 * round that does not lower the error on the search rows; a finalist whose
 * error is still more than `abandon` above the best finished one after two
 * rounds is given up). The finalist with the lowest refined error wins: the
 * smoothing that is best before refinement is often not best after it. Its
 * refinement is undone if it does not lower the error on all rows too.
 * Reported errors use all m rows.
 *
 * For a residual that GPTQ will quantize (gptq_weight w > 0) candidates,
 * finalists, rounds and the undo are judged instead by ‖Ea‖² + w·‖Ew‖²,
 * where E = Ea + Ew, Ea = (X̃ − Xq)·Rdqᵀ (X̃ the smoothed input before
 * activation rounding) and Ew the rest, the weight-rounding share: GPTQ
 * removes most of Ew, so RTN-judged searches pick smoothings too easy on
 * the weights. Reported errors stay ‖E‖² with RTN.
 */
#ifndef FX_LOWRANK_H
#define FX_LOWRANK_H

#include "fx-err.h"
#include "fx-quant.h"

#define FX_LOWRANK_SHIFT 0.171875f      /* INT4 *_fc2 activation shift (spec §2.3.3) */
#define FX_LOWRANK_MAX_MEMBERS 4
#define FX_LOWRANK_MAX_GRID 100
#define FX_LOWRANK_MAX_FINALISTS 16
#define FX_LOWRANK_SEEDS 5              /* coarse candidates whose neighbours are ranked */
/* Bumped when the search changes what it returns for the same options
 * (recorded in fx.params and the layer recipes, so older branches are not
 * reused): 2 = smoothing span x + c for shifted groups, finalists;
 * 3 = 64 search rows, finalists given up (abandon); 4 = 32 search rows;
 * 5 = the branch in the error as the checkpoint stores it (BF16). */
#define FX_LOWRANK_SEARCH_VERSION 5

enum fx_lowrank_method {
	FX_LOWRANK_RSVD,   /* randomized SVD with power iterations (default) */
	FX_LOWRANK_SVD,    /* LAPACK sgesdd of the whole matrix */
	FX_LOWRANK_METHOD_COUNT
};

/* One fused group. All pointers are borrowed. */
struct fx_lowrank_problem {
	enum fx_qprec prec;            /* FX_QPREC_NVFP4 or FX_QPREC_INT4 */
	int64_t n, k;                  /* k a multiple of 64 */
	const float *w;                /* (n,k) */
	int nmember;                   /* NVFP4 tensor scale per member; <= 1: one */
	const int64_t *member_rows;    /* (nmember) row counts, sum n */
	int64_t m;                     /* calibration rows, >= 1 */
	const float *x;                /* (m,k) */
	const float *xmax;             /* (k) input absmax over all captured tokens */
	bool shift;                    /* INT4 GELU input: c = FX_LOWRANK_SHIFT, unsigned */
};

struct fx_lowrank_opts {
	int rank;                      /* 1 <= rank <= min(n,k) */
	int grid;                      /* G >= 1; 1: only (0,0) */
	int iters;                     /* refinement rounds, >= 0 */
	enum fx_lowrank_method method;
	int64_t search_rows;           /* 0: all rows */
	int oversample;                /* rsvd: l = rank + oversample */
	int power;                     /* rsvd: power iterations from a cold start */
	uint64_t seed;                 /* rsvd start vectors */
	int refine_power;              /* rsvd: power iterations of a (warm) refinement round */
	int finalists;                 /* best-ranked candidates refined, 1..MAX_FINALISTS */
	double abandon;                /* a finalist this far (relative) above the best after
					* two rounds is given up; >= 0 */
	double gptq_weight;            /* 0: rank by the RTN output error; in (0,1]: for a
					* residual GPTQ will quantize, by ‖Ea‖² + w·‖Ew‖²
					* (activation / weight rounding shares of it) */
};

/* Defaults: rank 32, grid 20, iters 100 (early stop), 3 finalists, rsvd,
 * 32 search rows, oversample 16, power 2, refine_power 0, seed 1,
 * abandon 0.1, gptq_weight 0. */
void fx_lowrank_opts_init(struct fx_lowrank_opts *o);

/* What the search found. smooth, down, up are caller-allocated: k, rank·k,
 * n·rank floats. */
struct fx_lowrank_result {
	float *smooth;
	float *down;
	float *up;
	float alpha, beta;             /* the chosen candidate */
	double err_rtn;                /* plain RTN (s = 1, no branch), all rows */
	double err_branch;             /* chosen s with its branch, before refinement */
	double err_final;              /* the returned s/down/up */
	int rounds;                    /* refinement rounds that were kept */
	int candidates;                /* evaluated in the search */
};

/* The candidate list for grid G in search order; returns the count
 * 2(G−1)+1 (or FX_E_ARG when it exceeds cap or G is out of range). */
int fx_lowrank_candidates(float *alpha, float *beta, int cap, int grid, struct fx_err *err);

/* s (k) for one candidate (rules above); wmax (k) the column absmax of W. */
void fx_lowrank_smooth(float *s, const float *xmax, const float *wmax, int64_t k,
		       float alpha, float beta);

/* Top-r SVD of A·diag(s) (n,k) (s NULL: ones) by LAPACK sgesdd:
 * up (n,r) = U_r·Σ_r, down (r,k) = V_rᵀ. */
int fx_lowrank_svd_cpu(float *up, float *down, const float *a, const float *s,
		       int64_t n, int64_t k, int r, struct fx_err *err);

/* The same by randomized SVD with l = r + oversample columns (capped at
 * min(n,k)) and `power` power iterations. basis (k,l), if not NULL, returns
 * the right singular vectors (by decreasing σ); with warm, it is also the
 * start subspace instead of seeded random vectors. */
int fx_lowrank_rsvd_cpu(float *up, float *down, float *basis, bool warm, const float *a,
			const float *s, int64_t n, int64_t k, int r, int oversample, int power,
			uint64_t seed, struct fx_err *err);

/* xq (m,k) = deq(Q_a(bf16(bf16(x + c)/s))) − c/s: the activation the
 * runtime's GEMM sees, less the shift the stored bias cancels (x is first
 * rounded to BF16, the model's input type). s NULL: ones. */
int fx_lowrank_actq_cpu(float *xq, const float *x, const float *s, int64_t m, int64_t k,
			enum fx_qprec p, bool shift, struct fx_err *err);

/* r (n,k) ← deq(Q(r)) in place, round to nearest, the bytes fx_quant_*_cpu
 * (no search) + fx_dequant_*_cpu would give. */
int fx_lowrank_resq_cpu(float *r, int64_t n, int64_t k, enum fx_qprec p,
			const int64_t *member_rows, int nmember, struct fx_err *err);

/* Relative output error of a given smoothing and branch on all rows of p
 * (s NULL: ones; rank 0: no branch). */
int fx_lowrank_error_cpu(double *rel, const struct fx_lowrank_problem *p, const float *s,
			 const float *down, const float *up, int rank, struct fx_err *err);

/* The whole search for one group. */
int fx_lowrank_group_cpu(struct fx_lowrank_result *res, const struct fx_lowrank_problem *p,
			 const struct fx_lowrank_opts *o, struct fx_err *err);

/* The same on a GPU (kernels/cuda/lowrank.cu; CUDA=1 builds only): cuBLAS
 * for every product, cuSOLVER for QR and the small SVDs, own kernels for
 * the quantizers and the error. Equal to the CPU result within tolerance. */
int fx_lowrank_group_cuda(int device, struct fx_lowrank_result *res,
			  const struct fx_lowrank_problem *p, const struct fx_lowrank_opts *o,
			  struct fx_err *err);

#endif
