/* fx-lowrank on the CPU: OpenBLAS sgemm for every product (large ones in
 * panels over the OpenMP threads), LAPACK for QR and SVD, OpenMP row loops
 * for the quantizers and the error. The row
 * kernels are compiled for AVX-512, AVX2 and baseline x86-64 and picked at
 * load time (target_clones), so the default -O2 build still vectorises them.
 * Definitions: kernels/fx-lowrank.h. */
#include "../fx-lowrank.h"
#include "../../common/fx-tensor.h"
#include "../fx-ops.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && !defined(__SANITIZE_ADDRESS__)
#define ROWK __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define ROWK
#endif

/* Threads only pay off above ~1M elements; below, waking them (and the
 * spinning of OpenMP and OpenBLAS workers on 2 cores) costs more. */
#define BIG(work) ((int64_t)(work) >= ((int64_t)1 << 20))

#define RNE_MAGIC 12582912.0f   /* 1.5·2^23: (v + M) − M rounds |v| < 2^22 to nearest even */

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* BLAS threading: OpenBLAS single-threaded (its spinning workers took the
 * cores from the OpenMP loops around them); large products split into
 * panels over the OpenMP threads by fx_ops_gemm. */
#define pgemm fx_ops_gemm

void fx_lowrank_opts_init(struct fx_lowrank_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->rank = 32;
	o->grid = 20;
	o->iters = 100;
	o->method = FX_LOWRANK_RSVD;
	o->search_rows = 32;
	o->oversample = 16;
	o->power = 2;
	o->refine_power = 0;
	o->seed = 1;
	o->finalists = 3;
	o->abandon = 0.1;
}

int fx_lowrank_candidates(float *alpha, float *beta, int cap, int grid, struct fx_err *err)
{
	int n = 0, i;

	if (grid < 1 || grid > FX_LOWRANK_MAX_GRID)
		return fx_error(err, FX_E_ARG, "smoothing grid %d out of range 1-%d", grid,
				FX_LOWRANK_MAX_GRID);
	if (cap < 2 * (grid - 1) + 1)
		return fx_error(err, FX_E_ARG, "room for %d candidates, grid %d needs %d", cap, grid,
				2 * (grid - 1) + 1);
	alpha[n] = 0.0f;
	beta[n++] = 0.0f;
	for (i = 1; i < grid; i++) {
		alpha[n] = (float)i / (float)grid;
		beta[n++] = 0.0f;
	}
	/* walk back down so neighbours stay similar (warm-started rsvd) */
	for (i = grid - 1; i >= 1; i--) {
		alpha[n] = (float)i / (float)grid;
		beta[n++] = (float)(grid - i) / (float)grid;
	}
	return n;
}

static inline float bf16r(float f)
{
	uint32_t u;

	memcpy(&u, &f, 4);
	u += 0x7fffu + ((u >> 16) & 1u);
	u &= 0xffff0000u;
	memcpy(&f, &u, 4);
	return f;
}

void fx_lowrank_smooth(float *s, const float *xmax, const float *wmax, int64_t k,
		       float alpha, float beta)
{
	bool bad = false;
	float top = 0.0f;

	for (int64_t i = 0; i < k; i++)
		top = xmax[i] > top ? xmax[i] : top;
	for (int64_t i = 0; i < k; i++) {
		double v = 1.0;

		/* a channel that is (numerically) never active keeps s = 1, like an
		 * exact zero: a tiny s would blow its weights up by 1/s */
		if (alpha != 0.0f && !(xmax[i] > 1e-6f * top)) {
			s[i] = 1.0f;
			continue;
		}
		if (alpha != 0.0f)
			v *= pow((double)xmax[i], (double)alpha);
		if (beta != 0.0f)
			v /= pow((double)wmax[i], (double)beta);
		s[i] = (float)v;
		if (!isfinite(s[i]))
			bad = true;
		else if (s[i] == 0.0f)
			s[i] = 1.0f;
	}
	for (int64_t i = 0; i < k; i++) {
		float v = bad ? 1.0f : bf16r(s[i]);
		/* bf16 overflow or underflow of a finite s */
		s[i] = isfinite(v) && v > 0.0f ? v : 1.0f;
	}
}

/* ---- row kernels ---------------------------------------------------- */

/* E4M3 value and the nearest code of a positive finite f (saturating at
 * 448): inline copies of fx_e4m3_to_f32 / fx_f32_to_e4m3 for the group
 * loops (tests/unit/test-lowrank.c checks they give the same bytes). */
static inline float e4m3_val(uint32_t c)
{
	uint32_t e = (c >> 3) & 0xfu, m = c & 7u, u = ((e + 120u) << 23) | (m << 20);
	float v;

	if (e == 0)
		return (float)m * (1.0f / 512.0f);
	memcpy(&v, &u, 4);
	return v;
}

static inline uint32_t e4m3_code(float f)
{
	uint32_t a, code;

	memcpy(&a, &f, 4);
	a &= 0x7fffffffu;
	if (a >= 0x43e00000u) {
		code = 0x7e;
	} else if (a < 0x3c800000u) {
		float q = fabsf(f) * 512.0f, rem;
		uint32_t qi = (uint32_t)q;
		rem = q - (float)qi;
		if (rem > 0.5f || (rem == 0.5f && (qi & 1u)))
			qi++;
		code = qi;
	} else {
		uint32_t e = (a >> 23) - 120u, mant = a & 0x7fffffu, rem = mant & 0xfffffu;
		code = (e << 3) | (mant >> 20);
		if (rem > 0x80000u || (rem == 0x80000u && (code & 1u)))
			code++;
		if (code > 0x7e)
			code = 0x7e;
	}
	return code;
}

/* Nearest E2M1 magnitude of a = |v|: ties to the even code (activations)
 * or to the lower code (weights), by counting midpoints. */
static inline float e2m1_even_mag(float a)
{
	return 0.5f * (float)(a > 0.25f) + 0.5f * (float)(a >= 0.75f) +
	       0.5f * (float)(a > 1.25f) + 0.5f * (float)(a >= 1.75f) +
	       (float)(a > 2.5f) + (float)(a >= 3.5f) + 2.0f * (float)(a > 5.0f);
}

static inline float e2m1_low_mag(float a)
{
	return 0.5f * (float)(a > 0.25f) + 0.5f * (float)(a > 0.75f) +
	       0.5f * (float)(a > 1.25f) + 0.5f * (float)(a > 1.75f) +
	       (float)(a > 2.5f) + (float)(a > 3.5f) + 2.0f * (float)(a > 5.0f);
}

/* One activation row: out = deq(Q_a(bf16(bf16(x + c) / s))) − cs, where
 * cs = c/s per column (precomputed). fp4: group 16, else int4 group 64. */
