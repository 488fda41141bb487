/* f32 CPU primitives of the FLUX forward: OpenBLAS for every GEMM (linears
 * and attention), OpenMP for elementwise, norm and softmax loops. */
#include "../fx-ops.h"
#include "fx-cpu-simd.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

/* Rows per attention block: scores are a (bq, n) f32 tile (32 MiB a thread).
 * Tall tiles amortize packing K and V in each product: 1024 rows instead of
 * 256 at 1280 tokens made attention ~10% faster. */
#define ATTN_TILE_FLOATS (8u << 20)

/* exp for f32 that vectorizes under `omp simd` (Cephes polynomial, about
 * 1 ulp); inputs clamped to [-87.3, 88.3] so the 2^n scale stays normal.
 * NaN is returned as is (converting it to int would be undefined). */
static inline float exp_f32(float x)
{
	union { float f; int32_t i; } s;
	float n, r, p, in = x;

	x = fx_select_f32(x != x, 0.0f, x);
	x = fx_select_f32(x < -87.3f, -87.3f, x);
	x = fx_select_f32(x > 88.3f, 88.3f, x);
	n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;   /* round */
	r = x - n * 0.693359375f;
	r = r - n * -2.12194440e-4f;
	p = 1.9875691500e-4f;
	p = p * r + 1.3981999507e-3f;
	p = p * r + 8.3334519073e-3f;
	p = p * r + 4.1665795894e-2f;
	p = p * r + 1.6666665459e-1f;
	p = p * r + 5.0000001201e-1f;
	p = p * r * r + r + 1.0f;
	s.i = ((int32_t)n + 127) << 23;
	return fx_select_f32(in != in, in, p * s.f);
}

void *fx_ops_alloc(size_t n)
{
	void *p = NULL;

	if (n >= (4u << 20)) {
		if (posix_memalign(&p, 2u << 20, n) != 0)
			return NULL;
#ifdef MADV_HUGEPAGE
		madvise(p, n, MADV_HUGEPAGE);
#endif
		return p;
	}
	return malloc(n);
}

/* OpenBLAS's own pthread workers spin between calls and take the cores from
 * the OpenMP loops around them (on 2 cores the forward lost a third), so
 * every product here runs OpenBLAS single-threaded: split into panels, one
 * per OpenMP thread, or one attention head per thread. */
int fx_ops_blas_single(void)
{
	int prev;

	/* an OpenMP build of OpenBLAS already runs single-threaded inside our
	 * parallel regions, and its set_num_threads would shrink them too */
	if (openblas_get_parallel() == 2 || omp_in_parallel())
		return 0;
	prev = openblas_get_num_threads();
	if (prev != 1)
		openblas_set_num_threads(1);
	return prev;
}

void fx_ops_blas_restore(int prev)
{
	if (prev != 1 && prev > 0)
		openblas_set_num_threads(prev);
}

