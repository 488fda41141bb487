/* Weight quantizers, dequantizers and the runtime's activation quantization.
 *
 * Inputs are (n, k) f32 row-major matrices (n output rows, k input features).
 * Outputs are the fx.quant buffers (design.md §2), caller-allocated:
 *   codes   (n, k/2) U8: two 4-bit codes a byte, even k in the low nibble;
 *           INT4: q & 15 with q in [-8, 7]; NVFP4: E2M1 code; W4A16: u in [0, 15]
 *   NVFP4   scales (n, k/16) F8_E4M3 codes + one f32 scale per row (rscale)
 *   INT4    scales (n, k/64) BF16 bit patterns
 *   W4A16   scales, zeros (n, k/64) BF16 bit patterns, rows interleaved
 *
 * _ref is the scalar oracle, _cpu the OpenMP version; both give identical
 * bytes for identical inputs (tests/unit/test-quant.c checks it).
 *
 * Scale choices (spec §3.1 fixes only storage; these are our decisions):
 *   INT4  S = bf16(a·max|w|/7), q = clamp(rne(w/S), -8, 7)        a: shrink (1 without search)
 *   NVFP4 T = smallest bf16 >= (max|w|/6)/448 over the tensor or a member
 *         (so every group scale fits in e4m3 and T is exact in BF16
 *         wtscale/wcscales); Sf = e4m3(bf16((a·gmax/6)/T)) (upstream's double
 *         rounding); code = nearest E2M1 of (w/T)/Sf, ties to the lower
 *         table index, never -0
 *   W4A16 S = bf16(a·max|w|/7), q = clamp(rne(w/S), -7, 8), u = q + 7,
 *         zero = bf16(-7·S)  (upstream's fixed zero point 7)
 * A group that is all zeros gets scale 1 (NVFP4 code 0x38) and code 0
 * (W4A16: u = 7), so no stored scale is 0 or NaN. Non-finite weights are
 * rejected with FX_E_VALUE.
 */
#ifndef FX_QUANT_H
#define FX_QUANT_H

#include "fx-err.h"

#define FX_QUANT_INT4_GROUP 64
#define FX_QUANT_FP4_GROUP 16
#define FX_QUANT_W4A16_GROUP 64
#define FX_QUANT_MAX_SHRINK 32

enum fx_qprec { FX_QPREC_INT4, FX_QPREC_NVFP4, FX_QPREC_W4A16, FX_QPREC_COUNT };

/* Optional clipping search: per (row, group) the scale is a·(max-based
 * scale) with a from shrink[], minimising e^T (X_g^T X_g) e where e is the
 * group's weight error and X_g the calibration columns of the group (a
 * block-diagonal proxy of ||X (W - deq)^T||^2; ties keep the earlier a).
 * x must be in the weight's input domain (for a smoothed residual: x/s). */
struct fx_qsearch {
	const float *x;          /* (m, k) row-major */
	int64_t m;
	const float *shrink;     /* NULL: the default 1.0, 0.95, ..., 0.7 */
	int nshrink;             /* <= FX_QUANT_MAX_SHRINK */
};

/* Sizes in bytes of the fx.quant buffers. */
size_t fx_quant_codes_size(int64_t n, int64_t k);
size_t fx_quant_scales_size(enum fx_qprec p, int64_t n, int64_t k);

/* INT4 signed, group 64. codes (n,k/2), scales (n,k/64) bf16. */
int fx_quant_int4_ref(uint8_t *codes, uint16_t *scales, const float *w, int64_t n, int64_t k,
		      const struct fx_qsearch *search, struct fx_err *err);
int fx_quant_int4_cpu(uint8_t *codes, uint16_t *scales, const float *w, int64_t n, int64_t k,
		      const struct fx_qsearch *search, struct fx_err *err);

/* NVFP4, group 16. member_rows: row counts of the fused members (sum n),
 * each gets its own T; NULL (or nmember <= 1): one T for the tensor.
 * rscale (n): T of each row's member. fx.quant keeps one f32 tscale per
 * member; fx-pack writes wtscale = T (one member) or wcscales = bf16(rscale)
 * (fused), both exact because T is a bf16 value. */
int fx_quant_nvfp4_ref(uint8_t *codes, uint8_t *scales, float *rscale, const float *w,
		       int64_t n, int64_t k, const int64_t *member_rows, int nmember,
		       const struct fx_qsearch *search, struct fx_err *err);
int fx_quant_nvfp4_cpu(uint8_t *codes, uint8_t *scales, float *rscale, const float *w,
		       int64_t n, int64_t k, const int64_t *member_rows, int nmember,
		       const struct fx_qsearch *search, struct fx_err *err);