ROWK static void actq_row(float *out, const float *x, const float *s, const float *cs, float c,
			  int64_t k, bool fp4, bool uns)
{
	const int G = fp4 ? 16 : 64;
	const float qmax = fp4 ? 6.0f : (uns ? 15.0f : 7.0f), lo = uns ? 0.0f : -8.0f;
	float xp[64];

	for (int64_t g = 0; g < k; g += G) {
		float amax = 0.0f, sc, sa, inv;

		for (int i = 0; i < G; i++) {
			float t = bf16r(bf16r(x[g + i]) + c);
			xp[i] = bf16r(s ? t / s[g + i] : t);
		}
		for (int i = 0; i < G; i++) {
			float a = fabsf(xp[i]);
			amax = a > amax ? a : amax;
		}
		sc = amax * (1.0f / qmax);
		if (fp4 && sc > 448.0f)
			sc = 448.0f;
		if (!(sc > 0.0f)) {
			for (int i = 0; i < G; i++)
				out[g + i] = cs ? -cs[g + i] : 0.0f;
			continue;
		}
		sa = fp4 ? e4m3_val(e4m3_code(sc)) : bf16r(sc);
		inv = 1.0f / sc;
		if (fp4) {
			for (int i = 0; i < G; i++) {
				float v = xp[i] * inv, q = e2m1_even_mag(fabsf(v));
				out[g + i] = (v < 0.0f ? -q : q) * sa;
			}
		} else {
			for (int i = 0; i < G; i++) {
				float v = xp[i] * inv;
				v = v < lo ? lo : v;
				v = v > qmax ? qmax : v;
				out[g + i] = ((v + RNE_MAGIC) - RNE_MAGIC) * sa;
			}
		}
		if (cs)
			for (int i = 0; i < G; i++)
				out[g + i] -= cs[g + i];
	}
}

/* Branch-free forms of e4m3_code / e4m3_val for loops over group scales. */
static inline uint32_t e4m3_code_bl(float f)
{
	float fc = f < 448.0f ? f : 448.0f, q = fc * 512.0f, r2;
	uint32_t a, e, mant, rem, cn, qi, cs;

	memcpy(&a, &f, 4);
	e = (a >> 23) - 120u;
	mant = a & 0x7fffffu;
	rem = mant & 0xfffffu;
	cn = (e << 3) | (mant >> 20);
	cn += (uint32_t)(rem > 0x80000u) | ((uint32_t)(rem == 0x80000u) & (cn & 1u));
	cn = cn > 0x7eu ? 0x7eu : cn;
	qi = (uint32_t)(int32_t)q;
	r2 = q - (float)(int32_t)qi;
	cs = qi + ((uint32_t)(r2 > 0.5f) | ((uint32_t)(r2 == 0.5f) & (qi & 1u)));
	return a >= 0x43e00000u ? 0x7eu : (a < 0x3c800000u ? cs : cn);
}

static inline float e4m3_val_bl(uint32_t c)
{
	uint32_t e = (c >> 3) & 0xfu, m = c & 7u, u = ((e + 120u) << 23) | (m << 20);
	float vn, vs = (float)(int32_t)m * (1.0f / 512.0f);

	memcpy(&vn, &u, 4);
	return e == 0 ? vs : vn;
}

/* Residual rows are quantized in three passes over chunks of groups: group
 * maxima, group scales (vectorised across groups), elements. A scale of 0
 * marks an all-zero group. */
#define QCHUNK 256

/* The group maxima and scales in vector form: the compiler left both
 * passes scalar (a 16-wide horizontal max, branches in e4m3_code_bl), and
 * they took more time than the elements. Same operations, same bytes. */
typedef float v8f __attribute__((vector_size(32)));
typedef uint32_t v8u __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

/* macros, not functions: a vector return value outside the AVX clones
 * changes the ABI */
#define VLD(v, p) memcpy(&(v), (p), sizeof(v))
/* mask ? a : b, for masks of all ones or zeros */
#define VSEL(mask, a, b) (((v8u)(mask) & (a)) | (~(v8u)(mask) & (b)))

/* max |v| of g floats (g a multiple of 8), as the scalar
 * m = |v| > m ? |v| : m from 0 (max is order-free) */
__attribute__((always_inline)) static inline float gmax(const float *w, int g)
{
	const v8u abs = (v8u){ 0 } + 0x7fffffffu;
	v8u a, b;
	v8f m;
	float r = 0.0f;

	VLD(a, w);
	a &= abs;
	for (int i = 8; i < g; i += 8) {
		VLD(b, w + i);
		b &= abs;
		a = VSEL((v8f)b > (v8f)a, b, a);
	}
	m = (v8f)a;
	for (int i = 0; i < 8; i++)
		r = m[i] > r ? m[i] : r;
	return r;
}

/* gs[g] <- the E4M3 group scale of maximum gs[g] (0 for 0), tensor scale
 * t, for 8 groups: e4m3_val_bl(e4m3_code_bl(bf16r((m / 6) / t)) or 1). */
__attribute__((always_inline)) static inline void gscale8_fp4(float *gs, float t)
{
	v8f m, f;
	v8u a, e, mant, rem, cn, qi, cs, code, u;
	v8f fc, q, r2, vs;

	VLD(m, gs);
	f = (m / 6.0f) / t;
	a = (v8u)f;
	a += 0x7fffu + ((a >> 16) & 1u);            /* bf16r */
	a &= 0xffff0000u;
	fc = (v8f)VSEL((v8f)a < 448.0f, a, (v8u){ 0 } + 0x43e00000u);
	q = fc * 512.0f;
	e = (a >> 23) - 120u;
	mant = a & 0x7fffffu;
	rem = mant & 0xfffffu;
	cn = (e << 3) | (mant >> 20);
	cn += ((v8u)(rem > 0x80000u) | ((v8u)(rem == 0x80000u) & (cn & 1u))) & 1u;
	cn = VSEL((v8i)(cn > 0x7eu), (v8u){ 0 } + 0x7eu, cn);
	qi = (v8u)__builtin_convertvector(q, v8i);
	r2 = q - __builtin_convertvector((v8i)qi, v8f);
	cs = qi + (((v8u)(r2 > 0.5f) | ((v8u)(r2 == 0.5f) & (qi & 1u))) & 1u);
	code = VSEL((v8i)(a >= 0x43e00000u), (v8u){ 0 } + 0x7eu,
		    VSEL((v8i)(a < 0x3c800000u), cs, cn));
	code = VSEL((v8i)(code == 0u), (v8u){ 0 } + 1u, code);
	e = (code >> 3) & 0xfu;
	mant = code & 7u;
	u = ((e + 120u) << 23) | (mant << 20);
	vs = __builtin_convertvector((v8i)mant, v8f) * (1.0f / 512.0f);
	u = VSEL((v8i)(e == 0u), (v8u)vs, u);
	u = VSEL(m > 0.0f, u, (v8u){ 0 });
	memcpy(gs, &u, sizeof(u));
}

/* One residual row, NVFP4 round to nearest with tensor scale t. */
ROWK static void resq_row_fp4(float *w, int64_t k, float t)
{
	float gs[QCHUNK];

	for (int64_t c0 = 0; c0 < k; c0 += 16 * QCHUNK) {
		int ng = (int)((k - c0) / 16 < QCHUNK ? (k - c0) / 16 : QCHUNK);
		float *wc = w + c0;

		int g8 = ng & ~7;

		for (int g = 0; g < ng; g++)
			gs[g] = gmax(wc + g * 16, 16);
		for (int g = 0; g < g8; g += 8)
			gscale8_fp4(gs + g, t);
		for (int g = g8; g < ng; g++) {
			uint32_t sf = e4m3_code_bl(bf16r((gs[g] / 6.0f) / t));
			float sv = e4m3_val_bl(sf ? sf : 1u);
			gs[g] = gs[g] > 0.0f ? sv : 0.0f;
		}
		for (int g = 0; g < ng; g++) {
			float *wg = wc + g * 16, sc = gs[g];

			if (sc == 0.0f) {
				for (int i = 0; i < 16; i++)
					wg[i] = 0.0f;
				continue;
			}
			for (int i = 0; i < 16; i++) {
				float v = (wg[i] / t) / sc, q = e2m1_low_mag(fabsf(v));
				wg[i] = ((v < 0.0f ? -q : q) * sc) * t;
			}
		}
	}
}

