/* Shared, non-hot parts of the quantizers (argument checks, per-tensor
 * NVFP4 scale, clipping-search Gram blocks). Included by kernels/ref/quant.c
 * and kernels/cpu/quant.c only, so both make the same choices bit for bit. */
#ifndef FX_QUANT_IMPL_H
#define FX_QUANT_IMPL_H

#include "fx-quant.h"
#include "fx-tensor.h"

#include <stdlib.h>
#include <string.h>

static const float fxq_default_shrink[] = { 1.0f, 0.95f, 0.9f, 0.85f, 0.8f, 0.75f, 0.7f };

static inline int fxq_check(const char *what, int64_t n, int64_t k, int64_t group,
			    const struct fx_qsearch *s, struct fx_err *err)
{
	if (n <= 0 || k <= 0 || k % group)
		return fx_error(err, FX_E_ARG, "%s: shape [%lld,%lld]: k must be a positive multiple of %lld",
				what, (long long)n, (long long)k, (long long)group);
	if (s && (!s->x || s->m <= 0 || s->nshrink < 0 || s->nshrink > FX_QUANT_MAX_SHRINK ||
		  (s->shrink && s->nshrink == 0)))
		return fx_error(err, FX_E_ARG, "%s: bad clipping search arguments", what);
	return 0;
}

static inline const float *fxq_shrink(const struct fx_qsearch *s, int *count)
{
	if (!s) {
		*count = 1;
		return fxq_default_shrink;
	}
	if (s->shrink) {
		*count = s->nshrink;
		return s->shrink;
	}
	*count = (int)FX_ARRAY_SIZE(fxq_default_shrink);
	return fxq_default_shrink;
}

/* Rejects NaN/Inf anywhere in w (returns the first bad index or -1). */
static inline int64_t fxq_find_nonfinite(const float *w, size_t count)
{
	for (size_t i = 0; i < count; i++)
		if (!(w[i] - w[i] == 0.0f))
			return (int64_t)i;
	return -1;
}

/* The CPU quantizer's branch-free NVFP4 group scale code of v >= 0 (finite):
 * fx_f32_to_e4m3(bf16(v)), with 0 mapped to 0x01. Exposed for its test. */
uint8_t fxq_scale_fp4(float v);

/* T = smallest bf16 value >= (amax/6)/448 (1 for an all-zero tensor). */
static inline float fxq_nvfp4_tscale(float amax)
{
	float t;
	uint16_t b;

	if (!(amax > 0.0f))
		return 1.0f;
	t = (amax / 6.0f) / 448.0f;
	b = fx_f32_to_bf16(t);
	if (fx_bf16_to_f32(b) < t)
		b++;
	if (b == 0)
		b = 1;
	return fx_bf16_to_f32(b);
}

/* Gram blocks H_g = X_g^T X_g (f64), g = 0..k/group-1, each group x group,
 * accumulated in row order of x. Returns NULL on allocation failure. */
static inline double *fxq_gram_alloc(int64_t k, int64_t group)
{
	return calloc((size_t)k * (size_t)group, sizeof(double));
}

static inline void fxq_gram_block(double *h, const float *x, int64_t m, int64_t k,
				  int64_t group, int64_t g)
{
	double *hg = h + (size_t)g * (size_t)(group * group);
	for (int64_t r = 0; r < m; r++) {
		const float *xr = x + (size_t)r * (size_t)k + (size_t)(g * group);
		for (int64_t i = 0; i < group; i++) {
			double xi = xr[i];
			for (int64_t j = 0; j < group; j++)
				hg[i * group + j] += xi * (double)xr[j];
		}
	}
}

typedef double fxq_v4d __attribute__((vector_size(32)));

/* e^T H_g e with e = w - deq over one group. H_g is symmetric bit for bit
 * (fxq_gram_block sums x_i x_j and x_j x_i in the same row order), so row j
 * serves as column j: each t_i still sums over j in order, as the row-wise
 * form does, while the loop over i vectorizes (a reduction over j would
 * not, without reordering the sums). */
static inline __attribute__((always_inline)) double fxq_group_err(const double *hg, const float *w, const float *deq,
				   int64_t group)
{
	double e[64], t[64], acc = 0.0;
	for (int64_t i = 0; i < group; i++)
		e[i] = (double)w[i] - (double)deq[i];
	/* 16 sums at a time in named vector registers (group is 16 or 64);
	 * elementwise multiply, then add: the scalar form's operations */
	for (int64_t ib = 0; ib < group; ib += 16) {
		fxq_v4d a0 = { 0 }, a1 = { 0 }, a2 = { 0 }, a3 = { 0 }, h0, h1, h2, h3;
		for (int64_t j = 0; j < group; j++) {
			const double *hj = hg + j * group + ib;
			fxq_v4d ev = { e[j], e[j], e[j], e[j] };
			memcpy(&h0, hj, sizeof(h0));
			memcpy(&h1, hj + 4, sizeof(h1));
			memcpy(&h2, hj + 8, sizeof(h2));
			memcpy(&h3, hj + 12, sizeof(h3));
			a0 += h0 * ev;
			a1 += h1 * ev;
			a2 += h2 * ev;
			a3 += h3 * ev;
		}
		memcpy(t + ib, &a0, sizeof(a0));
		memcpy(t + ib + 4, &a1, sizeof(a1));
		memcpy(t + ib + 8, &a2, sizeof(a2));
		memcpy(t + ib + 12, &a3, sizeof(a3));
	}
	for (int64_t i = 0; i < group; i++)
		acc += e[i] * t[i];
	return acc;
}

#endif
