/* What the Nunchaku runtime computes for one module (spec §3.2, §3.3), as a
 * slow f32 reference: used to check that a packed or quantized module gives
 * the original layer's outputs, and to measure error the way the GPU sees it.
 *
 * Differences from the GPU, by design: the activation scale reciprocal is
 * exact (GPU: rcp.approx), and the GEMM sums each group's products in k
 * order in f32 before scaling (the tensor cores sum in another order).
 */
#ifndef FX_RUNTIME_H
#define FX_RUNTIME_H

#include "fx-quant.h"

#define FX_RT_FC2_SHIFT 0.171875f   /* INT4 *_fc2 activation shift c (spec §2.3.3) */

enum fx_rt_flags {
	FX_RT_NO_ACTQ = 1 << 0,   /* skip activation quantization: qa = x', sa = 1 */
	FX_RT_F32 = 1 << 1,       /* skip the 16-bit roundings (input, x', GEMM result, output) */
};

/* One W4A4 module, unpacked: fx.quant buffers plus f32 vectors/matrices.
 * NULL vectors mean: smooth ones, bias zero, wcscales absent, no low-rank. */
struct fx_rt_w4a4 {
	enum fx_qprec prec;          /* FX_QPREC_INT4 or FX_QPREC_NVFP4 */
	int64_t n, k, r;
	const uint8_t *codes;        /* (n, k/2), fx.quant nibble layout */
	const void *wscales;         /* INT4: uint16_t bf16 (n, k/64); NVFP4: uint8_t e4m3 (n, k/16) */
	float wtscale;               /* NVFP4; 0 is read as 1 (absent) */
	const float *wcscales;       /* (n) */
	const float *smooth;         /* (k): x' = x / smooth */
	const float *lora_down;      /* Ld (k, r) row-major, as stored: already divided by s */
	const float *lora_up;        /* Lu (n, r) row-major */
	const float *bias;           /* (n), as stored */
	bool fc2_shift;              /* INT4 *_fc2: x' = (x + c)/smooth, unsigned activations */
	float lora_scale;            /* lambda of every 16-rank slice; 0 is read as 1 */
};

/* y (m, n) = module(x (m, k)); OpenMP over rows. */
int fx_rt_w4a4_forward_ref(float *y, const struct fx_rt_w4a4 *mod, const float *x, int64_t m,
			   unsigned flags, struct fx_err *err);

/* The linear map the module represents without activation quantization
 * (spec §3.2): weff (n, k) = Rdq/smooth + Lu·Ld^T, cterm (n) = bias +
 * c·Σ_k Rdq/smooth (c = the fc2 shift or 0); f64 sums, f32 out. */
int fx_rt_w4a4_effective(float *weff, float *cterm, const struct fx_rt_w4a4 *mod,
			 struct fx_err *err);

/* INT4 *_fc2 bias to store (spec §2.3.3): out[n] = b[n] - Σ_k res[n][k]·c/smooth[k]
 * in f64. res is the smoothed residual the runtime multiplies: pass the
 * dequantized one (Rdq) to cancel exactly the constant the runtime adds
 * (upstream uses the unquantized W - Lu·Ld^T, equal up to quantization
 * error). b NULL: zero. out may alias b. */
int fx_rt_fc2_bias(float *out, const float *b, const float *res, const float *smooth,
		   int64_t n, int64_t k, float c, struct fx_err *err);

/* W4A16 adaLN GEMV (spec §2.4, §3.3): y (m, n) = x·(u·scale + zero)^T + bias,
 * rows in the runtime's interleaved order; bias (n) as stored (with +1), or
 * NULL. f32 throughout. */
int fx_rt_w4a16_forward_ref(float *y, const uint8_t *codes, const uint16_t *scales,
			    const uint16_t *zeros, const float *bias, int64_t n, int64_t k,
			    const float *x, int64_t m, struct fx_err *err);

#endif