/* One residual row, INT4 round to nearest (group 64). */
ROWK static void resq_row_int4(float *w, int64_t k)
{
	float gs[QCHUNK];

	for (int64_t c0 = 0; c0 < k; c0 += 64 * QCHUNK) {
		int ng = (int)((k - c0) / 64 < QCHUNK ? (k - c0) / 64 : QCHUNK);
		float *wc = w + c0;

		for (int g = 0; g < ng; g++)
			gs[g] = gmax(wc + g * 64, 64);
#pragma omp simd
		for (int g = 0; g < ng; g++) {
			float sc = bf16r(gs[g] / 7.0f);
			/* a scale lost to BF16 underflow becomes 1 */
			gs[g] = gs[g] > 0.0f ? (sc > 0.0f ? sc : 1.0f) : 0.0f;
		}
		for (int g = 0; g < ng; g++) {
			float *wg = wc + g * 64, sc = gs[g];

			if (sc == 0.0f) {
				for (int i = 0; i < 64; i++)
					wg[i] = 0.0f;
				continue;
			}
			for (int i = 0; i < 64; i++) {
				float v = wg[i] / sc;
				v = v < -8.0f ? -8.0f : v;
				v = v > 7.0f ? 7.0f : v;
				wg[i] = ((v + RNE_MAGIC) - RNE_MAGIC) * sc;
			}
		}
	}
}

ROWK static float absmax_row(const float *v, int64_t k)
{
	float m = 0.0f;

#pragma omp simd reduction(max:m)
	for (int64_t i = 0; i < k; i++)
		m = fabsf(v[i]) > m ? fabsf(v[i]) : m;
	return m;
}

ROWK static double sumsq_row(const float *v, int64_t n)
{
	double acc[8] = {0};
	int64_t i = 0;

	for (; i + 8 <= n; i += 8)
		for (int j = 0; j < 8; j++)
			acc[j] += (double)v[i + j] * (double)v[i + j];
	for (; i < n; i++)
		acc[0] += (double)v[i] * (double)v[i];
	return ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
}

/* ---- public row-kernel wrappers -------------------------------------- */

static int check_prec(enum fx_qprec p, int64_t k, struct fx_err *err)
{
	if (p != FX_QPREC_NVFP4 && p != FX_QPREC_INT4)
		return fx_error(err, FX_E_ARG, "low-rank search supports nvfp4 and int4 only");
	if (k <= 0 || k % 64)
		return fx_error(err, FX_E_ARG, "k %lld is not a positive multiple of 64", (long long)k);
	return 0;
}

int fx_lowrank_actq_cpu(float *xq, const float *x, const float *s, int64_t m, int64_t k,
			enum fx_qprec p, bool shift, struct fx_err *err)
{
	const float c = shift ? FX_LOWRANK_SHIFT : 0.0f;
	float *cs = NULL;
	int ret = check_prec(p, k, err);

	if (ret < 0)
		return ret;
	if (shift && p != FX_QPREC_INT4)
		return fx_error(err, FX_E_ARG, "the activation shift exists for int4 only");
	if (shift) {
		if (!(cs = malloc((size_t)k * sizeof(float))))
			return fx_error(err, FX_E_NOMEM, "out of memory");
		for (int64_t i = 0; i < k; i++)
			cs[i] = s ? c / s[i] : c;
	}
#pragma omp parallel for schedule(static) if(BIG(m * k))
	for (int64_t r = 0; r < m; r++)
		actq_row(xq + r * k, x + r * k, s, cs, c, k, p == FX_QPREC_NVFP4, shift);
	free(cs);
	return 0;
}

/* T = smallest bf16 >= (amax/6)/448, 1 for zero (as fx-quant chooses it). */
static float nvfp4_tscale(float amax)
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

static int check_members(const int64_t *rows, int nmember, int64_t n, struct fx_err *err)
{
	int64_t sum = 0;

	if (nmember <= 1 || !rows)
		return 0;
	if (nmember > FX_LOWRANK_MAX_MEMBERS)
		return fx_error(err, FX_E_ARG, "%d members, at most %d", nmember, FX_LOWRANK_MAX_MEMBERS);
	for (int i = 0; i < nmember; i++) {
		if (rows[i] <= 0)
			return fx_error(err, FX_E_ARG, "member %d has %lld rows", i, (long long)rows[i]);
		sum += rows[i];
	}
	if (sum != n)
		return fx_error(err, FX_E_ARG, "member rows sum to %lld, expected %lld",
				(long long)sum, (long long)n);
	return 0;
}

/* In place quant-dequant; rowmax (n) the row absmax when known (NULL: computed). */
static void resq(float *r, const float *rowmax, int64_t n, int64_t k, enum fx_qprec p,
		 const int64_t *member_rows, int nmember)
{
	int64_t one = n, row0 = 0;

	if (p == FX_QPREC_INT4) {
#pragma omp parallel for schedule(static) if(BIG(n * k))
		for (int64_t i = 0; i < n; i++)
			resq_row_int4(r + i * k, k);
		return;
	}
	if (!member_rows || nmember <= 1) {
		member_rows = &one;
		nmember = 1;
	}
	for (int mi = 0; mi < nmember; mi++) {
		int64_t r1 = row0 + member_rows[mi];
		float amax = 0.0f, t;

#pragma omp parallel for schedule(static) reduction(max:amax) if(BIG((r1 - row0) * k))
		for (int64_t i = row0; i < r1; i++) {
			float a = 0.0f;
			a = rowmax ? rowmax[i] : absmax_row(r + i * k, k);
			amax = a > amax ? a : amax;
		}
		t = nvfp4_tscale(amax);
#pragma omp parallel for schedule(static) if(BIG((r1 - row0) * k))
		for (int64_t i = row0; i < r1; i++)
			resq_row_fp4(r + i * k, k, t);
		row0 = r1;
	}
}

int fx_lowrank_resq_cpu(float *r, int64_t n, int64_t k, enum fx_qprec p,
			const int64_t *member_rows, int nmember, struct fx_err *err)
{
	int ret;

	if ((ret = check_prec(p, k, err)) < 0 || (ret = check_members(member_rows, nmember, n, err)) < 0)
		return ret;
	resq(r, NULL, n, k, p, member_rows, nmember);
	return 0;
}

/* ---- SVD ------------------------------------------------------------- */

static int lapack_fail(struct fx_err *err, const char *what, lapack_int info)
{
	if (info == LAPACK_WORK_MEMORY_ERROR || info == LAPACK_TRANSPOSE_MEMORY_ERROR)
		return fx_error(err, FX_E_NOMEM, "%s: out of memory", what);
	if (info > 0)
		return fx_error(err, FX_E_VALUE, "%s did not converge (info %d)", what, (int)info);
	return fx_error(err, FX_E_ARG, "%s: bad argument %d", what, (int)-info);
}

int fx_lowrank_svd_cpu(float *up, float *down, const float *a, const float *s,
		       int64_t n, int64_t k, int r, struct fx_err *err)
{
	int64_t mn = min64(n, k);
	float *ac = NULL, *uc = NULL, *vc = NULL, *sv = NULL;
	lapack_int info;
	int ret = 0, blas;

	if (r < 1 || r > mn)
		return fx_error(err, FX_E_ARG, "rank %d out of range 1-%lld", r, (long long)mn);
	ac = malloc((size_t)n * k * sizeof(float));
	uc = malloc((size_t)k * mn * sizeof(float));
	vc = malloc((size_t)mn * n * sizeof(float));
	sv = malloc((size_t)mn * sizeof(float));
	if (!ac || !uc || !vc || !sv) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory for a %lldx%lld SVD", (long long)n,
			       (long long)k);
		goto out;
	}