/* W4A16 (adaLN), group 64. w is in source order with nchunk chunks of n/nchunk
 * rows (6 for norm1*, 3 for the single block's norm, 1 = no reordering);
 * outputs are in the runtime's interleaved order: out row i*S+j <- row j*D+i
 * (spec §2.4.1). search->x, if given, is the layer input (unaffected by the
 * interleave). */
int fx_quant_w4a16_ref(uint8_t *codes, uint16_t *scales, uint16_t *zeros, const float *w,
		       int64_t n, int64_t k, int nchunk, const struct fx_qsearch *search,
		       struct fx_err *err);
int fx_quant_w4a16_cpu(uint8_t *codes, uint16_t *scales, uint16_t *zeros, const float *w,
		       int64_t n, int64_t k, int nchunk, const struct fx_qsearch *search,
		       struct fx_err *err);

/* Streaming forms for callers that build a layer a block of rows at a time
 * (no clipping search): the same bytes as the whole-matrix _cpu functions.
 * The caller checks finiteness and picks NVFP4's T from the maxima of all
 * of a member's rows first. W4A16 rows come already in the output
 * (interleaved) order. */
bool fx_quant_row_absmax(float *amax, const float *w, int64_t nrows, int64_t k);  /* false: NaN/Inf */
float fx_quant_nvfp4_tscale(float amax);
int fx_quant_nvfp4_rows_cpu(uint8_t *codes, uint8_t *scales, const float *w, int64_t nrows,
			    int64_t k, float t, struct fx_err *err);
void fx_quant_int4_rows_cpu(uint8_t *codes, uint16_t *scales, const float *w, int64_t nrows,
			    int64_t k);
void fx_quant_w4a16_rows_cpu(uint8_t *codes, uint16_t *scales, uint16_t *zeros, const float *w,
			     int64_t nrows, int64_t k);

/* adaLN bias in the runtime's order: out[i*S+j] = bf16(b[j*D+i] + d_j), d_j = 1
 * for the scale chunks j = 1 and j = S-2, else 0 (spec §2.4.1). */
int fx_quant_adaln_bias(uint16_t *out, const float *b, int64_t n, int nchunk, struct fx_err *err);
/* Source row of interleaved row r (the permutation used above). */
int64_t fx_quant_adaln_src_row(int64_t r, int64_t n, int nchunk);

/* Dequantizers (f32 (n,k) out, rows in the order of the codes).
 * nvfp4: w = (v(code)·e4m3(scale))·rscale[row] (rscale NULL: 1).
 * w4a16: w = u·scale + zero. */
int fx_dequant_int4_ref(float *w, const uint8_t *codes, const uint16_t *scales,
			int64_t n, int64_t k, struct fx_err *err);
int fx_dequant_int4_cpu(float *w, const uint8_t *codes, const uint16_t *scales,
			int64_t n, int64_t k, struct fx_err *err);
int fx_dequant_nvfp4_ref(float *w, const uint8_t *codes, const uint8_t *scales,
			 const float *rscale, int64_t n, int64_t k, struct fx_err *err);
int fx_dequant_nvfp4_cpu(float *w, const uint8_t *codes, const uint8_t *scales,
			 const float *rscale, int64_t n, int64_t k, struct fx_err *err);
int fx_dequant_w4a16_ref(float *w, const uint8_t *codes, const uint16_t *scales,
			 const uint16_t *zeros, int64_t n, int64_t k, struct fx_err *err);
int fx_dequant_w4a16_cpu(float *w, const uint8_t *codes, const uint16_t *scales,
			 const uint16_t *zeros, int64_t n, int64_t k, struct fx_err *err);

/* Number codes. */
float fx_e2m1_value(unsigned code);              /* table of spec §4.8 */
/* Nearest E2M1 code, ties to the lower table index, never -0 (weights). */
uint8_t fx_e2m1_code_lowtie(float v);
/* Nearest E2M1 value, ties to even code, saturating (the runtime's
 * cvt.rn.satfinite.e2m1 on activations). */
float fx_e2m1_round_even(float v);

/* The runtime's activation quantization of one token row x' of length k
 * (spec §3.2 step 3). qa: the integer or E2M1 values as floats (k); sa: the
 * group scale as the GEMM uses it (k/16 or k/64).
 * nvfp4:  s = min(max|x|·(1/6), 448); sa = e4m3(s); qa = e2m1_rne(x·(1/s))
 * int4:   s = max|x|·(1/7); sa = bf16(s); qa = clamp(rne(x·(1/s)), -8, 7)
 * uint4:  as int4 with 1/15 and [0, 15] (INT4 *_fc2 after the shift)
 * The GPU's rcp.approx is modelled as an exact f32 reciprocal. A zero group
 * gives qa = 0. */
int fx_actq_nvfp4_ref(float *qa, float *sa, const float *x, int64_t k, struct fx_err *err);
int fx_actq_int4_ref(float *qa, float *sa, const float *x, int64_t k, bool is_unsigned,
		     struct fx_err *err);

#endif
