/* CPU quantizers: OpenMP over rows, branch-free inner loops. Must produce
 * the same bytes as kernels/ref/quant.c (same f32 operations in the same
 * order; rounding by the 1.5·2^23 trick instead of rintf, E2M1 by
 * thresholds instead of a table search). */
#include "fx-quant.h"
#include "fx-quant-impl.h"
#include "fx-cpu-simd.h"
#include "../../common/fx-tensor.h"

#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#define RNE_MAGIC 12582912.0f   /* 1.5·2^23: (v + M) - M rounds |v| < 2^22 to nearest even */

static const float e2m1_vals[16] = {
	0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
	-0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f,
};

/* Nearest E2M1, ties to the lower index: count the midpoints strictly below |v|. */
static inline unsigned e2m1_lowtie(float v)
{
	float a = fabsf(v);
	unsigned c = (unsigned)(a > 0.25f) + (unsigned)(a > 0.75f) + (unsigned)(a > 1.25f) +
		     (unsigned)(a > 1.75f) + (unsigned)(a > 2.5f) + (unsigned)(a > 3.5f) +
		     (unsigned)(a > 5.0f);
	return c | ((v < 0.0f && c) ? 8u : 0u);
}

static inline float rne_clamp(float v, float lo, float hi)
{
	v = v < lo ? lo : v;
	v = v > hi ? hi : v;
	return (v + RNE_MAGIC) - RNE_MAGIC;
}

/* Max of |v| over count (a multiple of 16) elements; max is exact in any order. */
static inline float absmax(const float *restrict v, int64_t count)
{
	float m = 0.0f;
#pragma omp simd reduction(max:m)
	for (int64_t i = 0; i < count; i++) {
		float a = fabsf(v[i]);
		m = a > m ? a : m;
	}
	return m;
}

typedef uint32_t fx_u32_alias __attribute__((may_alias));


/* Any NaN/Inf in w: the exponent field is all ones. */
static bool row_finite(const float *w, int64_t k)
{
	const fx_u32_alias *u = (const fx_u32_alias *)w;
	uint32_t bad = 0;
#pragma omp simd reduction(|:bad)
	for (int64_t i = 0; i < k; i++)
		bad |= (u[i] & 0x7f800000u) + 0x00800000u;
	return !(bad & 0x80000000u);
}

static int check_finite(const char *what, const float *w, int64_t n, int64_t k, struct fx_err *err)
{
	int64_t bad_row = -1;

#pragma omp parallel for schedule(static)
	for (int64_t r = 0; r < n; r++) {
		if (!row_finite(w + r * k, k)) {
#pragma omp critical(fxq_bad)
			if (bad_row < 0 || r < bad_row)
				bad_row = r;
		}
	}
	if (bad_row >= 0) {
		int64_t c = fxq_find_nonfinite(w + bad_row * k, (size_t)k);
		return fx_error(err, FX_E_VALUE, "%s: non-finite weight at [%lld,%lld]", what,
				(long long)bad_row, (long long)c);
	}
	return 0;
}

static double *build_gram(const struct fx_qsearch *s, int64_t k, int64_t group)
{
	double *h = fxq_gram_alloc(k, group);
	if (!h)
		return NULL;
#pragma omp parallel for schedule(dynamic, 1)
	for (int64_t g = 0; g < k / group; g++)
		fxq_gram_block(h, s->x, s->m, k, group, g);
	return h;
}

/* ---- INT4 / W4A16 integer groups ------------------------------------ */

/* q values of one group for scale bits sb (bf16 > 0). */
static inline void int_codes(const float *restrict w, float s, float lo, float hi,
			     float *restrict q)
{
#pragma omp simd
	for (int i = 0; i < 64; i++)
		q[i] = rne_clamp(w[i] / s, lo, hi);
}

static inline uint16_t int_scale(float amax, float a, float qmax)
{
	uint16_t sb = fx_f32_to_bf16((a * amax) / qmax);
	return fx_bf16_to_f32(sb) > 0.0f ? sb : 0x3f80;
}