#pragma omp parallel for schedule(static) if(BIG(n * k))
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = 0; j < k; j++)
			ac[i * k + j] = a[i * k + j] * (s ? s[j] : 1.0f);
	/* row-major A (n,k) is column-major Aᵀ (k,n) = V Σ Uᵀ: no transposes */
	/* the one large LAPACK call: give OpenBLAS every thread for it */
	/* (not inside layer jobs: the setting is global, the other job's calls
	 * must stay single-threaded) */
	blas = omp_in_parallel() ? 0 : openblas_get_num_threads();
	if (blas)
		openblas_set_num_threads(omp_get_max_threads());
	info = LAPACKE_sgesdd(LAPACK_COL_MAJOR, 'S', (lapack_int)k, (lapack_int)n, ac,
			      (lapack_int)k, sv, uc, (lapack_int)k, vc, (lapack_int)mn);
	if (blas)
		openblas_set_num_threads(blas);
	if (info) {
		ret = lapack_fail(err, "sgesdd", info);
		goto out;
	}
	/* uc column j = v_j = row j of down; vc column i = row i of U */
	memcpy(down, uc, (size_t)r * k * sizeof(float));
#pragma omp parallel for schedule(static) if(BIG((int64_t)r * n))
	for (int64_t i = 0; i < n; i++)
		for (int j = 0; j < r; j++)
			up[i * r + j] = vc[i * mn + j] * sv[j];
out:
	free(ac);
	free(uc);
	free(vc);
	free(sv);
	return ret;
}

struct rsvd_ws {
	int64_t n, k;
	int l;
	float *om, *y, *z, *rz, *u, *vt, *sv, *tau, *ur;
};

static void rsvd_ws_free(struct rsvd_ws *w)
{
	free(w->om); free(w->y); free(w->z); free(w->rz); free(w->u);
	free(w->vt); free(w->sv); free(w->tau); free(w->ur);
	memset(w, 0, sizeof(*w));
}

static int rsvd_ws_init(struct rsvd_ws *w, int64_t n, int64_t k, int l, struct fx_err *err)
{
	size_t ll = (size_t)l * l;

	memset(w, 0, sizeof(*w));
	w->n = n;
	w->k = k;
	w->l = l;
	w->om = malloc((size_t)k * l * sizeof(float));
	w->y = malloc((size_t)n * l * sizeof(float));
	w->z = malloc((size_t)k * l * sizeof(float));
	w->rz = malloc(ll * sizeof(float));
	w->u = malloc(ll * sizeof(float));
	w->vt = malloc(ll * sizeof(float));
	w->ur = malloc(ll * sizeof(float));
	w->sv = malloc((size_t)l * sizeof(float));
	w->tau = malloc((size_t)l * sizeof(float));
	if (!w->om || !w->y || !w->z || !w->rz || !w->u || !w->vt || !w->ur || !w->sv || !w->tau) {
		rsvd_ws_free(w);
		return fx_error(err, FX_E_NOMEM, "out of memory for the randomized SVD");
	}
	return 0;
}

static int orth(float *a, int64_t rows, int l, float *tau, float *rtop, struct fx_err *err)
{
	lapack_int info = LAPACKE_sgeqrf(LAPACK_ROW_MAJOR, (lapack_int)rows, l, a, l, tau);

	if (info)
		return lapack_fail(err, "sgeqrf", info);
	if (rtop)
		for (int i = 0; i < l; i++)
			for (int j = 0; j < l; j++)
				rtop[i * l + j] = j >= i ? a[i * l + j] : 0.0f;
	info = LAPACKE_sorgqr(LAPACK_ROW_MAJOR, (lapack_int)rows, l, l, a, l, tau);
	return info ? lapack_fail(err, "sorgqr", info) : 0;
}

static void scale_rows(float *a, const float *s, int64_t rows, int l)
{
	if (!s)
		return;
	for (int64_t i = 0; i < rows; i++)
		for (int j = 0; j < l; j++)
			a[i * l + j] *= s[i];
}

/* Start vectors: uniform in [-1, 1) from a splitmix64 stream (integer
 * arithmetic only, so the bits are the same everywhere). */
static void fill_random(float *v, size_t count, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;

	for (size_t i = 0; i < count; i++) {
		uint64_t z = (x += 0x9e3779b97f4a7c15ull);
		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		v[i] = (float)((int64_t)(z >> 40) - (1 << 23)) * (1.0f / (float)(1 << 23));
	}
}

/* Randomized SVD of A·diag(s) with a prepared workspace. */
static int rsvd(struct rsvd_ws *w, float *up, float *down, float *basis, bool warm,
		const float *a, const float *s, int r, int power, uint64_t seed, struct fx_err *err)
{
	const int64_t n = w->n, k = w->k;
	const int l = w->l;
	lapack_int info;
	int ret;

	if (warm)
		memcpy(w->om, basis, (size_t)k * l * sizeof(float));
	else
		fill_random(w->om, (size_t)k * l, seed);
	scale_rows(w->om, s, k, l);
	pgemm(false, false, n, l, k, 1.0f, a, k, w->om, l, 0.0f, w->y, l);
	if ((ret = orth(w->y, n, l, w->tau, NULL, err)) < 0)
		return ret;
	for (int it = 0; it < power; it++) {
		pgemm(true, false, k, l, n, 1.0f, a, k, w->y, l, 0.0f, w->z, l);
		scale_rows(w->z, s, k, l);
		if ((ret = orth(w->z, k, l, w->tau, NULL, err)) < 0)
			return ret;
		scale_rows(w->z, s, k, l);
		pgemm(false, false, n, l, k, 1.0f, a, k, w->z, l, 0.0f, w->y, l);
		if ((ret = orth(w->y, n, l, w->tau, NULL, err)) < 0)
			return ret;
	}
	/* Z = diag(s)·Aᵀ·Y = Bᵀ for B = Yᵀ·A·diag(s); Z = Qz·Rz; B = Rzᵀ·Qzᵀ */
	pgemm(true, false, k, l, n, 1.0f, a, k, w->y, l, 0.0f, w->z, l);
	scale_rows(w->z, s, k, l);
	if ((ret = orth(w->z, k, l, w->tau, w->rz, err)) < 0)
		return ret;
	for (int i = 0; i < l; i++)          /* u <- Rzᵀ */
		for (int j = 0; j < l; j++)
			w->u[i * l + j] = w->rz[j * l + i];
	info = LAPACKE_sgesdd(LAPACK_ROW_MAJOR, 'A', l, l, w->u, l, w->sv, w->ur, l, w->vt, l);
	if (info)
		return lapack_fail(err, "sgesdd", info);
	/* up = Y·Ur_r·Σ_r; V = Qz·Vr = Z·Vtᵀ */
	for (int i = 0; i < l; i++)
		for (int j = 0; j < r; j++)
			w->rz[i * r + j] = w->ur[i * l + j] * w->sv[j];
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, r, l, 1.0f, w->y, l, w->rz,
		    r, 0.0f, up, r);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)k, l, l, 1.0f, w->z, l, w->vt, l,
		    0.0f, w->om, l);
