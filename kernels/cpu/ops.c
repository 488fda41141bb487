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

/* Tiles of a product: each side is cut into pieces of about GEMM_PIECE (a
 * multiple of 16, all equal but the last), from the shape alone, and each
 * tile is one single-threaded sgemm, the tiles spread over the threads.
 * OpenBLAS rounds an element differently depending on where it falls in a
 * call's blocking (its edge kernels sum in another order), so panels that
 * followed the thread count changed the bytes with --threads. About 768:
 * every tile repacks its operands (FLUX shapes on one thread, against one
 * call: 8 % slower with pieces of 256, 3 % with 768), while a FLUX layer
 * still gives 4 to 96 tiles to share. */
#define GEMM_PIECE 768

static int64_t piece_len(int64_t side)
{
	int64_t n = (side + GEMM_PIECE / 2) / GEMM_PIECE;

	n = n < 1 ? 1 : n;
	return ((side + n - 1) / n + 15) / 16 * 16;
}

void fx_ops_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
		 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc)
{
	const enum CBLAS_TRANSPOSE oa = ta ? CblasTrans : CblasNoTrans, ob = tb ? CblasTrans : CblasNoTrans;
	int64_t lm = M, ln = N, tm, tn;
	int prev;

	if (M <= 0 || N <= 0)
		return;
	if (M * N * K >= (1 << 22)) {   /* below: one call */
		lm = piece_len(M);
		ln = piece_len(N);
	}
	tm = (M + lm - 1) / lm;
	tn = (N + ln - 1) / ln;
	/* OpenBLAS single-threaded even for one tile: its own threads split a
	 * call by their count (inside a parallel region: the caller's thread
	 * takes the tiles in turn, settings untouched, unless the caller allowed
	 * a nested team, as fx-lowrank's layer jobs do) */
	prev = fx_ops_blas_single();
	#pragma omp parallel for schedule(dynamic, 1) \
		if (tm * tn > 1 && omp_get_active_level() < omp_get_max_active_levels())
	for (int64_t t = 0; t < tm * tn; t++) {
		int64_t i0 = t / tn * lm, j0 = t % tn * ln;
		int64_t mb = M - i0 < lm ? M - i0 : lm, nb = N - j0 < ln ? N - j0 : ln;

		cblas_sgemm(CblasRowMajor, oa, ob, (blasint)mb, (blasint)nb, (blasint)K, alpha,
			    ta ? A + i0 : A + i0 * lda, (blasint)lda, tb ? B + j0 * ldb : B + j0,
			    (blasint)ldb, beta, C + i0 * ldc + j0, (blasint)ldc);
	}
	fx_ops_blas_restore(prev);
}