static inline void store_nibbles(uint8_t *restrict dst, const float *restrict q, int count,
				 int bias, unsigned mask)
{
#pragma omp simd
	for (int i = 0; i < count; i += 2) {
		unsigned lo = (unsigned)((int)q[i] + bias) & mask;
		unsigned hi = (unsigned)((int)q[i + 1] + bias) & mask;
		dst[i / 2] = (uint8_t)(lo | (hi << 4));
	}
}

/* Picks the best candidate scale of one integer group by its Gram block hg
 * (the clipping search; without one, int_row_plain); fills q and returns
 * the scale bits. zero7: W4A16 (dequant u·S + bf16(-7S), q in [-7, 8]). */
FX_CPU_CLONES
static uint16_t int_group_best(const float *wg, const double *hg, const float *sh, int nsh,
			       bool zero7, float *q)
{
	const float lo = zero7 ? -7.0f : -8.0f, hi = zero7 ? 8.0f : 7.0f;
	float amax = absmax(wg, 64), tq[64], deq[64];
	uint16_t best_sb = 0x3f80;
	double best = INFINITY;

	if (!(amax > 0.0f)) {
		for (int i = 0; i < 64; i++)
			q[i] = 0.0f;
		return 0x3f80;
	}
	for (int c = 0; c < nsh; c++) {
		uint16_t sb = int_scale(amax, sh[c], 7.0f);
		float s = fx_bf16_to_f32(sb);
		double e;

		int_codes(wg, s, lo, hi, tq);
		if (zero7) {
			float z = fx_bf16_to_f32(fx_f32_to_bf16(-7.0f * s));
			for (int i = 0; i < 64; i++)
				deq[i] = (tq[i] + 7.0f) * s + z;
		} else {
			for (int i = 0; i < 64; i++)
				deq[i] = tq[i] * s;
		}
		e = fxq_group_err(hg, wg, deq, 64);
		if (c == 0 || e < best) {
			best = e;
			best_sb = sb;
			memcpy(q, tq, sizeof(tq));
		}
	}
	return best_sb;
}

/* One row of INT4 or W4A16 (zero7) with the single scale candidate a,
 * vectorized like nvfp4_row: group maxima, scales (bf16 rounding on the
 * bits), codes. The operations of int_group_best's plain path. */
FX_CPU_CLONES
static void int_row_plain(uint8_t *restrict codes, uint16_t *restrict scales,
			  uint16_t *restrict zeros, const float *restrict w, int64_t k, float a,
			  bool zero7)
{
	const float lo = zero7 ? -7.0f : -8.0f, hi = zero7 ? 8.0f : 7.0f;
	const unsigned bias = zero7 ? 7u : 0u;
	float gm[64], sv[64];

	for (int64_t g0 = 0; g0 < k / 64; g0 += 64) {
		int64_t ng = k / 64 - g0 < 64 ? k / 64 - g0 : 64;

		for (int64_t g = 0; g < ng; g++) {
			const float *wg = w + (g0 + g) * 64;
			float m[16];

			for (int j = 0; j < 16; j++) {
				float x0 = fabsf(wg[j]), x1 = fabsf(wg[16 + j]);
				float x2 = fabsf(wg[32 + j]), x3 = fabsf(wg[48 + j]);

				x0 = fx_select_f32(x1 > x0, x1, x0);
				x2 = fx_select_f32(x3 > x2, x3, x2);
				m[j] = fx_select_f32(x2 > x0, x2, x0);
			}
			for (int wdt = 8; wdt >= 1; wdt /= 2)
				for (int j = 0; j < wdt; j++)
					m[j] = fx_select_f32(m[j + wdt] > m[j], m[j + wdt], m[j]);
			gm[g] = m[0];
		}
#pragma omp simd
		for (int64_t g = 0; g < ng; g++) {
			float x = (a * gm[g]) / 7.0f, s;
			uint32_t u;

			memcpy(&u, &x, 4);
			u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;   /* bf16, RNE */
			/* an all-zero group, or a scale that rounds to 0: scale 1.0 */
			u = gm[g] > 0.0f && u != 0 ? u : 0x3f800000u;
			memcpy(&s, &u, 4);
			sv[g] = s;
			scales[g0 + g] = (uint16_t)(u >> 16);
			if (zeros) {
				float z = -7.0f * s;
				uint32_t uz;

				memcpy(&uz, &z, 4);
				uz = uz + 0x7fffu + ((uz >> 16) & 1u);
				zeros[g0 + g] = (uint16_t)(uz >> 16);
			}
		}
		for (int64_t g = 0; g < ng; g++) {
			const float *wg = w + (g0 + g) * 64, s = sv[g];
			uint32_t c32[64];

#pragma omp simd simdlen(8)
			for (int i = 0; i < 64; i++) {
				float v = wg[i] / s;

				v = fx_select_f32(v < lo, lo, v);
				v = fx_select_f32(v > hi, hi, v);
				c32[i] = ((uint32_t)(int32_t)((v + RNE_MAGIC) - RNE_MAGIC) + bias) & 15u;
			}
			for (int i = 0; i < 32; i++)
				codes[(g0 + g) * 32 + i] = (uint8_t)(c32[2 * i] | (c32[2 * i + 1] << 4));
		}
	}
}