#pragma omp parallel for schedule(static) if(BIG((int64_t)r * k))
	for (int j = 0; j < r; j++)
		for (int64_t i = 0; i < k; i++)
			down[j * k + i] = w->om[i * l + j];
	if (basis)
		memcpy(basis, w->om, (size_t)k * l * sizeof(float));
	return 0;
}

static int rsvd_cols(int64_t n, int64_t k, int r, int oversample)
{
	int64_t l = (int64_t)r + (oversample > 0 ? oversample : 0);

	return (int)min64(l, min64(n, k));
}

int fx_lowrank_rsvd_cpu(float *up, float *down, float *basis, bool warm, const float *a,
			const float *s, int64_t n, int64_t k, int r, int oversample, int power,
			uint64_t seed, struct fx_err *err)
{
	struct rsvd_ws w;
	int ret, blas;

	if (r < 1 || r > min64(n, k))
		return fx_error(err, FX_E_ARG, "rank %d out of range 1-%lld", r, (long long)min64(n, k));
	if (warm && !basis)
		return fx_error(err, FX_E_ARG, "warm start without a basis");
	if ((ret = rsvd_ws_init(&w, n, k, rsvd_cols(n, k, r, oversample), err)) < 0)
		return ret;
	blas = fx_ops_blas_single();
	ret = rsvd(&w, up, down, basis, warm, a, s, r, power < 0 ? 0 : power, seed, err);
	fx_ops_blas_restore(blas);
	rsvd_ws_free(&w);
	return ret;
}

/* ---- the search ------------------------------------------------------- */

struct lr {
	const struct fx_lowrank_problem *p;
	int64_t n, k, m, ms;
	int r;
	bool xq_ok;                /* c->xq holds the search rows' Xq for c->s */
	float *rbuf, *abuf;        /* (n,k) residual / refinement target */
	float *y, *ys, *xs;        /* X·Wᵀ (m,n), its search rows (ms,n), their X (ms,k) */
	float *xq, *e, *t, *ds;    /* (m,k), (m,n), (m,r), (r,k) */
	float *ub;                 /* (n,r) up as the checkpoint stores it (BF16) */
	float *rowmax, *cs, *wmax, *s, *xspan;
	double *rowsum;
	double ynorm, ysnorm;
	float *up, *down, *bup, *bdown, *b0up, *b0down, *basis;
	float *xd, *ea;            /* gw > 0: (m,k) X̃ − Xq, (m,n) its share of E */
	double gw;                 /* weight of the weight-rounding error in the score */
	double truth;              /* the last evaluation's ‖E‖² */
	struct rsvd_ws rw;
};

static void lr_free(struct lr *c)
{
	free(c->rbuf); free(c->abuf); free(c->y); free(c->ys); free(c->xs); free(c->xq);
	free(c->e); free(c->t); free(c->ds); free(c->ub); free(c->rowmax); free(c->cs); free(c->wmax);
	free(c->s); free(c->rowsum); free(c->up); free(c->down); free(c->bup); free(c->bdown);
	free(c->b0up); free(c->b0down); free(c->basis); free(c->xspan); free(c->xd); free(c->ea);
	rsvd_ws_free(&c->rw);
}

/* Row i of X̃ − Xq, X̃ = bf16(bf16(x + c)/s) − c/s the smoothed input
 * before the runtime rounds it: the activation rounding error. */
static void actq_err_row(float *d, const float *x, const float *xq, const float *s,
			 const float *cs, float c, int64_t k)
{
	for (int64_t j = 0; j < k; j++) {
		float t = bf16r(bf16r(x[j]) + c), xp = bf16r(s ? t / s[j] : t);

		d[j] = xp - (xq[j] + (cs ? cs[j] : 0.0f));
	}
}

/* E = Y − X·bf16(down/s)ᵀ·bf16(up)ᵀ − Xq·Rdqᵀ over mm rows (Rdq in c->rbuf); c->truth
 * = ‖E‖². Returns ‖E‖², or with c->gw > 0 the score for a residual GPTQ
 * will quantize: E = Ea + Ew, Ea = (X̃ − Xq)·Rdqᵀ what activation rounding
 * costs, Ew what weight rounding costs, most of which GPTQ removes, so
 * ‖Ea‖² + gw·‖Ew‖². keep: c->xq already holds Xq of these rows for s (a
 * finalist's rounds). */
static double lr_eval_q(struct lr *c, const float *x, const float *y, int64_t mm, const float *s,
			const float *up, const float *down, int r, bool keep)
{
	const struct fx_lowrank_problem *p = c->p;
	const int64_t n = c->n, k = c->k;
	const float cc = p->shift ? FX_LOWRANK_SHIFT : 0.0f;
	double tot = 0.0, score = 0.0;

	if (p->shift && !keep)
		for (int64_t i = 0; i < k; i++)
			c->cs[i] = s ? cc / s[i] : cc;
	if (!keep) {
#pragma omp parallel for schedule(static) if(BIG(mm * k))
		for (int64_t i = 0; i < mm; i++)
			actq_row(c->xq + i * k, x + i * k, s, p->shift ? c->cs : NULL, cc, k,
				 p->prec == FX_QPREC_NVFP4, p->shift);
	}
	memcpy(c->e, y, (size_t)mm * n * sizeof(float));
	if (r > 0) {
#pragma omp parallel for schedule(static) if(BIG((int64_t)r * k))
		for (int j = 0; j < r; j++)
			for (int64_t i = 0; i < k; i++)
				c->ds[j * k + i] = bf16r(s ? down[j * k + i] / s[i] : down[j * k + i]);
#pragma omp parallel for schedule(static) if(BIG(n * r))
		for (int64_t i = 0; i < n * r; i++)
			c->ub[i] = bf16r(up[i]);
		pgemm(false, true, mm, r, k, 1.0f, x, k, c->ds, k, 0.0f, c->t, r);
		pgemm(false, true, mm, n, r, -1.0f, c->t, r, c->ub, r, 1.0f, c->e, n);
	}
	pgemm(false, true, mm, n, k, -1.0f, c->xq, k, c->rbuf, k, 1.0f, c->e, n);
#pragma omp parallel for schedule(static) if(BIG(mm * n))
	for (int64_t i = 0; i < mm; i++)
		c->rowsum[i] = sumsq_row(c->e + i * n, n);
	for (int64_t i = 0; i < mm; i++)   /* fixed order: independent of threads */
		tot += c->rowsum[i];
	c->truth = tot;
	if (!(c->gw > 0.0))
		return tot;
#pragma omp parallel for schedule(static) if(BIG(mm * k))
	for (int64_t i = 0; i < mm; i++)
		actq_err_row(c->xd + i * k, x + i * k, c->xq + i * k, s, p->shift ? c->cs : NULL, cc, k);
	pgemm(false, true, mm, n, k, 1.0f, c->xd, k, c->rbuf, k, 0.0f, c->ea, n);
#pragma omp parallel for schedule(static) if(BIG(mm * n))
	for (int64_t i = 0; i < mm; i++) {
		double a = 0.0, w = 0.0;

		for (int64_t j = 0; j < n; j++) {
			double ea = c->ea[i * n + j], ew = (double)c->e[i * n + j] - ea;

			a += ea * ea;
			w += ew * ew;
		}
		c->rowsum[i] = a + c->gw * w;
	}
	for (int64_t i = 0; i < mm; i++)
		score += c->rowsum[i];
	return score;
}