/* One f32 row dot x over k: 16 partial sums, added as dot_bf16 adds them. */
FX_CPU_CLONES
static float dot_f32(const float *w, const float *x, int64_t k)
{
	float acc[16] = { 0 }, tail = 0.0f;
	int64_t c = 0;

	for (; c + 16 <= k; c += 16)
		for (int j = 0; j < 16; j++)
			acc[j] += w[c + j] * x[c + j];
	for (; c < k; c++)
		tail += w[c] * x[c];
	for (int wdt = 8; wdt >= 1; wdt /= 2)
		for (int j = 0; j < wdt; j++)
			acc[j] += acc[j + wdt];
	return acc[0] + tail;
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
	if (m == 1) {   /* not sgemv: OpenBLAS splits it by its own thread count */
		#pragma omp parallel for schedule(static) if (n * k > 65536)
		for (int64_t r = 0; r < n; r++) {
			float d = dot_f32(w + r * k, x, k);

			y[r] = b ? b[r] + d : d;
		}
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

/* Eight floats: GCC/Clang vector extension, lowered to whatever the clone's
 * target has (one AVX register, or two SSE ones). Moved with memcpy (no
 * alignment assumed; no vector-valued functions, whose ABI differs by
 * target). */
typedef float v8f __attribute__((vector_size(32)));

/* Residual columns per pass: every row block of the thread goes over the
 * pass's slice of down, read as tiles of 16 columns, each (rank, 16)
 * contiguous (fx_ops_residual_pack's layout; down's own rows are k floats
 * apart, and read in place a tile's rank rows fell into one L1 set). */
#define RES_COLS 256

/* Rows [0, nr) (nr <= 4) of dst, columns [c0, c1): acc = Σ_l up[i,l]·down[l,j]
 * in l order (multiply, then add: no contraction), dst = w·s − acc. dp: the
 * columns' tiles of down (NULL: read down in place). Every element takes the
 * same operations whatever nr, its column and dp, so row blocks, threads and
 * a failed allocation cannot change its bytes. */
FX_CPU_CLONES
static void residual_tile(float *dst, int64_t ldd, const float *w, int64_t ldw, const float *s,
			  const float *up, int64_t rank, const float *down, int64_t k,
			  const float *dp, int nr, int64_t c0, int64_t c1)
{
	const int64_t ls = dp ? 16 : k;   /* from row l to l+1 of a tile */
	int64_t j = c0;
	v8f x, sv;

/* the 16 columns from jt of down: a packed (rank, 16) tile, or in place */
#define TILE(jt) (dp ? dp + ((jt) - c0) * rank : down + (jt))
/* dst[r, col..col+8) = w·s − acc */
#define STORE8(r, col, acc)                                                   \
	do {                                                                  \
		memcpy(&x, w + (r) * ldw + (col), sizeof(x));                  \
		if (s) {                                                      \
			memcpy(&sv, s + (col), sizeof(sv));                    \
			x *= sv;                                              \
		}                                                             \
		x -= (acc);                                                   \
		memcpy(dst + (r) * ldd + (col), &x, sizeof(x));                \
	} while (0)

	if (nr == 4)
		for (; j + 16 <= c1; j += 16) {
			const float *d = TILE(j);
			v8f a[8] = { { 0 } }, d0, d1;

			/* named accumulators: a loop over the four rows kept them
			 * in memory */
			for (int64_t l = 0; l < rank; l++) {
				const float u0 = up[l], u1 = up[rank + l], u2 = up[2 * rank + l],
					    u3 = up[3 * rank + l];

				memcpy(&d0, d + l * ls, sizeof(d0));
				memcpy(&d1, d + l * ls + 8, sizeof(d1));
				a[0] += (v8f){ u0, u0, u0, u0, u0, u0, u0, u0 } * d0;
				a[1] += (v8f){ u0, u0, u0, u0, u0, u0, u0, u0 } * d1;
				a[2] += (v8f){ u1, u1, u1, u1, u1, u1, u1, u1 } * d0;
				a[3] += (v8f){ u1, u1, u1, u1, u1, u1, u1, u1 } * d1;
				a[4] += (v8f){ u2, u2, u2, u2, u2, u2, u2, u2 } * d0;
				a[5] += (v8f){ u2, u2, u2, u2, u2, u2, u2, u2 } * d1;
				a[6] += (v8f){ u3, u3, u3, u3, u3, u3, u3, u3 } * d0;
				a[7] += (v8f){ u3, u3, u3, u3, u3, u3, u3, u3 } * d1;
			}
			for (int i = 0; i < 4; i++) {
				STORE8(i, j, a[2 * i]);
				STORE8(i, j + 8, a[2 * i + 1]);
			}
		}
	/* the rest one row at a time: 64 columns (eight chains, as above), 16,
	 * then single columns */
	for (int i = 0; i < nr && j < c1; i++) {
		const float *u = up + i * rank;
		int64_t jj = j;

		for (; jj + 64 <= c1; jj += 64) {
			const float *d0 = TILE(jj), *d1 = TILE(jj + 16), *d2 = TILE(jj + 32),
				    *d3 = TILE(jj + 48);
			v8f a[8] = { { 0 } }, dv;

			/* written out: a loop over the eight kept them in memory */
			for (int64_t l = 0; l < rank; l++) {
				const v8f uv = { u[l], u[l], u[l], u[l], u[l], u[l], u[l], u[l] };
				const int64_t o = l * ls;

				memcpy(&dv, d0 + o, sizeof(dv));
				a[0] += uv * dv;
				memcpy(&dv, d0 + o + 8, sizeof(dv));
				a[1] += uv * dv;
				memcpy(&dv, d1 + o, sizeof(dv));
				a[2] += uv * dv;
				memcpy(&dv, d1 + o + 8, sizeof(dv));
				a[3] += uv * dv;
				memcpy(&dv, d2 + o, sizeof(dv));
				a[4] += uv * dv;
				memcpy(&dv, d2 + o + 8, sizeof(dv));
				a[5] += uv * dv;
				memcpy(&dv, d3 + o, sizeof(dv));
				a[6] += uv * dv;
				memcpy(&dv, d3 + o + 8, sizeof(dv));
				a[7] += uv * dv;
			}
			for (int q = 0; q < 8; q++)
				STORE8(i, jj + 8 * q, a[q]);
		}
		for (; jj + 16 <= c1; jj += 16) {
			const float *d = TILE(jj);
			v8f a[2] = { { 0 } }, dv;

			for (int64_t l = 0; l < rank; l++) {
				const v8f uv = { u[l], u[l], u[l], u[l], u[l], u[l], u[l], u[l] };

				memcpy(&dv, d + l * ls, sizeof(dv));
				a[0] += uv * dv;
				memcpy(&dv, d + l * ls + 8, sizeof(dv));
				a[1] += uv * dv;
			}
			STORE8(i, jj, a[0]);
			STORE8(i, jj + 8, a[1]);
		}
		for (; jj < c1; jj++) {
			float acc = 0.0f, xs = w[i * ldw + jj];

			for (int64_t l = 0; l < rank; l++)
				acc += u[l] * down[l * k + jj];
			if (s)
				xs *= s[jj];
			dst[i * ldd + jj] = xs - acc;
		}
	}
#undef TILE
#undef STORE8
}

void fx_ops_residual_pack(float *dp, const float *down, int64_t rank, int64_t k)
{
	#pragma omp parallel for schedule(static) if (!omp_in_parallel() && rank * k > (1 << 20))
	for (int64_t j = 0; j < k / 16 * 16; j += 16)
		for (int64_t l = 0; l < rank; l++)
			memcpy(dp + j * rank + l * 16, down + l * k + j, 16 * sizeof(float));
}

void fx_ops_residual(float *dst, const float *w, const float *s, const float *up,
		     const float *down, const float *packed, int64_t rows, int64_t k, int64_t rank)
{
	const int64_t nblk = (rows + 3) / 4;

	if (rows <= 0 || k <= 0)
		return;
	if (rank <= 0 || !up || !down) {   /* no branch: w·s (x − 0 is x) */
		#pragma omp parallel for schedule(static) if (!omp_in_parallel() && rows * k > (1 << 20))
		for (int64_t i = 0; i < rows; i++)
			for (int64_t j = 0; j < k; j++)
				dst[i * k + j] = s ? w[i * k + j] * s[j] : w[i * k + j];
		return;
	}
	/* each thread a run of 4-row blocks; per column slice, all its blocks */
	#pragma omp parallel if (!omp_in_parallel() && rows * k * (rank + 1) > (1 << 22))
	{
		int t = omp_get_thread_num(), nt = omp_get_num_threads();
		int64_t b0 = nblk * t / nt, b1 = nblk * (t + 1) / nt;
		/* without the caller's tiles, a slice's own when a few row blocks
		 * share it */
		float *own = !packed && b1 - b0 >= 2 ? malloc((size_t)(rank * RES_COLS) * sizeof(float)) : NULL;

		for (int64_t c0 = 0; c0 < k && b0 < b1; c0 += RES_COLS) {
			int64_t c1 = c0 + RES_COLS < k ? c0 + RES_COLS : k;
			const float *dp = packed ? packed + c0 * rank : own;

			for (int64_t j = c0; own && j + 16 <= c1; j += 16)
				for (int64_t l = 0; l < rank; l++)
					memcpy(own + (j - c0) * rank + l * 16, down + l * k + j, 16 * sizeof(float));
			for (int64_t b = b0; b < b1; b++) {
				int64_t r0 = b * 4;
				int nr = rows - r0 < 4 ? (int)(rows - r0) : 4;

				residual_tile(dst + r0 * k, k, w + r0 * k, k, s, up + r0 * rank, rank, down,
					      k, dp, nr, c0, c1);
			}
		}
		free(own);
	}
}