void fx_ops_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
		 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
	const enum CBLAS_TRANSPOSE oa = ta ? CblasTrans : CblasNoTrans, ob = tb ? CblasTrans : CblasNoTrans;
	const bool by_n = N >= M;
	const int64_t dim = by_n ? N : M;
	int prev;

	if (M <= 0 || N <= 0)
		return;
	if (omp_in_parallel()) {   /* a caller's thread: its own product, settings untouched */
		cblas_sgemm(CblasRowMajor, oa, ob, (blasint)M, (blasint)N, (blasint)K, alpha, A,
			    (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
		return;
	}
	prev = fx_ops_blas_single();
	if (omp_get_max_threads() < 2 || dim < 64 || M * N * K < (1 << 22)) {
		cblas_sgemm(CblasRowMajor, oa, ob, (blasint)M, (blasint)N, (blasint)K, alpha, A,
			    (blasint)lda, B, (blasint)ldb, beta, C, (blasint)ldc);
		fx_ops_blas_restore(prev);
		return;
	}
	/* panels of the longer side, multiples of 16 (whole vector registers) */
	#pragma omp parallel
	{
		int t = omp_get_thread_num(), nt = omp_get_num_threads();
		int64_t per = ((dim + nt - 1) / nt + 15) / 16 * 16, a0 = t * per;
		int64_t a1 = a0 + per < dim ? a0 + per : dim;

		if (a0 < a1 && by_n)
			cblas_sgemm(CblasRowMajor, oa, ob, (blasint)M, (blasint)(a1 - a0), (blasint)K, alpha,
				    A, (blasint)lda, tb ? B + a0 * ldb : B + a0, (blasint)ldb, beta, C + a0,
				    (blasint)ldc);
		else if (a0 < a1)
			cblas_sgemm(CblasRowMajor, oa, ob, (blasint)(a1 - a0), (blasint)N, (blasint)K, alpha,
				    ta ? A + a0 : A + a0 * lda, (blasint)lda, B, (blasint)ldb, beta,
				    C + a0 * ldc, (blasint)ldc);
	}
	fx_ops_blas_restore(prev);
}

void fx_ops_linear(float *y, const float *x, const float *w, const float *b,
		   int64_t m, int64_t n, int64_t k)
{
	float beta = 0.0f;

	if (m <= 0 || n <= 0)
		return;
	if (b) {
		#pragma omp parallel for if (m * n > 65536) schedule(static)
		for (int64_t r = 0; r < m; r++)
			memcpy(y + r * n, b, (size_t)n * sizeof(float));
		beta = 1.0f;
	}
	if (k <= 0) {
		if (!b)
			memset(y, 0, (size_t)(m * n) * sizeof(float));
		return;
	}
	if (m == 1) {
		cblas_sgemv(CblasRowMajor, CblasNoTrans, (blasint)n, (blasint)k, 1.0f, w,
			    (blasint)k, x, 1, beta, y, 1);
		return;
	}
	fx_ops_gemm(false, true, m, n, k, 1.0f, x, k, w, k, beta, y, n);
}

/* One BF16 row dot x over k, 16 partial sums; also ORs the exponent bits'
 * all-ones test into *bad. */
FX_CPU_CLONES
static float dot_bf16(const unsigned char *w, const float *x, int64_t k, unsigned *bad)
{
	float acc[16] = { 0 }, tail = 0.0f;
	unsigned nf = 0;
	int64_t c = 0;

	for (; c + 16 <= k; c += 16)
		for (int j = 0; j < 16; j++) {
			uint16_t h;
			uint32_t u;
			float f;

			memcpy(&h, w + 2 * (c + j), 2);
			u = (uint32_t)h << 16;
			memcpy(&f, &u, 4);
			nf |= (h & 0x7f80u) == 0x7f80u;
			acc[j] += f * x[c + j];
		}
	for (; c < k; c++) {
		uint16_t h;
		uint32_t u;
		float f;

		memcpy(&h, w + 2 * c, 2);
		u = (uint32_t)h << 16;
		memcpy(&f, &u, 4);
		nf |= (h & 0x7f80u) == 0x7f80u;
		tail += f * x[c];
	}
	for (int wdt = 8; wdt >= 1; wdt /= 2)
		for (int j = 0; j < wdt; j++)
			acc[j] += acc[j + wdt];
	*bad |= nf;
	return acc[0] + tail;
}

bool fx_ops_gemv_bf16(float *y, const float *x, const void *w, int64_t ldw, const float *b,
		      int64_t n, int64_t k)
{
	unsigned bad = 0;

	#pragma omp parallel for schedule(static) reduction(|:bad) if (n * k > 65536)
	for (int64_t r = 0; r < n; r++) {
		unsigned br = 0;
		float d = dot_bf16((const unsigned char *)w + (size_t)(r * ldw) * 2, x, k, &br);

		y[r] = b ? b[r] + d : d;
		bad |= br;
	}
	return bad == 0;
}

static void ln_row(float *y, const float *x, int64_t d, const float *shift,
		   const float *scale, float eps)
{
	double s = 0.0, v = 0.0;
	float mean, rstd;

	#pragma omp simd reduction(+:s)
	for (int64_t j = 0; j < d; j++)
		s += x[j];
	mean = (float)(s / (double)d);
	#pragma omp simd reduction(+:v)
	for (int64_t j = 0; j < d; j++) {
		double t = (double)x[j] - mean;
		v += t * t;
	}
	rstd = (float)(1.0 / sqrt(v / (double)d + eps));
	if (scale) {
		#pragma omp simd
		for (int64_t j = 0; j < d; j++)
			y[j] = ((x[j] - mean) * rstd) * (1.0f + scale[j]) + shift[j];
	} else {
		#pragma omp simd
		for (int64_t j = 0; j < d; j++)
			y[j] = (x[j] - mean) * rstd;
	}
}

void fx_ops_layernorm(float *y, const float *x, int64_t m, int64_t d, float eps)
{
	#pragma omp parallel for if (m * d > 65536) schedule(static)
	for (int64_t r = 0; r < m; r++)
		ln_row(y + r * d, x + r * d, d, NULL, NULL, eps);
}

void fx_ops_layernorm_mod(float *y, const float *x, int64_t m, int64_t d,
			  const float *shift, const float *scale, float eps)
{
	#pragma omp parallel for if (m * d > 65536) schedule(static)
	for (int64_t r = 0; r < m; r++)
		ln_row(y + r * d, x + r * d, d, shift, scale, eps);
}

void fx_ops_rmsnorm_heads(float *x, int64_t ld, int64_t m, int heads, int hd,
			  const float *g, float eps)
{
	#pragma omp parallel for if (m * heads * hd > 65536) schedule(static)
	for (int64_t r = 0; r < m; r++) {
		for (int h = 0; h < heads; h++) {
			float *v = x + r * ld + (int64_t)h * hd;
			float ss = 0.0f, rs;

			#pragma omp simd reduction(+:ss)
			for (int j = 0; j < hd; j++)
				ss += v[j] * v[j];
			rs = 1.0f / sqrtf(ss / (float)hd + eps);
			#pragma omp simd
			for (int j = 0; j < hd; j++)
				v[j] = (v[j] * rs) * g[j];
		}
	}
}

void fx_ops_rope_table(float *cs, float *sn, const float *ids, int64_t n,
		       const int axes[3], double theta)
{
	int half = (axes[0] + axes[1] + axes[2]) / 2;

	#pragma omp parallel for if (n * half > 65536) schedule(static)
	for (int64_t t = 0; t < n; t++) {
		int k = 0;

		for (int a = 0; a < 3; a++) {
			double p = (double)ids[t * 3 + a];

			for (int j = 0; j < axes[a] / 2; j++, k++) {
				double w = 1.0 / pow(theta, (double)(2 * j) / (double)axes[a]);
				double ang = p * w;

				cs[t * half + k] = (float)cos(ang);
				sn[t * half + k] = (float)sin(ang);
			}
		}
	}
}

void fx_ops_rope_apply(float *x, int64_t ld, int64_t n, int heads, int hd,
		       const float *cs, const float *sn)
{
	int half = hd / 2;

	#pragma omp parallel for if (n * heads * hd > 65536) schedule(static)
	for (int64_t t = 0; t < n; t++) {
		const float *c = cs + t * half, *s = sn + t * half;

		for (int h = 0; h < heads; h++) {
			float *v = x + t * ld + (int64_t)h * hd;

			#pragma omp simd
			for (int k = 0; k < half; k++) {
				float a = v[2 * k], b = v[2 * k + 1];

				v[2 * k] = a * c[k] - b * s[k];
				v[2 * k + 1] = b * c[k] + a * s[k];
			}
		}
	}
}

/* row ← exp(row − max) in place; returns 1/Σ. Maximum and sum in 16 lanes
 * (a reduction clause vectorizes poorly and its order follows the vector
 * width), the lanes added in double. */
FX_CPU_CLONES
static float softmax_row(float *row, int64_t n)
{
	float m[16], acc[16] = { 0 }, mx;
	double sum = 0.0;
	int64_t j = 0;

	for (int i = 0; i < 16; i++)
		m[i] = row[0];
	for (; j + 16 <= n; j += 16)
		for (int i = 0; i < 16; i++)
			m[i] = fx_select_f32(row[j + i] > m[i], row[j + i], m[i]);
	for (int w = 8; w >= 1; w /= 2)
		for (int i = 0; i < w; i++)
			m[i] = fx_select_f32(m[i + w] > m[i], m[i + w], m[i]);
	mx = m[0];
	for (; j < n; j++)
		mx = fx_select_f32(row[j] > mx, row[j], mx);
	for (j = 0; j + 16 <= n; j += 16)
		#pragma omp simd
		for (int i = 0; i < 16; i++) {
			row[j + i] = exp_f32(row[j + i] - mx);
			acc[i] += row[j + i];
		}
	for (; j < n; j++) {
		row[j] = exp_f32(row[j] - mx);
		sum += row[j];
	}
	for (int i = 0; i < 16; i++)
		sum += acc[i];
	return (float)(1.0 / sum);
}

/* One head over query rows [i0, i0+mb): scores (mb, n) in s, softmax,
 * · v, then 1/sum per row. */
static void attn_block(float *oh, int64_t ldo, const float *qh, const float *kh,
		       const float *vh, int64_t ld, int64_t n, int hd, float scale,
		       int64_t mb, float *s, float *inv)
{
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)mb, (blasint)n, hd, scale,
		    qh, (blasint)ld, kh, (blasint)ld, 0.0f, s, (blasint)n);
	for (int64_t r = 0; r < mb; r++)
		inv[r] = softmax_row(s + r * n, n);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)mb, hd, (blasint)n, 1.0f,
		    s, (blasint)n, vh, (blasint)ld, 0.0f, oh, (blasint)ldo);
	for (int64_t r = 0; r < mb; r++) {
		#pragma omp simd
		for (int j = 0; j < hd; j++)
			oh[r * ldo + j] *= inv[r];
	}
}