static double lr_eval(struct lr *c, const float *x, const float *y, int64_t mm, const float *s,
		      const float *up, const float *down, int r)
{
	c->xq_ok = false;
	return lr_eval_q(c, x, y, mm, s, up, down, r, false);
}

/* The same on the search rows for the smoothing c->s, whose Xq is then
 * kept for the next call: it is fixed while a finalist is refined. */
static double lr_eval_search(struct lr *c, const float *up, const float *down, int r)
{
	double e = lr_eval_q(c, c->xs, c->ys, c->ms, c->s, up, down, r, c->xq_ok);

	c->xq_ok = true;
	return e;
}

/* rbuf = deq(Q(W·diag(s) − up·down)). */
static void lr_residual(struct lr *c, const float *s, const float *up, const float *down, int r)
{
	const struct fx_lowrank_problem *p = c->p;
	const int64_t n = c->n, k = c->k;

	/* the kernel fx-quant builds its residual with (not BLAS): the search
	 * measures the residual fx-quant will quantize, whatever the threads */
	fx_ops_residual(c->rbuf, p->w, s, up, down, NULL, n, k, r);
	if (p->prec == FX_QPREC_NVFP4) {
#pragma omp parallel for schedule(static) if(BIG(n * k))
		for (int64_t i = 0; i < n; i++)
			c->rowmax[i] = absmax_row(c->rbuf + i * k, k);
	}
	resq(c->rbuf, c->rowmax, n, k, p->prec, p->member_rows, p->nmember);
}

static double rel(double e, double norm)
{
	return norm > 0.0 ? e / norm : (e > 0.0 ? INFINITY : 0.0);
}

static int lr_check(const struct fx_lowrank_problem *p, const struct fx_lowrank_opts *o,
		    struct fx_err *err)
{
	int ret;

	if ((ret = check_prec(p->prec, p->k, err)) < 0)
		return ret;
	if (p->n <= 0 || p->m <= 0 || !p->w || !p->x || !p->xmax)
		return fx_error(err, FX_E_ARG, "empty low-rank problem");
	if (p->shift && p->prec != FX_QPREC_INT4)
		return fx_error(err, FX_E_ARG, "the activation shift exists for int4 only");
	if ((ret = check_members(p->member_rows, p->nmember, p->n, err)) < 0)
		return ret;
	if (o->rank < 1 || o->rank > min64(p->n, p->k))
		return fx_error(err, FX_E_ARG, "rank %d out of range 1-%lld for a %lldx%lld layer",
				o->rank, (long long)min64(p->n, p->k), (long long)p->n, (long long)p->k);
	if (o->grid < 1 || o->grid > FX_LOWRANK_MAX_GRID || o->iters < 0 ||
	    o->method < 0 || o->method >= FX_LOWRANK_METHOD_COUNT || o->search_rows < 0 ||
	    o->finalists < 1 || o->finalists > FX_LOWRANK_MAX_FINALISTS || o->refine_power < 0 ||
	    !(o->abandon >= 0.0) || !(o->gptq_weight >= 0.0 && o->gptq_weight <= 1.0))
		return fx_error(err, FX_E_ARG, "bad low-rank options");
	if ((int64_t)p->n * p->k > INT32_MAX || (int64_t)p->m * p->n > INT32_MAX)
		return fx_error(err, FX_E_ARG, "layer too large for 32-bit BLAS indices");
	return 0;
}

static int lr_init(struct lr *c, const struct fx_lowrank_problem *p, const struct fx_lowrank_opts *o,
		   struct fx_err *err)
{
	const int64_t n = p->n, k = p->k, m = p->m;
	const int r = o->rank;
	const int l = rsvd_cols(n, k, r, o->oversample);
	size_t nk = (size_t)n * k;

	memset(c, 0, sizeof(*c));
	c->p = p;
	c->n = n;
	c->k = k;
	c->m = m;
	c->r = r;
	c->ms = o->search_rows > 0 && o->search_rows < m ? o->search_rows : m;
	c->rbuf = malloc(nk * sizeof(float));
	c->abuf = o->iters > 0 ? malloc(nk * sizeof(float)) : NULL;
	c->y = malloc((size_t)m * n * sizeof(float));
	c->ys = malloc((size_t)c->ms * n * sizeof(float));
	c->xs = malloc((size_t)c->ms * k * sizeof(float));
	c->xq = malloc((size_t)m * k * sizeof(float));
	c->e = malloc((size_t)m * n * sizeof(float));
	c->t = malloc((size_t)m * r * sizeof(float));
	c->ds = malloc((size_t)r * k * sizeof(float));
	c->ub = malloc((size_t)n * r * sizeof(float));
	c->rowmax = malloc((size_t)n * sizeof(float));
	c->cs = malloc((size_t)k * sizeof(float));
	c->wmax = calloc((size_t)k, sizeof(float));
	c->s = malloc((size_t)k * sizeof(float));
	c->xspan = malloc((size_t)k * sizeof(float));
	c->rowsum = malloc((size_t)m * sizeof(double));
	c->up = malloc((size_t)n * r * sizeof(float));
	c->down = malloc((size_t)r * k * sizeof(float));
	c->bup = malloc((size_t)n * r * sizeof(float));
	c->bdown = malloc((size_t)r * k * sizeof(float));
	c->b0up = malloc((size_t)n * r * sizeof(float));
	c->b0down = malloc((size_t)r * k * sizeof(float));
	c->basis = calloc((size_t)k * l, sizeof(float));
	c->gw = o->gptq_weight;
	if (c->gw > 0.0) {
		c->xd = malloc((size_t)m * k * sizeof(float));
		c->ea = malloc((size_t)m * n * sizeof(float));
	}
	if ((c->gw > 0.0 && (!c->xd || !c->ea)) || !c->rbuf || (o->iters > 0 && !c->abuf) || !c->y || !c->ys || !c->xs || !c->xq || !c->e || !c->t ||
	    !c->ds || !c->ub || !c->rowmax || !c->cs || !c->wmax || !c->s || !c->xspan || !c->rowsum || !c->up ||
	    !c->down || !c->bup || !c->bdown || !c->b0up || !c->b0down || !c->basis)
		return fx_error(err, FX_E_NOMEM, "out of memory for a %lldx%lld layer with %lld rows",
				(long long)n, (long long)k, (long long)m);
	if (rsvd_ws_init(&c->rw, n, k, l, err) < 0)
		return FX_E_NOMEM;
	/* the smoothing span: the absmax of what the layer quantizes, so of
	 * x + c for a shifted group (GELU outputs >= -c: max(x) + c, which
	 * absmax(x) + c is wherever the absmax is a positive value). Without
	 * the shift, channels that are never active would get s ≈ 0 and
	 * (x + c)/s would swamp their quantization groups. */
	for (int64_t j = 0; j < k; j++)
		c->xspan[j] = p->xmax[j] + (p->shift ? FX_LOWRANK_SHIFT : 0.0f);