/* One row of k: scales of its k/64 groups, codes. */
static void int4_row(uint8_t *codes, uint16_t *scales, const float *w, int64_t k, const double *h,
		     const float *sh, int nsh)
{
	const int64_t G = FX_QUANT_INT4_GROUP;
	float q[64];

	if (!h) {
		int_row_plain(codes, scales, NULL, w, k, sh[0], false);
		return;
	}
	for (int64_t g = 0; g < k / G; g++) {
		scales[g] = int_group_best(w + g * G, h + g * G * G, sh, nsh, false, q);
		store_nibbles(codes + g * (G / 2), q, (int)G, 0, 15u);
	}
}

static void w4a16_row(uint8_t *codes, uint16_t *scales, uint16_t *zeros, const float *w,
		      int64_t k, const double *h, const float *sh, int nsh)
{
	const int64_t G = FX_QUANT_W4A16_GROUP;
	float q[64];

	if (!h) {
		int_row_plain(codes, scales, zeros, w, k, sh[0], true);
		return;
	}
	for (int64_t g = 0; g < k / G; g++) {
		uint16_t sb = int_group_best(w + g * G, h + g * G * G, sh, nsh, true, q);

		scales[g] = sb;
		zeros[g] = fx_f32_to_bf16(-7.0f * fx_bf16_to_f32(sb));
		store_nibbles(codes + g * (G / 2), q, (int)G, 7, 15u);
	}
}

void fx_quant_int4_rows_cpu(uint8_t *codes, uint16_t *scales, const float *w, int64_t nrows,
			    int64_t k)
{
#pragma omp parallel for schedule(static) if (nrows * k > 65536)
	for (int64_t r = 0; r < nrows; r++)
		int4_row(codes + r * (k / 2), scales + r * (k / FX_QUANT_INT4_GROUP), w + r * k, k,
			 NULL, fxq_default_shrink, 1);
}

void fx_quant_w4a16_rows_cpu(uint8_t *codes, uint16_t *scales, uint16_t *zeros, const float *w,
			     int64_t nrows, int64_t k)
{
	const int64_t ng = k / FX_QUANT_W4A16_GROUP;

#pragma omp parallel for schedule(static) if (nrows * k > 65536)
	for (int64_t r = 0; r < nrows; r++)
		w4a16_row(codes + r * (k / 2), scales + r * ng, zeros + r * ng, w + r * k, k, NULL,
			  fxq_default_shrink, 1);
}