void fx_ops_ws_free(struct fx_ops_ws *ws)
{
	if (ws) {
		free(ws->buf);
		ws->buf = NULL;
		ws->cap = 0;
	}
}

int fx_ops_attention(float *o, int64_t ldo, const float *q, const float *k,
		     const float *v, int64_t ld, int64_t n, int heads, int hd,
		     struct fx_ops_ws *ws, struct fx_err *err)
{
	int64_t bq = (int64_t)ATTN_TILE_FLOATS / (n > 0 ? n : 1), nblk;
	float scale = 1.0f / sqrtf((float)hd);
	int nt = omp_get_max_threads(), prev;
	struct fx_ops_ws own = { 0 };
	int64_t njobs;
	float *s, *inv;
	size_t need;
	int ret = 0;

	if (n <= 0)
		return 0;
	bq = bq < 64 ? 64 : bq > 2048 ? 2048 : bq;
	bq = bq > n ? n : bq;
	nblk = (n + bq - 1) / bq;
	njobs = (int64_t)heads * nblk;
	nt = njobs < nt ? (int)njobs : nt;   /* no tiles for threads without a job */
	/* per thread: a (bq, n) score tile and bq row sums */
	need = (size_t)(bq * n + bq) * (size_t)nt;
	if (!ws)
		ws = &own;
	if (need > ws->cap) {
		fx_ops_ws_free(ws);
		if (!(ws->buf = fx_ops_alloc(need * sizeof(float))))
			return fx_error(err, FX_E_NOMEM,
					"out of memory for attention scores (%d x %lld x %lld)", nt,
					(long long)bq, (long long)n);
		ws->cap = need;
	}
	s = ws->buf;
	inv = s + (size_t)(bq * n) * (size_t)nt;
	/* (head, query block) pairs over the threads, each with its own tile */
	prev = fx_ops_blas_single();
	#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
	for (int64_t job = 0; job < (int64_t)heads * nblk; job++) {
		int h = (int)(job / nblk), tid = omp_get_thread_num();
		int64_t i0 = (job % nblk) * bq, mb = n - i0 < bq ? n - i0 : bq;

		attn_block(o + i0 * ldo + (int64_t)h * hd, ldo, q + i0 * ld + (int64_t)h * hd,
			   k + (int64_t)h * hd, v + (int64_t)h * hd, ld, n, hd, scale, mb,
			   s + (size_t)tid * (size_t)(bq * n), inv + (size_t)tid * (size_t)bq);
	}
	fx_ops_blas_restore(prev);
	fx_ops_ws_free(&own);
	return ret;
}