	/* column absmax of W; max is order-free, so threads don't matter */
#pragma omp parallel if(BIG(n * k))
	{
		float *loc = calloc((size_t)k, sizeof(float));
		if (loc) {
#pragma omp for schedule(static)
			for (int64_t i = 0; i < n; i++)
				for (int64_t j = 0; j < k; j++) {
					float a = fabsf(p->w[i * k + j]);
					loc[j] = a > loc[j] ? a : loc[j];
				}
#pragma omp critical(fx_lowrank_wmax)
			for (int64_t j = 0; j < k; j++)
				c->wmax[j] = loc[j] > c->wmax[j] ? loc[j] : c->wmax[j];
		} else {
#pragma omp for schedule(static)
			for (int64_t j = 0; j < k; j++)
				for (int64_t i = 0; i < n; i++) {
					float a = fabsf(p->w[i * k + j]);
					if (a > c->wmax[j])
						c->wmax[j] = a;
				}
		}
		free(loc);
	}
	pgemm(false, true, m, n, k, 1.0f, p->x, k, p->w, k, 0.0f, c->y, n);
	for (int64_t i = 0; i < c->ms; i++) {
		int64_t src = c->ms == m ? i : i * m / c->ms;
		memcpy(c->xs + i * k, p->x + src * k, (size_t)k * sizeof(float));
		memcpy(c->ys + i * n, c->y + src * n, (size_t)n * sizeof(float));
	}
#pragma omp parallel for schedule(static) if(BIG(m * n))
	for (int64_t i = 0; i < m; i++)
		c->rowsum[i] = sumsq_row(c->y + i * n, n);
	for (int64_t i = 0; i < m; i++)
		c->ynorm += c->rowsum[i];
#pragma omp parallel for schedule(static) if(BIG(c->ms * n))
	for (int64_t i = 0; i < c->ms; i++)
		c->rowsum[i] = sumsq_row(c->ys + i * n, n);
	for (int64_t i = 0; i < c->ms; i++)
		c->ysnorm += c->rowsum[i];
	return 0;
}

/* The branch of A·diag(s) into up/down (basis updated for rsvd). */
static int lr_branch(struct lr *c, const struct fx_lowrank_opts *o, const float *a,
		     const float *s, bool warm, int power, struct fx_err *err)
{
	if (o->method == FX_LOWRANK_SVD)
		return fx_lowrank_svd_cpu(c->up, c->down, a, s, c->n, c->k, c->r, err);
	return rsvd(&c->rw, c->up, c->down, c->basis, warm, a, s, c->r, power, o->seed, err);
}

int fx_lowrank_error_cpu(double *out, const struct fx_lowrank_problem *p, const float *s,
			 const float *down, const float *up, int rank, struct fx_err *err)
{
	struct fx_lowrank_opts o;
	struct lr c;
	int ret, blas;

	fx_lowrank_opts_init(&o);
	o.rank = rank > 0 ? rank : 1;
	o.search_rows = 0;
	o.iters = 0;
	if ((ret = lr_check(p, &o, err)) < 0)
		return ret;
	blas = fx_ops_blas_single();
	if ((ret = lr_init(&c, p, &o, err)) < 0)
		goto out;
	lr_residual(&c, s, up, down, rank);
	lr_eval(&c, p->x, c.y, p->m, s, up, down, rank);
	*out = rel(c.truth, c.ynorm);
out:
	lr_free(&c);
	fx_ops_blas_restore(blas);
	return ret;
}

/* One finalist: the branch of candidate (alpha, beta) with the full method
 * (from its search subspace, or its saved SVD branch), then refined for up
 * to o->iters rounds, each judged on the search rows (the finalists are
 * compared there too: *score; *truth and *truth0 the true errors after and
 * before refinement). A finalist still
 * more than o->abandon above `bound` (the best finalist so far) after two
 * rounds is given up: it was never seen to catch up from there. Leaves the
 * refined branch in c->bup/c->bdown, the unrefined one in c->b0up/c->b0down
 * and the smoothing in c->s. */
static int finish(struct lr *c, const struct fx_lowrank_opts *o, float alpha, float beta,
		  double bound, double *score, double *truth, double *truth0,
		  int *rounds, struct fx_err *err)
{
	const struct fx_lowrank_problem *p = c->p;
	const int64_t n = c->n, k = c->k;
	const int r = c->r;
	const size_t bup = (size_t)n * r * sizeof(float), bdown = (size_t)r * k * sizeof(float);
	double best, e, tbest;
	int ret;

	fx_lowrank_smooth(c->s, c->xspan, c->wmax, k, alpha, beta);
	c->xq_ok = false;
	if (o->method != FX_LOWRANK_SVD &&
	    (ret = lr_branch(c, o, p->w, c->s, true, o->power, err)) < 0)
		return ret;
	lr_residual(c, c->s, c->up, c->down, r);
	best = rel(lr_eval_search(c, c->up, c->down, r), c->ysnorm);
	tbest = *truth0 = rel(c->truth, c->ysnorm);
	memcpy(c->bup, c->up, bup);
	memcpy(c->bdown, c->down, bdown);
	memcpy(c->b0up, c->up, bup);
	memcpy(c->b0down, c->down, bdown);
	*rounds = 0;
	/* refinement: the branch of W·diag(s) − Rdq, kept while the error falls
	 * (Rdq, in c->rbuf, belongs to the last branch evaluated, the kept one) */
	for (int it = 0; it < o->iters; it++) {
#pragma omp parallel for schedule(static) if(BIG(n * k))
		for (int64_t i = 0; i < n; i++)
			for (int64_t j = 0; j < k; j++)
				c->abuf[i * k + j] = p->w[i * k + j] * c->s[j] - c->rbuf[i * k + j];
		if ((ret = lr_branch(c, o, c->abuf, NULL, true, o->refine_power, err)) < 0)
			return ret;
		lr_residual(c, c->s, c->up, c->down, r);
		e = rel(lr_eval_search(c, c->up, c->down, r), c->ysnorm);
		if (!(e < best))
			break;
		best = e;
		tbest = rel(c->truth, c->ysnorm);
		(*rounds)++;
		memcpy(c->bup, c->up, bup);
		memcpy(c->bdown, c->down, bdown);
		if (*rounds >= 2 && best > bound * (1.0 + o->abandon))
			break;
	}
	*score = best;
	*truth = tbest;
	return 0;
}

/* The winner's errors on all rows (res->smooth/up/down hold its refined
 * branch, b0up/b0down its unrefined one): a refinement that does not lower
 * the all-row score is undone. t0/t: its unrefined/refined true errors on
 * the search rows. */
static void settle(struct lr *c, struct fx_lowrank_result *res, const float *b0up,
		   const float *b0down, double t0, double t)
{
	const struct fx_lowrank_problem *p = c->p;
	const int r = c->r;
	double e0, e;

	if (c->ms == c->m) {
		res->err_branch = t0;
		res->err_final = res->rounds ? t : t0;
		return;
	}
	lr_residual(c, res->smooth, b0up, b0down, r);
	e0 = lr_eval(c, p->x, c->y, p->m, res->smooth, b0up, b0down, r);
	res->err_branch = rel(c->truth, c->ynorm);
	res->err_final = res->err_branch;
	if (!res->rounds)
		return;
	lr_residual(c, res->smooth, res->up, res->down, r);
	e = lr_eval(c, p->x, c->y, p->m, res->smooth, res->up, res->down, r);
	if (e < e0) {
		res->err_final = rel(c->truth, c->ynorm);
		return;
	}
	memcpy(res->up, b0up, (size_t)c->n * r * sizeof(float));
	memcpy(res->down, b0down, (size_t)r * c->k * sizeof(float));
	res->rounds = 0;
}

/* The finalists so far, best first. */
struct fins {
	double err[FX_LOWRANK_MAX_FINALISTS];
	int idx[FX_LOWRANK_MAX_FINALISTS], n, cap;
	float *basis, *up, *down;       /* cap·nb; SVD: cap·nu, cap·nd */
	size_t nb, nu, nd;
};