int fx_quant_int4_cpu(uint8_t *codes, uint16_t *scales, const float *w, int64_t n, int64_t k,
		      const struct fx_qsearch *search, struct fx_err *err)
{
	const int64_t G = FX_QUANT_INT4_GROUP, ng = k / G;
	double *h = NULL;
	int nsh, ret;
	const float *sh;

	if ((ret = fxq_check("int4", n, k, G, search, err)) < 0 ||
	    (ret = check_finite("int4", w, n, k, err)) < 0)
		return ret;
	sh = fxq_shrink(search, &nsh);
	if (search && !(h = build_gram(search, k, G)))
		return fx_error(err, FX_E_NOMEM, "int4: no memory for the search");
#pragma omp parallel for schedule(static)
	for (int64_t r = 0; r < n; r++)
		int4_row(codes + r * (k / 2), scales + r * ng, w + r * k, k, h, sh, nsh);
	free(h);
	return 0;
}

int fx_quant_w4a16_cpu(uint8_t *codes, uint16_t *scales, uint16_t *zeros, const float *w,
		       int64_t n, int64_t k, int nchunk, const struct fx_qsearch *search,
		       struct fx_err *err)
{
	const int64_t G = FX_QUANT_W4A16_GROUP, ng = k / G;
	double *h = NULL;
	int nsh, ret;
	const float *sh;

	if ((ret = fxq_check("w4a16", n, k, G, search, err)) < 0)
		return ret;
	if (nchunk < 1 || n % nchunk)
		return fx_error(err, FX_E_ARG, "w4a16: %lld rows do not split into %d chunks",
				(long long)n, nchunk);
	if ((ret = check_finite("w4a16", w, n, k, err)) < 0)
		return ret;
	sh = fxq_shrink(search, &nsh);
	if (search && !(h = build_gram(search, k, G)))
		return fx_error(err, FX_E_NOMEM, "w4a16: no memory for the search");
#pragma omp parallel for schedule(static)
	for (int64_t r = 0; r < n; r++)
		w4a16_row(codes + r * (k / 2), scales + r * ng, zeros + r * ng,
			  w + fx_quant_adaln_src_row(r, n, nchunk) * k, k, h, sh, nsh);
	free(h);
	return 0;
}

/* ---- NVFP4 ----------------------------------------------------------- */


static inline uint8_t fp4_scale(float gmax, float a, float t)
{
	uint8_t sf = fx_f32_to_e4m3(fx_bf16_to_f32(fx_f32_to_bf16(((a * gmax) / 6.0f) / t)));
	return sf ? sf : 0x01;
}

static inline void fp4_codes(const float *restrict w, float t, float s, uint8_t *restrict c)
{
#pragma omp simd
	for (int i = 0; i < 16; i++)
		c[i] = (uint8_t)e2m1_lowtie((w[i] / t) / s);
}