/* GELUt(x) = 0.5·x·(1 + tanh(u)) = x·σ(2u): no cancellation for small u. */
FX_CPU_CLONES
static void gelu_tanh_span(float *x, size_t n)
{
	const float c = 0.7978845608028654f;   /* √(2/π) */

	#pragma omp simd
	for (size_t i = 0; i < n; i++) {
		float a = x[i], u = c * (a + 0.044715f * a * a * a);

		/* 0 below ~1e-34 (tanh(u) = -1 in f32 there, as torch computes it):
		 * values near FLT_MIN make the next sgemm's products subnormal,
		 * which made it 1.5x slower */
		x[i] = fx_select_f32(u < -40.0f, 0.0f, a / (1.0f + exp_f32(-2.0f * u)));
	}
}

void fx_ops_gelu_tanh(float *x, size_t n)
{
	const size_t span = 4096;

	#pragma omp parallel for schedule(static) if (n > 65536)
	for (size_t i = 0; i < n; i += span)
		gelu_tanh_span(x + i, n - i < span ? n - i : span);
}

void fx_ops_silu(float *y, const float *x, size_t n)
{
	#pragma omp parallel for simd if (n > 65536) schedule(static)
	for (size_t i = 0; i < n; i++)
		y[i] = x[i] / (1.0f + exp_f32(-x[i]));
}

void fx_ops_timestep_embed(float *out, float t, int dim)
{
	int half = dim / 2;
	float c = (float)-log(10000.0);

	for (int i = 0; i < half; i++) {
		float e = (c * (float)i) / (float)half;
		float a = t * expf(e);

		out[i] = cosf(a);
		out[half + i] = sinf(a);
	}
}

void fx_ops_gated_add(float *x, const float *y, const float *gate, int64_t m, int64_t d)
{
	#pragma omp parallel for if (m * d > 65536) schedule(static)
	for (int64_t r = 0; r < m; r++) {
		#pragma omp simd
		for (int64_t j = 0; j < d; j++)
			x[r * d + j] += gate[j] * y[r * d + j];
	}
}

void fx_ops_add(float *a, const float *b, size_t n)
{
	#pragma omp parallel for simd if (n > 65536) schedule(static)
	for (size_t i = 0; i < n; i++)
		a[i] += b[i];
}