/* Candidate i with error e into place `at` (< cap), with its subspace (SVD:
 * its branch). */
static void fins_insert(struct fins *fl, const struct lr *c, bool svd, int at, double e, int i)
{
	fl->n = fl->n < fl->cap ? fl->n + 1 : fl->n;
	for (int j = fl->n - 1; j > at; j--) {
		fl->err[j] = fl->err[j - 1];
		fl->idx[j] = fl->idx[j - 1];
		memcpy(fl->basis + j * fl->nb, fl->basis + (j - 1) * fl->nb, fl->nb * sizeof(float));
		if (svd) {
			memcpy(fl->up + j * fl->nu, fl->up + (j - 1) * fl->nu, fl->nu * sizeof(float));
			memcpy(fl->down + j * fl->nd, fl->down + (j - 1) * fl->nd, fl->nd * sizeof(float));
		}
	}
	fl->err[at] = e;
	fl->idx[at] = i;
	memcpy(fl->basis + at * fl->nb, c->basis, fl->nb * sizeof(float));
	if (svd) {
		memcpy(fl->up + at * fl->nu, c->up, fl->nu * sizeof(float));
		memcpy(fl->down + at * fl->nd, c->down, fl->nd * sizeof(float));
	}
}

static bool listed(const int *v, int n, int x)
{
	for (int i = 0; i < n; i++)
		if (v[i] == x)
			return true;
	return false;
}

int fx_lowrank_group_cpu(struct fx_lowrank_result *res, const struct fx_lowrank_problem *p,
			 const struct fx_lowrank_opts *o, struct fx_err *err)
{
	float alpha[2 * FX_LOWRANK_MAX_GRID], beta[2 * FX_LOWRANK_MAX_GRID];
	int todo[2 * FX_LOWRANK_MAX_GRID], seed[2 * FX_LOWRANK_MAX_GRID];
	const int64_t n = p->n, k = p->k;
	const int r = o->rank;
	const bool svd = o->method == FX_LOWRANK_SVD;
	const size_t nu = (size_t)n * r, nd = (size_t)r * k;
	size_t nb;
	double best = INFINITY, e, sc = 0, tr = 0, tr0 = 0, w = 0, w0 = 0;
	int ret, ncand, ntodo = 0, ncoarse, rounds = 0;
	float *wup = NULL, *wdown = NULL;
	struct fins fl = {0}, co = {0};
	struct lr c;
	int blas = -1;

	if ((ret = lr_check(p, o, err)) < 0)
		return ret;
	if ((ret = fx_lowrank_candidates(alpha, beta, (int)FX_ARRAY_SIZE(alpha), o->grid, err)) < 0)
		return ret;
	ncand = ret;
	fl.cap = o->finalists < ncand ? o->finalists : ncand;
	blas = fx_ops_blas_single();
	if ((ret = lr_init(&c, p, o, err)) < 0)
		goto out;
	nb = fl.nb = (size_t)k * c.rw.l;
	fl.nu = nu;
	fl.nd = nd;
	fl.basis = malloc(fl.cap * nb * sizeof(float));
	co.cap = FX_LOWRANK_SEEDS;
	co.nb = nb;
	co.basis = malloc(co.cap * nb * sizeof(float));
	wup = malloc(nu * sizeof(float));
	wdown = malloc(nd * sizeof(float));
	if (svd) {
		fl.up = malloc(fl.cap * nu * sizeof(float));
		fl.down = malloc(fl.cap * nd * sizeof(float));
	}
	if (!fl.basis || !co.basis || !wup || !wdown || (svd && (!fl.up || !fl.down))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory for %d finalists", fl.cap);
		goto out;
	}

	/* plain round to nearest: s = 1, no branch */
	lr_residual(&c, NULL, NULL, NULL, 0);
	lr_eval(&c, p->x, c.y, p->m, NULL, NULL, NULL, 0);
	res->err_rtn = rel(c.truth, c.ynorm);

	/* rank the candidates on the search rows: every other one, then the
	 * skipped neighbours of the FX_LOWRANK_SEEDS best of those (co:
	 * neighbours differ little, and the best ones are rarely between two
	 * poor ones); keep the fl.cap best (ties: the earlier evaluated) with
	 * what their branch needs to be redone */
	for (int i = 0; i < ncand; i += 2) {
		seed[ntodo] = -1;
		todo[ntodo++] = i;
	}
	ncoarse = ntodo;
	for (int t = 0; t < ntodo; t++) {
		int at, i = todo[t];

		fx_lowrank_smooth(c.s, c.xspan, c.wmax, k, alpha[i], beta[i]);
		/* later candidates start from the previous one's subspace, a
		 * neighbour from that of the coarse candidate next to it */
		if (seed[t] >= 0)
			memcpy(c.basis, co.basis + seed[t] * nb, nb * sizeof(float));
		if ((ret = lr_branch(&c, o, p->w, c.s, t > 0, t > 0 ? 0 : o->power, err)) < 0)
			goto out;
		lr_residual(&c, c.s, c.up, c.down, r);
		e = rel(lr_eval(&c, c.xs, c.ys, c.ms, c.s, c.up, c.down, r), c.ysnorm);
		for (at = fl.n; at > 0 && e < fl.err[at - 1]; at--)
			;
		if (at < fl.cap)
			fins_insert(&fl, &c, svd, at, e, i);
		if (t >= ncoarse)
			continue;
		for (at = co.n; at > 0 && e < co.err[at - 1]; at--)
			;
		if (at < co.cap)
			fins_insert(&co, &c, false, at, e, i);
		if (t != ncoarse - 1)
			continue;
		for (int f = 0; f < co.n; f++)
			for (int d = -1; d <= 1; d += 2) {
				int j = co.idx[f] + d;

				if (j < 0 || j >= ncand || listed(todo, ntodo, j))
					continue;
				seed[ntodo] = f;
				todo[ntodo++] = j;
			}
	}
	res->candidates = ntodo;

	/* each finalist finished and refined; the lowest refined error on the
	 * search rows wins (ties: the better-ranked one) */
	for (int f = 0; f < fl.n; f++) {
		memcpy(c.basis, fl.basis + f * nb, nb * sizeof(float));
		if (svd) {
			memcpy(c.up, fl.up + f * nu, nu * sizeof(float));
			memcpy(c.down, fl.down + f * nd, nd * sizeof(float));
		}
		if ((ret = finish(&c, o, alpha[fl.idx[f]], beta[fl.idx[f]], best, &sc, &tr, &tr0,
				  &rounds, err)) < 0)
			goto out;
		if (f > 0 && !(sc < best))
			continue;
		best = sc;
		w = tr;
		w0 = tr0;
		res->alpha = alpha[fl.idx[f]];
		res->beta = beta[fl.idx[f]];
		res->rounds = rounds;
		memcpy(res->smooth, c.s, (size_t)k * sizeof(float));
		memcpy(res->up, c.bup, nu * sizeof(float));
		memcpy(res->down, c.bdown, nd * sizeof(float));
		memcpy(wup, c.b0up, nu * sizeof(float));
		memcpy(wdown, c.b0down, nd * sizeof(float));
	}
	settle(&c, res, wup, wdown, w0, w);
	ret = 0;
out:
	free(fl.basis);
	free(fl.up);
	free(fl.down);
	free(co.basis);
	free(wup);
	free(wdown);
	lr_free(&c);
	if (blas > 0)
		fx_ops_blas_restore(blas);
	return ret;
}