static inline uint32_t bits_of(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static inline float float_of(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* fp4_scale for a finite v = ((a·gmax)/6)/t >= 0 without branches, so that
 * a row's scales vectorize: bf16 rounding, then E4M3 (subnormals below 2^-6
 * by the add-and-subtract rounding, normals by a rounding carry on the
 * bits, saturation at 448), 0 -> 0x01. Checked exhaustively against
 * fx_f32_to_e4m3 in the tests (fxq_scale_fp4). */
static inline uint32_t fp4_scale_bits(float v)
{
	uint32_t u = bits_of(v), code, sub, nrm;

	u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;   /* bf16, RNE */
	sub = (uint32_t)((float_of(u) * 512.0f + 8388608.0f) - 8388608.0f);
	nrm = ((u + 0x7ffffu + ((u >> 20) & 1u)) >> 20) - (120u << 3);
	nrm = nrm > 0x7eu ? 0x7eu : nrm;
	code = u >= 0x43e00000u ? 0x7eu : u < 0x3c800000u ? sub : nrm;
	return code ? code : 0x01u;
}

static inline float e4m3_pos_value(uint32_t c)
{
	uint32_t e = c >> 3, m = c & 7u;
	return e ? float_of(((e + 120u) << 23) | (m << 20)) : (float)m * (1.0f / 512.0f);
}

/* max |w[i]| of 16 values as a tree (exact in any order; vectorizes as one
 * pair of vectors where the reduction loop would not). */
static inline float max16(const float *restrict w)
{
	float m[8];

	for (int i = 0; i < 8; i++) {
		float a = fabsf(w[i]), b = fabsf(w[i + 8]);
		m[i] = a > b ? a : b;
	}
	for (int i = 0; i < 4; i++)
		m[i] = m[i] > m[i + 4] ? m[i] : m[i + 4];
	for (int i = 0; i < 2; i++)
		m[i] = m[i] > m[i + 2] ? m[i] : m[i + 2];
	return m[0] > m[1] ? m[0] : m[1];
}

uint8_t fxq_scale_fp4(float v)
{
	return (uint8_t)fp4_scale_bits(v);
}

/* One row of NVFP4 with the single scale candidate a: group maxima, scales,
 * codes, nibbles. gm and sv are k/16 scratch entries each. */
FX_CPU_CLONES
static void nvfp4_row(uint8_t *restrict codes, uint8_t *restrict scales,
		      const float *restrict w, int64_t k, float t, float a,
		      float *restrict gm, float *restrict sv)
{
	const int64_t ng = k / 16;

	for (int64_t g = 0; g < ng; g++)
		gm[g] = max16(w + g * 16);
#pragma omp simd
	for (int64_t g = 0; g < ng; g++) {
		uint32_t sf = fp4_scale_bits(((a * gm[g]) / 6.0f) / t);

		/* an all-zero group keeps scale 1.0 (0x38); its codes are 0 either way */
		sf = gm[g] > 0.0f ? sf : 0x38u;
		scales[g] = (uint8_t)sf;
		sv[g] = e4m3_pos_value(sf);
	}
	for (int64_t g = 0; g < ng; g++) {
		const float s = sv[g];
		uint32_t c32[16];

#pragma omp simd simdlen(8)
		for (int i = 0; i < 16; i++)
			c32[i] = e2m1_lowtie((w[g * 16 + i] / t) / s);
		for (int i = 0; i < 8; i++)
			codes[g * 8 + i] = (uint8_t)(c32[2 * i] | (c32[2 * i + 1] << 4));
	}
}

/* Row maxima of |w| and a finiteness check in one pass. */
FX_CPU_CLONES
static void row_stats(const float *restrict w, int64_t k, float *amax, bool *finite)
{
	const fx_u32_alias *u = (const fx_u32_alias *)w;
	uint32_t bad = 0;
	float m = 0.0f;

#pragma omp simd reduction(|:bad) reduction(max:m)
	for (int64_t i = 0; i < k; i++) {
		float x = fabsf(w[i]);
		bad |= (u[i] & 0x7f800000u) + 0x00800000u;
		m = x > m ? x : m;
	}
	*amax = m;
	*finite = !(bad & 0x80000000u);
}

bool fx_quant_row_absmax(float *amax, const float *w, int64_t nrows, int64_t k)
{
	bool ok = true;

#pragma omp parallel for schedule(static) reduction(&&:ok) if (nrows * k > 65536)
	for (int64_t r = 0; r < nrows; r++) {
		bool fin;

		row_stats(w + r * k, k, &amax[r], &fin);
		ok = ok && fin;
	}
	return ok;
}

float fx_quant_nvfp4_tscale(float amax)
{
	return fxq_nvfp4_tscale(amax);
}

int fx_quant_nvfp4_rows_cpu(uint8_t *codes, uint8_t *scales, const float *w, int64_t nrows,
			    int64_t k, float t, struct fx_err *err)
{
	const int64_t ng = k / FX_QUANT_FP4_GROUP;
	/* per thread: group maxima and scale values of one row */
	const size_t per = ((size_t)ng * 2 * sizeof(float) + 63) & ~(size_t)63;
	unsigned char *scratch;
	int ret;

	if ((ret = fxq_check("nvfp4", nrows > 0 ? nrows : 1, k, FX_QUANT_FP4_GROUP, NULL, err)) < 0)
		return ret;
	if (!(scratch = malloc(per * (size_t)omp_get_max_threads())))
		return fx_error(err, FX_E_NOMEM, "nvfp4: out of memory");
#pragma omp parallel for schedule(static) if (nrows * k > 65536)
	for (int64_t r = 0; r < nrows; r++) {
		float *gm = (float *)(scratch + (size_t)omp_get_thread_num() * per);

		nvfp4_row(codes + r * (k / 2), scales + r * ng, w + r * k, k, t, fxq_default_shrink[0],
			  gm, gm + ng);
	}
	free(scratch);
	return 0;
}

/* The candidate scale of one NVFP4 group with the lowest error against its
 * Gram block hg (the clipping search): fills c, returns the scale code. */
FX_CPU_CLONES
static uint8_t fp4_group_best(const float *wg, const double *hg, float gmax, const float *sh,
			      int nsh, float t, uint8_t *c)
{
	double best = INFINITY;
	uint8_t sf = 0x38;

	for (int ci = 0; ci < nsh; ci++) {
		uint8_t tc[16], tsf = fp4_scale(gmax, sh[ci], t);
		float s = fx_e4m3_to_f32(tsf), deq[16];
		double e;

		fp4_codes(wg, t, s, tc);
		for (int i = 0; i < 16; i++)
			deq[i] = (e2m1_vals[tc[i]] * s) * t;
		e = fxq_group_err(hg, wg, deq, 16);
		if (ci == 0 || e < best) {
			best = e;
			sf = tsf;
			memcpy(c, tc, 16);
		}
	}
	return sf;
}

int fx_quant_nvfp4_cpu(uint8_t *codes, uint8_t *scales, float *rscale, const float *w,
		       int64_t n, int64_t k, const int64_t *member_rows, int nmember,
		       const struct fx_qsearch *search, struct fx_err *err)
{
	const int64_t G = FX_QUANT_FP4_GROUP, ng = k / G;
	double *h = NULL;
	int nsh, ret;
	const float *sh;
	int64_t one = n, row0 = 0;
	float *ramax;

	if ((ret = fxq_check("nvfp4", n, k, G, search, err)) < 0)
		return ret;
	if (member_rows && nmember > 1) {
		int64_t sum = 0;
		for (int i = 0; i < nmember; i++) {
			if (member_rows[i] <= 0)
				return fx_error(err, FX_E_ARG, "nvfp4: member %d has %lld rows", i,
						(long long)member_rows[i]);
			sum += member_rows[i];
		}
		if (sum != n)
			return fx_error(err, FX_E_ARG, "nvfp4: member rows sum to %lld, expected %lld",
					(long long)sum, (long long)n);
	} else {
		member_rows = &one;
		nmember = 1;
	}
	if (!(ramax = malloc((size_t)n * sizeof(float))))
		return fx_error(err, FX_E_NOMEM, "nvfp4: out of memory");
	if (!fx_quant_row_absmax(ramax, w, n, k)) {
		int64_t r = 0, c;

		while (fxq_find_nonfinite(w + r * k, (size_t)k) < 0)
			r++;
		c = fxq_find_nonfinite(w + r * k, (size_t)k);
		free(ramax);
		return fx_error(err, FX_E_VALUE, "nvfp4: non-finite weight at [%lld,%lld]",
				(long long)r, (long long)c);
	}
	sh = fxq_shrink(search, &nsh);
	if (search && !(h = build_gram(search, k, G))) {
		free(ramax);
		return fx_error(err, FX_E_NOMEM, "nvfp4: no memory for the search");
	}
	for (int mi = 0; mi < nmember; mi++) {
		int64_t r1 = row0 + member_rows[mi];
		float amax = 0.0f, t;

		for (int64_t r = row0; r < r1; r++)
			amax = ramax[r] > amax ? ramax[r] : amax;
		t = fxq_nvfp4_tscale(amax);
		for (int64_t r = row0; r < r1; r++)
			rscale[r] = t;
		if (!h) {
			ret = fx_quant_nvfp4_rows_cpu(codes + row0 * (k / 2), scales + row0 * ng,
						      w + row0 * k, r1 - row0, k, t, err);
			if (ret < 0)
				break;
			row0 = r1;
			continue;
		}
#pragma omp parallel for schedule(static)
		for (int64_t r = row0; r < r1; r++) {
			for (int64_t g = 0; g < ng; g++) {
				const float *wg = w + r * k + g * G;
				float gmax = absmax(wg, G);
				uint8_t c[16], sf = 0x38;
				uint8_t *dst = codes + r * (k / 2) + g * (G / 2);

				if (!(gmax > 0.0f)) {
					memset(c, 0, sizeof(c));
				} else {
					sf = fp4_group_best(wg, h + g * G * G, gmax, sh, nsh, t, c);
				}
				scales[r * ng + g] = sf;
				for (int i = 0; i < 16; i += 2)
					dst[i / 2] = (uint8_t)(c[i] | (c[i + 1] << 4));
			}
		}
		row0 = r1;
	}
	free(h);
	free(ramax);
	return ret;
}

/* ---- dequantizers ---------------------------------------------------- */

int fx_dequant_int4_cpu(float *w, const uint8_t *codes, const uint16_t *scales,
			int64_t n, int64_t k, struct fx_err *err)
{
	const int64_t ng = k / FX_QUANT_INT4_GROUP;
	int ret = fxq_check("int4 dequant", n, k, FX_QUANT_INT4_GROUP, NULL, err);
	if (ret < 0)
		return ret;
#pragma omp parallel for schedule(static)
	for (int64_t r = 0; r < n; r++) {
		const uint8_t *cr = codes + r * (k / 2);
		float *wr = w + r * k;
		for (int64_t g = 0; g < ng; g++) {
			float s = fx_bf16_to_f32(scales[r * ng + g]);
			for (int64_t i = g * 64; i < g * 64 + 64; i += 2) {
				int b = cr[i / 2];
				/* sign-extend each nibble */
				wr[i] = (float)(((b & 15) ^ 8) - 8) * s;
				wr[i + 1] = (float)(((b >> 4) ^ 8) - 8) * s;
			}
		}
	}
	return 0;
}

int fx_dequant_nvfp4_cpu(float *w, const uint8_t *codes, const uint8_t *scales,
			 const float *rscale, int64_t n, int64_t k, struct fx_err *err)
{
	const int64_t ng = k / FX_QUANT_FP4_GROUP;
	int ret = fxq_check("nvfp4 dequant", n, k, FX_QUANT_FP4_GROUP, NULL, err);
	if (ret < 0)
		return ret;
#pragma omp parallel for schedule(static)
	for (int64_t r = 0; r < n; r++) {
		const uint8_t *cr = codes + r * (k / 2);
		float *wr = w + r * k, t = rscale ? rscale[r] : 1.0f;
		for (int64_t g = 0; g < ng; g++) {
			float s = fx_e4m3_to_f32(scales[r * ng + g]);
			for (int64_t i = g * 16; i < g * 16 + 16; i += 2) {
				int b = cr[i / 2];
				wr[i] = (e2m1_vals[b & 15] * s) * t;
				wr[i + 1] = (e2m1_vals[b >> 4] * s) * t;
			}
		}
	}
	return 0;
}

int fx_dequant_w4a16_cpu(float *w, const uint8_t *codes, const uint16_t *scales,
			 const uint16_t *zeros, int64_t n, int64_t k, struct fx_err *err)
{
	const int64_t ng = k / FX_QUANT_W4A16_GROUP;
	int ret = fxq_check("w4a16 dequant", n, k, FX_QUANT_W4A16_GROUP, NULL, err);
	if (ret < 0)
		return ret;
#pragma omp parallel for schedule(static)
	for (int64_t r = 0; r < n; r++) {
		const uint8_t *cr = codes + r * (k / 2);
		float *wr = w + r * k;
		for (int64_t g = 0; g < ng; g++) {
			float s = fx_bf16_to_f32(scales[r * ng + g]), z = fx_bf16_to_f32(zeros[r * ng + g]);
			for (int64_t i = g * 64; i < g * 64 + 64; i += 2) {
				int b = cr[i / 2];
				wr[i] = (float)(b & 15) * s + z;
				wr[i + 1] = (float)(b >> 4) * s + z;
			}
		}
	}
	return 0;
}
