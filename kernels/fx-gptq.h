/* GPTQ on a quantized residual: codes chosen column by column against the
 * layer's input Hessian H = XᵀX, each column's rounding error fed back to
 * the columns not yet quantized (through the Cholesky factor of H, which
 * is the same update as through that of H⁻¹; kernels/cpu/gptq.c).
 *
 * Group scales are fixed before the sweep (the caller's RTN pass picks
 * them from the residual's absmax); GPTQ only chooses codes. Columns that
 * were never active (H_ii = 0) get H_ii = 1 and a zero weight; columns are
 * visited in order of decreasing H_ii; damping adds damp·mean(diag H) to
 * the diagonal, multiplied by 10 on a failed Cholesky (up to 6 times);
 * the error of a block of `block` columns reaches the rest in one product.
 *
 * Precision: H is factored in f32 after dividing it by mean(diag H), in f64
 * only where f32 breaks down first (the sweep was always f32);
 * tests/unit/test-gptq.c holds the codes against an f64 numpy reference
 * and an f64 sweep on an ill-conditioned H.
 *
 * Determinism: rows are swept in panels of FX_GPTQ_PANEL consecutive rows
 * of a call (a short last one padded), every product cut from the shapes
 * alone: the codes do not depend on the thread count, and calls that split
 * the rows at multiples of FX_GPTQ_PANEL give the bytes of one call. They
 * depend on the OpenBLAS kernel (its sgemm sums in its own order). */
#ifndef FX_GPTQ_H
#define FX_GPTQ_H

#include "fx-err.h"
#include "fx-quant.h"

#define FX_GPTQ_DAMP 0.01
/* for a layer whose XᵀX has fewer rows than inputs (H singular): the
 * codes then fit those rows; more damping keeps them nearer the weights */
#define FX_GPTQ_THIN_DAMP 1.0
#define FX_GPTQ_BLOCK 128
#define FX_GPTQ_PANEL 128   /* rows swept together */

struct fx_gptq;

/* h: (k,k) symmetric, row-major f64 (only the upper triangle is read). */
int fx_gptq_new(struct fx_gptq **out, const double *h, int64_t k, double damp, int block,
		struct fx_err *err);
/* Keeps the largest factor buffer (k² floats) for the next fx_gptq_new of
 * the process: fresh pages cost a fifth of a large factorization. */
void fx_gptq_free(struct fx_gptq *g);
/* The damping factor that succeeded (damp, or damp·10^j). */
double fx_gptq_damp_used(const struct fx_gptq *g);
/* Columns with H_ii = 0. */
int64_t fx_gptq_dead(const struct fx_gptq *g);

/* Codes of nr rows of w (nr,k) (overwritten: scratch), in the fx.quant
 * layout (codes (nr,k/2)), with fixed dequantization parameters per row
 * and group (G = 64 for INT4/W4A16, 16 for NVFP4):
 *   INT4   gs (nr,k/64) the BF16 scale's value: q = clamp(rne(w/S),-8,7)
 *   W4A16  gs as INT4, gz (nr,k/64) the stored zero's value:
 *          q = clamp(rne(w/S),-7,8), u = q+7, w' = u·S + Z
 *   NVFP4  gs (nr,k/16) the e4m3 scale's value, rt (nr) the row's tensor
 *          scale T: code = e2m1_lowtie((w/T)/S), w' = (v·S)·T
 * as the RTN quantizers do, so a diagonal H gives their codes. gz is read
 * only for W4A16 and rt only for NVFP4 (either may be NULL otherwise). */
int fx_gptq_rows(const struct fx_gptq *g, enum fx_qprec p, float *w, int64_t nr,
		 const float *gs, const float *gz, const float *rt, uint8_t *codes,
		 struct fx_err *err);

#endif
