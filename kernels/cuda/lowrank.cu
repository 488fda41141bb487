// fx-lowrank on a GPU: the search of kernels/fx-lowrank.h with cuBLAS for
// every product, cuSOLVER QR for the randomized SVD, own kernels for the
// residual, the quantizers and the error; the l×l SVDs (l = rank +
// oversample) run on the host. Same algorithm and candidate order as
// kernels/cpu/lowrank.c; results agree within floating-point tolerance
// (different summation orders), not bit for bit.
//
// Layouts: W, R, X, Y, E are row-major as on the host. The thin rsvd
// matrices (Ω, Y = A·Ω, Z = Aᵀ·Y, the basis) are column-major so cuSOLVER
// can factor them in place; a column-major (k,r) basis is the row-major
// (r,k) down matrix.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "../fx-lowrank.h"
#include "../../common/fx-tensor.h"
}

#include "fx-cuda-check.h"
#define CK(stmt) FX_CUDA_CHECK_DEV(g->dev, stmt)
#define CB(stmt) FX_CUBLAS_CHECK_DEV(g->dev, stmt)
#define CS(stmt) FX_CUSOLVER_CHECK_DEV(g->dev, stmt)
#define KCHECK() CK(cudaGetLastError())
#define TRY(expr) do { if ((ret = (expr)) < 0) goto out; } while (0)

// ---- number formats (bit-exact ports of common/fx-convert.c) -------------

__device__ __forceinline__ float bf16r(float f)
{
	uint32_t u = __float_as_uint(f);

	u += 0x7fffu + ((u >> 16) & 1u);
	return __uint_as_float(u & 0xffff0000u);
}

__device__ __forceinline__ float e4m3_value(uint32_t c)
{
	uint32_t e = (c >> 3) & 0xfu, m = c & 7u;
	float v = e == 0 ? (float)m * (1.0f / 512.0f) : __uint_as_float(((e + 120u) << 23) | (m << 20));

	return (c & 0x80) ? -v : v;
}

// Nearest E4M3 code of a positive finite f, saturating at 448.
__device__ __forceinline__ uint32_t e4m3_code(float f)
{
	uint32_t a = __float_as_uint(f) & 0x7fffffffu, code;

	if (a >= 0x43e00000u) {
		code = 0x7e;
	} else if (a < 0x3c800000u) {
		float q = __uint_as_float(a) * 512.0f;
		uint32_t qi = (uint32_t)q;
		float rem = q - (float)qi;
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

__device__ __forceinline__ float e2m1_even_mag(float a)
{
	return 0.5f * (float)(a > 0.25f) + 0.5f * (float)(a >= 0.75f) + 0.5f * (float)(a > 1.25f) +
	       0.5f * (float)(a >= 1.75f) + (float)(a > 2.5f) + (float)(a >= 3.5f) +
	       2.0f * (float)(a > 5.0f);
}

__device__ __forceinline__ float e2m1_low_mag(float a)
{
	return 0.5f * (float)(a > 0.25f) + 0.5f * (float)(a > 0.75f) + 0.5f * (float)(a > 1.25f) +
	       0.5f * (float)(a > 1.75f) + (float)(a > 2.5f) + (float)(a > 3.5f) +
	       2.0f * (float)(a > 5.0f);
}

#define RNE_MAGIC 12582912.0f

// ---- kernels ---------------------------------------------------------------

// One block per row: r = w·s − r (r holds up·down), rowmax = max |r|.
__global__ void k_resid(float *r, const float *w, const float *s, float *rowmax, int64_t k)
{
	__shared__ float red[256];
	const int64_t row = blockIdx.x;
	float m = 0.0f;

	for (int64_t j = threadIdx.x; j < k; j += blockDim.x) {
		float v = __fsub_rn(__fmul_rn(w[row * k + j], s ? s[j] : 1.0f), r[row * k + j]);
		r[row * k + j] = v;
		m = fmaxf(m, fabsf(v));
	}
	red[threadIdx.x] = m;
	__syncthreads();
	for (int h = blockDim.x / 2; h > 0; h >>= 1) {
		if ((int)threadIdx.x < h)
			red[threadIdx.x] = fmaxf(red[threadIdx.x], red[threadIdx.x + h]);
		__syncthreads();
	}
	if (threadIdx.x == 0)
		rowmax[row] = red[0];
}

// a = w·s − r (the refinement target).
__global__ void k_target(float *a, const float *w, const float *s, const float *r, int64_t n, int64_t k)
{
	int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < n * k)
		a[i] = __fsub_rn(__fmul_rn(w[i], s[i % k]), r[i]);
}

// One thread per 16-group: NVFP4 round to nearest and back, tensor scale t[row].
__global__ void k_resq_fp4(float *r, const float *t, int64_t n, int64_t k)
{
	int64_t gi = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, ng = k / 16;
	float *wg, gmax = 0.0f, sc, tt;
	uint32_t sf;

	if (gi >= n * ng)
		return;
	wg = r + (gi / ng) * k + (gi % ng) * 16;
	tt = t[gi / ng];
	for (int i = 0; i < 16; i++)
		gmax = fmaxf(gmax, fabsf(wg[i]));
	if (!(gmax > 0.0f)) {
		for (int i = 0; i < 16; i++)
			wg[i] = 0.0f;
		return;
	}
	sf = e4m3_code(bf16r(__fdiv_rn(__fdiv_rn(gmax, 6.0f), tt)));
	sc = e4m3_value(sf ? sf : 1u);
	for (int i = 0; i < 16; i++) {
		float v = __fdiv_rn(__fdiv_rn(wg[i], tt), sc), q = e2m1_low_mag(fabsf(v));
		wg[i] = __fmul_rn(__fmul_rn(v < 0.0f ? -q : q, sc), tt);
	}
}

// One thread per 64-group: INT4 round to nearest and back.
__global__ void k_resq_int4(float *r, int64_t n, int64_t k)
{
	int64_t gi = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, ng = k / 64;
	float *wg, amax = 0.0f, sc;

	if (gi >= n * ng)
		return;
	wg = r + (gi / ng) * k + (gi % ng) * 64;
	for (int i = 0; i < 64; i++)
		amax = fmaxf(amax, fabsf(wg[i]));
	if (!(amax > 0.0f)) {
		for (int i = 0; i < 64; i++)
			wg[i] = 0.0f;
		return;
	}
	sc = bf16r(__fdiv_rn(amax, 7.0f));
	if (!(sc > 0.0f))
		sc = 1.0f;
	for (int i = 0; i < 64; i++) {
		float v = fminf(fmaxf(__fdiv_rn(wg[i], sc), -8.0f), 7.0f);
		wg[i] = __fmul_rn(__fsub_rn(__fadd_rn(v, RNE_MAGIC), RNE_MAGIC), sc);
	}
}

// One thread per (row, group): the runtime's activation quantization.
__global__ void k_actq(float *out, const float *x, const float *s, float c, int64_t m, int64_t k,
		       int fp4, int uns)
{
	const int G = fp4 ? 16 : 64;
	const float qmax = fp4 ? 6.0f : (uns ? 15.0f : 7.0f), lo = uns ? 0.0f : -8.0f;
	int64_t gi = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, ng = k / G, base;
	float xp[64], amax = 0.0f, sc, sa, inv;

	if (gi >= m * ng)
		return;
	base = (gi / ng) * k + (gi % ng) * G;
	for (int i = 0; i < G; i++) {
		int64_t col = (gi % ng) * G + i;
		float t = bf16r(__fadd_rn(bf16r(x[base + i]), c));
		xp[i] = bf16r(s ? __fdiv_rn(t, s[col]) : t);
		amax = fmaxf(amax, fabsf(xp[i]));
	}
	sc = __fmul_rn(amax, __fdiv_rn(1.0f, qmax));
	if (fp4 && sc > 448.0f)
		sc = 448.0f;
	sa = sc > 0.0f ? (fp4 ? e4m3_value(e4m3_code(sc)) : bf16r(sc)) : 0.0f;
	inv = sc > 0.0f ? __fdiv_rn(1.0f, sc) : 0.0f;
	for (int i = 0; i < G; i++) {
		int64_t col = (gi % ng) * G + i;
		float cs = c != 0.0f ? (s ? __fdiv_rn(c, s[col]) : c) : 0.0f, v;

		if (!(sc > 0.0f)) {
			out[base + i] = -cs;
			continue;
		}
		v = __fmul_rn(xp[i], inv);
		if (fp4) {
			float q = e2m1_even_mag(fabsf(v));
			v = v < 0.0f ? -q : q;
		} else {
			v = fminf(fmaxf(v, lo), qmax);
			v = __fsub_rn(__fadd_rn(v, RNE_MAGIC), RNE_MAGIC);
		}
		out[base + i] = __fsub_rn(__fmul_rn(v, sa), cs);
	}
}

// d (m,k) = X̃ − Xq, X̃ = bf16(bf16(x + c)/s) − c/s: the activation rounding error.
__global__ void k_actq_err(float *d, const float *x, const float *xq, const float *s, float c,
			   int64_t m, int64_t k)
{
	int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, col;
	float t, xp, cs;

	if (i >= m * k)
		return;
	col = i % k;
	t = bf16r(__fadd_rn(bf16r(x[i]), c));
	xp = bf16r(s ? __fdiv_rn(t, s[col]) : t);
	cs = c != 0.0f ? (s ? __fdiv_rn(c, s[col]) : c) : 0.0f;
	d[i] = __fsub_rn(xp, __fadd_rn(xq[i], cs));
}

// out[block] = the sum of every thread's acc (blocks of at most 256
// threads, a power of two): f64, in a fixed order.
__device__ void row_store(double *out, double acc)
{
	__shared__ double red[256];

	red[threadIdx.x] = acc;
	__syncthreads();
	for (int h = blockDim.x / 2; h > 0; h >>= 1) {
		if ((int)threadIdx.x < h)
			red[threadIdx.x] += red[threadIdx.x + h];
		__syncthreads();
	}
	if (threadIdx.x == 0)
		out[blockIdx.x] = red[0];
}

// One block per row: f64 ‖ea‖² + gw·‖e − ea‖².
__global__ void k_rowscore(double *out, const float *e, const float *ea, int64_t n, double gw)
{
	const int64_t row = blockIdx.x;
	double acc = 0.0;

	for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
		double a = ea[row * n + j], w = (double)e[row * n + j] - a;
		acc += a * a + gw * w * w;
	}
	row_store(out, acc);
}

// ds (r,k) = bf16(down (r,k) / s): lora_down as the checkpoint stores it.
__global__ void k_divcols(float *ds, const float *down, const float *s, int64_t r, int64_t k)
{
	int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < r * k)
		ds[i] = bf16r(s ? __fdiv_rn(down[i], s[i % k]) : down[i]);
}

// b (count) = bf16(a): lora_up as the checkpoint stores it.
__global__ void k_bf16(float *b, const float *a, int64_t count)
{
	int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < count)
		b[i] = bf16r(a[i]);
}

// Column-major (rows, l) matrix: row i scaled by s[i].
__global__ void k_scale_rows_cm(float *a, const float *s, int64_t rows, int l)
{
	int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;

	if (i < rows * l)
		a[i] *= s[i % rows];
}

// One block per row: f64 sum of squares.
__global__ void k_rowsumsq(double *out, const float *e, int64_t n)
{
	const int64_t row = blockIdx.x;
	double acc = 0.0;

	for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
		acc += (double)e[row * n + j] * (double)e[row * n + j];
	row_store(out, acc);
}

static unsigned nblocks(int64_t count, int threads)
{
	return (unsigned)((count + threads - 1) / threads);
}

// ---- the context ---------------------------------------------------------

struct gctx {
	int dev;
	const struct fx_lowrank_problem *p;
	int64_t n, k, m, ms;
	int r, l;
	cublasHandle_t cb;
	cusolverDnHandle_t cs;
	// device
	float *w, *x, *xs, *y, *ys, *e, *xq, *t, *ds, *rbuf, *abuf, *s, *rowmax, *rowt;
	float *up, *bup, *bdown, *b0up, *b0down, *om, *yl, *z, *basis, *fbasis, *sbasis, *fup, *small, *work;
	float *xd, *ea;   // gw > 0: (m,k), (m,n)
	float *ub;        // (n,r) bf16(up)
	double gw;
	double *rowsum;
	int *info;
	int lwork;
	// host
	float *h_wmax, *h_xspan, *h_s, *h_rowmax, *h_rowt, *h_small, *h_m, *h_vr, *h_su, *h_sd;
	double *h_rowsum;
	double ynorm, ysnorm;
};

// Row-major C (M,N) = op(A)·op(B) through column-major cuBLAS (Cᵀ = op(B)ᵀ·op(A)ᵀ).
static cublasStatus_t rm_gemm(cublasHandle_t h, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
			      float alpha, const float *A, int64_t lda, const float *B, int64_t ldb,
			      float beta, float *C, int64_t ldc)
{
	return cublasSgemm(h, tb ? CUBLAS_OP_T : CUBLAS_OP_N, ta ? CUBLAS_OP_T : CUBLAS_OP_N,
			   (int)N, (int)M, (int)K, &alpha, B, (int)ldb, A, (int)lda, &beta, C, (int)ldc);
}

static void ctx_free(struct gctx *g)
{
	float **d[] = { &g->w, &g->x, &g->xs, &g->y, &g->ys, &g->e, &g->xq, &g->t, &g->ds,
			&g->rbuf, &g->abuf, &g->s, &g->rowmax, &g->rowt, &g->up, &g->bup,
			&g->bdown, &g->b0up, &g->b0down, &g->om, &g->yl, &g->z, &g->basis, &g->fbasis,
			&g->sbasis, &g->fup, &g->small, &g->work, &g->xd, &g->ea, &g->ub };

	for (size_t i = 0; i < sizeof(d) / sizeof(d[0]); i++)
		cudaFree(*d[i]);
	cudaFree(g->rowsum);
	cudaFree(g->info);
	if (g->cb)
		cublasDestroy(g->cb);
	if (g->cs)
		cusolverDnDestroy(g->cs);
	free(g->h_wmax); free(g->h_xspan); free(g->h_s); free(g->h_rowmax); free(g->h_rowt); free(g->h_small);
	free(g->h_m); free(g->h_vr); free(g->h_su); free(g->h_sd); free(g->h_rowsum);
}

// Start vectors: the CPU path's splitmix64 stream (row-major k×l), transposed.
static void fill_random_cm(float *v, int64_t k, int l, uint64_t seed)
{
	uint64_t x = seed * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull;

	for (int64_t i = 0; i < k; i++)
		for (int j = 0; j < l; j++) {
			uint64_t z = (x += 0x9e3779b97f4a7c15ull);
			z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
			z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
			z ^= z >> 31;
			v[i + (int64_t)j * k] = (float)((int64_t)(z >> 40) - (1 << 23)) * (1.0f / (float)(1 << 23));
		}
}

// T = smallest bf16 >= (amax/6)/448 (as fx-quant).
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

static int orth(struct gctx *g, float *a, int64_t rows, struct fx_err *err)
{
	int ret = 0, info = 0;

	CS(cusolverDnSgeqrf(g->cs, (int)rows, g->l, a, (int)rows, g->small, g->work, g->lwork, g->info));
	CS(cusolverDnSorgqr(g->cs, (int)rows, g->l, g->l, a, (int)rows, g->small, g->work, g->lwork, g->info));
	CK(cudaMemcpy(&info, g->info, sizeof(int), cudaMemcpyDeviceToHost));
	if (info)
		ret = fx_error(err, FX_E_CUDA, "cusolver: QR failed (info %d)", info);
out:
	return ret;
}

// Branch of A·diag(s) (s on the device, or NULL) into g->up (row-major n×r)
// and g->basis (column-major k×l; its first r columns are down).
static int rsvd(struct gctx *g, const float *a, const float *s, bool warm, int power, uint64_t seed,
		struct fx_err *err)
{
	const int64_t n = g->n, k = g->k;
	const int l = g->l, r = g->r;
	const float one = 1.0f, zero = 0.0f;
	int ret = 0;

	if (warm) {
		CK(cudaMemcpy(g->om, g->basis, (size_t)k * l * sizeof(float), cudaMemcpyDeviceToDevice));
	} else {
		float *h = (float *)malloc((size_t)k * l * sizeof(float));
		if (!h)
			return fx_error(err, FX_E_NOMEM, "out of memory");
		fill_random_cm(h, k, l, seed);
		ret = cudaMemcpy(g->om, h, (size_t)k * l * sizeof(float), cudaMemcpyHostToDevice) ==
		      cudaSuccess ? 0 : fx_error(err, FX_E_CUDA, "cuda: upload of the start vectors failed");
		free(h);
		if (ret < 0)
			return ret;
	}
	if (s) {
		k_scale_rows_cm<<<nblocks(k * l, 256), 256>>>(g->om, s, k, l);
		KCHECK();
	}
	// yl (n,l) = A·Ω: A row-major is column-major Aᵀ (k,n)
	CB(cublasSgemm(g->cb, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, l, (int)k, &one, a, (int)k, g->om,
		       (int)k, &zero, g->yl, (int)n));
	TRY(orth(g, g->yl, n, err));
	for (int it = 0; it <= power; it++) {
		// z (k,l) = diag(s)·Aᵀ·yl
		CB(cublasSgemm(g->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)k, l, (int)n, &one, a, (int)k,
			       g->yl, (int)n, &zero, g->z, (int)k));
		if (s) {
			k_scale_rows_cm<<<nblocks(k * l, 256), 256>>>(g->z, s, k, l);
			KCHECK();
		}
		if (it == power)
			break;
		TRY(orth(g, g->z, k, err));
		if (s) {
			k_scale_rows_cm<<<nblocks(k * l, 256), 256>>>(g->z, s, k, l);
			KCHECK();
		}
		CB(cublasSgemm(g->cb, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, l, (int)k, &one, a, (int)k, g->z,
			       (int)k, &zero, g->yl, (int)n));
		TRY(orth(g, g->yl, n, err));
	}
	// z = Qz·Rz; B = Yᵀ·A·diag(s) = Rzᵀ·Qzᵀ; SVD of Rzᵀ on the host
	{
		int info = 0;

		CS(cusolverDnSgeqrf(g->cs, (int)k, l, g->z, (int)k, g->small, g->work, g->lwork, g->info));
		CK(cudaMemcpy(&info, g->info, sizeof(int), cudaMemcpyDeviceToHost));
		if (info) {
			ret = fx_error(err, FX_E_CUDA, "cusolver: QR failed (info %d)", info);
			goto out;
		}
	}
	CK(cudaMemcpy2D(g->h_small, (size_t)l * sizeof(float), g->z, (size_t)k * sizeof(float),
			(size_t)l * sizeof(float), (size_t)l, cudaMemcpyDeviceToHost));
	// h_small column-major Rz = row-major Rzᵀ; clear what is below Rz's diagonal
	for (int j = 0; j < l; j++)
		for (int i = j + 1; i < l; i++)
			g->h_small[i + (int64_t)j * l] = 0.0f;
	TRY(fx_lowrank_svd_cpu(g->h_su, g->h_sd, g->h_small, NULL, l, l, l, err));
	CS(cusolverDnSorgqr(g->cs, (int)k, l, l, g->z, (int)k, g->small, g->work, g->lwork, g->info));
	// h_su row-major (l,l) = Ur·Σ: its first r columns, column-major (l,r)
	for (int j = 0; j < r; j++)
		for (int i = 0; i < l; i++)
			g->h_m[i + (int64_t)j * l] = g->h_su[(int64_t)i * l + j];
	CK(cudaMemcpy(g->small, g->h_m, (size_t)l * r * sizeof(float), cudaMemcpyHostToDevice));
	// up row-major (n,r) = column-major (r,n) = Mᵀ·ylᵀ
	CB(cublasSgemm(g->cb, CUBLAS_OP_T, CUBLAS_OP_T, r, (int)n, l, &one, g->small, l, g->yl,
		       (int)n, &zero, g->up, r));
	// basis (k,l) = Qz·Vr; h_sd row-major Vrᵀ = column-major Vr
	CK(cudaMemcpy(g->small, g->h_sd, (size_t)l * l * sizeof(float), cudaMemcpyHostToDevice));
	CB(cublasSgemm(g->cb, CUBLAS_OP_N, CUBLAS_OP_N, (int)k, l, l, &one, g->z, (int)k, g->small, l,
		       &zero, g->basis, (int)k));
out:
	return ret;
}

// Exact branch: A·diag(s) (from the host) by LAPACK, uploaded.
static int svd_host(struct gctx *g, const float *a_dev, const float *s_host, struct fx_err *err)
{
	const int64_t n = g->n, k = g->k;
	const int r = g->r;
	float *ha = (float *)malloc((size_t)n * k * sizeof(float));
	float *hu = (float *)malloc((size_t)n * r * sizeof(float));
	float *hd = (float *)malloc((size_t)r * k * sizeof(float));
	int ret = 0;

	if (!ha || !hu || !hd) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory for the SVD");
		goto out;
	}
	CK(cudaMemcpy(ha, a_dev, (size_t)n * k * sizeof(float), cudaMemcpyDeviceToHost));
	TRY(fx_lowrank_svd_cpu(hu, hd, ha, s_host, n, k, r, err));
	CK(cudaMemcpy(g->up, hu, (size_t)n * r * sizeof(float), cudaMemcpyHostToDevice));
	CK(cudaMemcpy(g->basis, hd, (size_t)r * k * sizeof(float), cudaMemcpyHostToDevice));
out:
	free(ha);
	free(hu);
	free(hd);
	return ret;
}

static int branch(struct gctx *g, const struct fx_lowrank_opts *o, const float *a, bool scaled,
		  bool warm, int power, struct fx_err *err)
{
	if (o->method == FX_LOWRANK_SVD)
		return svd_host(g, a, scaled ? g->h_s : NULL, err);
	return rsvd(g, a, scaled ? g->s : NULL, warm, power, o->seed, err);
}

// rbuf = deq(Q(W·diag(s) − up·down)); s NULL: ones; rank 0: no branch.
static int residual(struct gctx *g, const float *s, int r, struct fx_err *err)
{
	const int64_t n = g->n, k = g->k;
	const struct fx_lowrank_problem *p = g->p;
	int ret = 0;

	if (r > 0) {
		// row-major L (n,k) = up (n,r)·down (r,k); down = basis columns
		CB(rm_gemm(g->cb, false, false, n, k, r, 1.0f, g->up, r, g->basis, k, 0.0f, g->rbuf, k));
	} else {
		CK(cudaMemset(g->rbuf, 0, (size_t)n * k * sizeof(float)));
	}
	k_resid<<<(unsigned)n, 256>>>(g->rbuf, g->w, s, g->rowmax, k);
	KCHECK();
	if (p->prec == FX_QPREC_INT4) {
		k_resq_int4<<<nblocks(n * (k / 64), 128), 128>>>(g->rbuf, n, k);
		KCHECK();
		goto out;
	}
	CK(cudaMemcpy(g->h_rowmax, g->rowmax, (size_t)n * sizeof(float), cudaMemcpyDeviceToHost));
	{
		int nm = p->member_rows && p->nmember > 1 ? p->nmember : 1;
		int64_t row0 = 0;

		for (int mi = 0; mi < nm; mi++) {
			int64_t r1 = row0 + (nm > 1 ? p->member_rows[mi] : n);
			float amax = 0.0f, t;

			for (int64_t i = row0; i < r1; i++)
				amax = g->h_rowmax[i] > amax ? g->h_rowmax[i] : amax;
			t = nvfp4_tscale(amax);
			for (int64_t i = row0; i < r1; i++)
				g->h_rowt[i] = t;
			row0 = r1;
		}
	}
	CK(cudaMemcpy(g->rowt, g->h_rowt, (size_t)n * sizeof(float), cudaMemcpyHostToDevice));
	k_resq_fp4<<<nblocks(n * (k / 16), 128), 128>>>(g->rbuf, g->rowt, n, k);
	KCHECK();
out:
	return ret;
}

// E = Y − X·bf16(down/s)ᵀ·bf16(up)ᵀ − Xq·Rdqᵀ over mm rows: *truth = ‖E‖², *out the
// score the search ranks by (fx-lowrank.h): ‖E‖², or with gw > 0
// ‖Ea‖² + gw·‖E − Ea‖², Ea = (X̃ − Xq)·Rdqᵀ.
static int eval(struct gctx *g, const float *x, const float *y, int64_t mm, const float *s, int r,
		double *out, double *truth, struct fx_err *err)
{
	const struct fx_lowrank_problem *p = g->p;
	const int64_t n = g->n, k = g->k;
	const int fp4 = p->prec == FX_QPREC_NVFP4;
	const int G = fp4 ? 16 : 64;
	const float c = p->shift ? FX_LOWRANK_SHIFT : 0.0f;
	int ret = 0;

	k_actq<<<nblocks(mm * (k / G), 128), 128>>>(g->xq, x, s, c, mm, k, fp4, p->shift);
	KCHECK();
	CK(cudaMemcpy(g->e, y, (size_t)mm * n * sizeof(float), cudaMemcpyDeviceToDevice));
	if (r > 0) {
		k_divcols<<<nblocks((int64_t)r * k, 256), 256>>>(g->ds, g->basis, s, r, k);
		KCHECK();
		k_bf16<<<nblocks(n * r, 256), 256>>>(g->ub, g->up, n * r);
		KCHECK();
		CB(rm_gemm(g->cb, false, true, mm, r, k, 1.0f, x, k, g->ds, k, 0.0f, g->t, r));
		CB(rm_gemm(g->cb, false, true, mm, n, r, -1.0f, g->t, r, g->ub, r, 1.0f, g->e, n));
	}
	CB(rm_gemm(g->cb, false, true, mm, n, k, -1.0f, g->xq, k, g->rbuf, k, 1.0f, g->e, n));
	k_rowsumsq<<<(unsigned)mm, 256>>>(g->rowsum, g->e, n);
	KCHECK();
	CK(cudaMemcpy(g->h_rowsum, g->rowsum, (size_t)mm * sizeof(double), cudaMemcpyDeviceToHost));
	*truth = 0.0;
	for (int64_t i = 0; i < mm; i++)
		*truth += g->h_rowsum[i];
	*out = *truth;
	if (!(g->gw > 0.0))
		goto out;
	k_actq_err<<<nblocks(mm * k, 256), 256>>>(g->xd, x, g->xq, s, c, mm, k);
	KCHECK();
	CB(rm_gemm(g->cb, false, true, mm, n, k, 1.0f, g->xd, k, g->rbuf, k, 0.0f, g->ea, n));
	k_rowscore<<<(unsigned)mm, 256>>>(g->rowsum, g->e, g->ea, n, g->gw);
	KCHECK();
	CK(cudaMemcpy(g->h_rowsum, g->rowsum, (size_t)mm * sizeof(double), cudaMemcpyDeviceToHost));
	*out = 0.0;
	for (int64_t i = 0; i < mm; i++)
		*out += g->h_rowsum[i];
out:
	return ret;
}

static double rel(double e, double norm)
{
	return norm > 0.0 ? e / norm : (e > 0.0 ? INFINITY : 0.0);
}

static int ctx_init(struct gctx *g, int dev, const struct fx_lowrank_problem *p,
		    const struct fx_lowrank_opts *o, struct fx_err *err)
{
	const int64_t n = p->n, k = p->k, m = p->m;
	int64_t l64 = o->rank + (o->oversample > 0 ? o->oversample : 0);
	int ret = 0, lw1 = 0, lw2 = 0, lw3 = 0, lw4 = 0;

	memset(g, 0, sizeof(*g));
	g->dev = dev;
	g->p = p;
	g->n = n;
	g->k = k;
	g->m = m;
	g->r = o->rank;
	l64 = l64 < n ? l64 : n;
	g->l = (int)(l64 < k ? l64 : k);
	g->ms = o->search_rows > 0 && o->search_rows < m ? o->search_rows : m;
	CK(cudaSetDevice(dev));
	CB(cublasCreate(&g->cb));
	CS(cusolverDnCreate(&g->cs));
#define DALLOC(ptr, count) CK(cudaMalloc((void **)&(ptr), (size_t)(count) * sizeof(*(ptr))))
	DALLOC(g->w, n * k);
	DALLOC(g->rbuf, n * k);
	DALLOC(g->abuf, n * k);
	DALLOC(g->x, m * k);
	DALLOC(g->xs, g->ms * k);
	DALLOC(g->y, m * n);
	DALLOC(g->ys, g->ms * n);
	DALLOC(g->e, m * n);
	DALLOC(g->xq, m * k);
	DALLOC(g->t, m * g->r);
	DALLOC(g->ds, (int64_t)g->r * k);
	DALLOC(g->s, k);
	DALLOC(g->rowmax, n);
	DALLOC(g->rowt, n);
	DALLOC(g->up, n * g->r);
	DALLOC(g->bup, n * g->r);
	DALLOC(g->bdown, (int64_t)g->r * k);
	DALLOC(g->b0up, n * g->r);
	DALLOC(g->b0down, (int64_t)g->r * k);
	DALLOC(g->om, k * g->l);
	DALLOC(g->yl, n * g->l);
	DALLOC(g->z, k * g->l);
	DALLOC(g->basis, k * g->l);
	DALLOC(g->fbasis, (int64_t)o->finalists * k * g->l);
	DALLOC(g->sbasis, (int64_t)FX_LOWRANK_SEEDS * k * g->l);
	DALLOC(g->fup, (int64_t)o->finalists * n * g->r);
	DALLOC(g->small, (int64_t)g->l * g->l);
	DALLOC(g->rowsum, m);
	DALLOC(g->ub, n * g->r);
	g->gw = o->gptq_weight;
	if (g->gw > 0.0) {
		DALLOC(g->xd, m * k);
		DALLOC(g->ea, m * n);
	}
	DALLOC(g->info, 1);
	CS(cusolverDnSgeqrf_bufferSize(g->cs, (int)n, g->l, g->yl, (int)n, &lw1));
	CS(cusolverDnSgeqrf_bufferSize(g->cs, (int)k, g->l, g->z, (int)k, &lw2));
	CS(cusolverDnSorgqr_bufferSize(g->cs, (int)n, g->l, g->l, g->yl, (int)n, g->small, &lw3));
	CS(cusolverDnSorgqr_bufferSize(g->cs, (int)k, g->l, g->l, g->z, (int)k, g->small, &lw4));
	g->lwork = lw1 > lw2 ? lw1 : lw2;
	g->lwork = lw3 > g->lwork ? lw3 : g->lwork;
	g->lwork = lw4 > g->lwork ? lw4 : g->lwork;
	DALLOC(g->work, g->lwork > 0 ? g->lwork : 1);
#undef DALLOC
	g->h_wmax = (float *)calloc((size_t)k, sizeof(float));
	g->h_xspan = (float *)malloc((size_t)k * sizeof(float));
	g->h_s = (float *)malloc((size_t)k * sizeof(float));
	g->h_rowmax = (float *)malloc((size_t)n * sizeof(float));
	g->h_rowt = (float *)malloc((size_t)n * sizeof(float));
	g->h_small = (float *)malloc((size_t)g->l * g->l * sizeof(float));
	g->h_m = (float *)malloc((size_t)g->l * g->r * sizeof(float));
	g->h_su = (float *)malloc((size_t)g->l * g->l * sizeof(float));
	g->h_sd = (float *)malloc((size_t)g->l * g->l * sizeof(float));
	g->h_rowsum = (double *)malloc((size_t)m * sizeof(double));
	if (!g->h_wmax || !g->h_xspan || !g->h_s || !g->h_rowmax || !g->h_rowt || !g->h_small || !g->h_m ||
	    !g->h_su || !g->h_sd || !g->h_rowsum) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = 0; j < k; j++) {
			float a = fabsf(p->w[i * k + j]);
			g->h_wmax[j] = a > g->h_wmax[j] ? a : g->h_wmax[j];
		}
	// the smoothing span: absmax of what the layer quantizes (x + c if shifted)
	for (int64_t j = 0; j < k; j++)
		g->h_xspan[j] = p->xmax[j] + (p->shift ? FX_LOWRANK_SHIFT : 0.0f);
	CK(cudaMemcpy(g->w, p->w, (size_t)n * k * sizeof(float), cudaMemcpyHostToDevice));
	CK(cudaMemcpy(g->x, p->x, (size_t)m * k * sizeof(float), cudaMemcpyHostToDevice));
	CB(rm_gemm(g->cb, false, true, m, n, k, 1.0f, g->x, k, g->w, k, 0.0f, g->y, n));
	for (int64_t i = 0; i < g->ms; i++) {
		int64_t src = g->ms == m ? i : i * m / g->ms;
		CK(cudaMemcpy(g->xs + i * k, g->x + src * k, (size_t)k * sizeof(float), cudaMemcpyDeviceToDevice));
		CK(cudaMemcpy(g->ys + i * n, g->y + src * n, (size_t)n * sizeof(float), cudaMemcpyDeviceToDevice));
	}
	k_rowsumsq<<<(unsigned)m, 256>>>(g->rowsum, g->y, n);
	KCHECK();
	CK(cudaMemcpy(g->h_rowsum, g->rowsum, (size_t)m * sizeof(double), cudaMemcpyDeviceToHost));
	for (int64_t i = 0; i < m; i++)
		g->ynorm += g->h_rowsum[i];
	k_rowsumsq<<<(unsigned)g->ms, 256>>>(g->rowsum, g->ys, n);
	KCHECK();
	CK(cudaMemcpy(g->h_rowsum, g->rowsum, (size_t)g->ms * sizeof(double), cudaMemcpyDeviceToHost));
	for (int64_t i = 0; i < g->ms; i++)
		g->ysnorm += g->h_rowsum[i];
out:
	return ret;
}

static int set_smooth(struct gctx *g, float alpha, float beta, struct fx_err *err)
{
	int ret = 0;

	fx_lowrank_smooth(g->h_s, g->h_xspan, g->h_wmax, g->k, alpha, beta);
	CK(cudaMemcpy(g->s, g->h_s, (size_t)g->k * sizeof(float), cudaMemcpyHostToDevice));
out:
	return ret;
}

// One finalist, as finish() in kernels/cpu/lowrank.c: the branch of
// (alpha, beta) with the full method (from the finalist's subspace, already
// in g->basis, or its saved SVD branch in g->up/g->basis), refined for up to
// o->iters rounds judged on the search rows (given up after two rounds
// while more than o->abandon above `bound`, the best finalist so far); a
// refinement that does not lower the all-row error is undone. Leaves the
// branch in g->bup/g->bdown.
static int finish(struct gctx *g, const struct fx_lowrank_opts *o, float alpha, float beta,
		  double bound, double *score, double *err_branch, double *err_final, int *rounds,
		  struct fx_err *err)
{
	const bool few = g->ms < g->m;
	const size_t bytes_up = (size_t)g->n * g->r * sizeof(float);
	const size_t bytes_down = (size_t)g->r * g->k * sizeof(float);
	double best, e, t, tbest, all0 = 0;
	int ret = 0;

	TRY(set_smooth(g, alpha, beta, err));
	if (o->method != FX_LOWRANK_SVD)
		TRY(branch(g, o, g->w, true, true, o->power, err));
	TRY(residual(g, g->s, g->r, err));
	TRY(eval(g, g->xs, g->ys, g->ms, g->s, g->r, &e, &t, err));
	best = rel(e, g->ysnorm);
	tbest = *err_branch = rel(t, g->ysnorm);
	if (few) {
		TRY(eval(g, g->x, g->y, g->m, g->s, g->r, &e, &t, err));
		all0 = rel(e, g->ynorm);
		*err_branch = rel(t, g->ynorm);
		CK(cudaMemcpy(g->b0up, g->up, bytes_up, cudaMemcpyDeviceToDevice));
		CK(cudaMemcpy(g->b0down, g->basis, bytes_down, cudaMemcpyDeviceToDevice));
	}
	CK(cudaMemcpy(g->bup, g->up, bytes_up, cudaMemcpyDeviceToDevice));
	CK(cudaMemcpy(g->bdown, g->basis, bytes_down, cudaMemcpyDeviceToDevice));
	*rounds = 0;
	for (int it = 0; it < o->iters; it++) {
		k_target<<<nblocks(g->n * g->k, 256), 256>>>(g->abuf, g->w, g->s, g->rbuf, g->n, g->k);
		KCHECK();
		TRY(branch(g, o, g->abuf, false, true, o->refine_power, err));
		TRY(residual(g, g->s, g->r, err));
		TRY(eval(g, g->xs, g->ys, g->ms, g->s, g->r, &e, &t, err));
		e = rel(e, g->ysnorm);
		if (!(e < best))
			break;
		best = e;
		tbest = rel(t, g->ysnorm);
		(*rounds)++;
		CK(cudaMemcpy(g->bup, g->up, bytes_up, cudaMemcpyDeviceToDevice));
		CK(cudaMemcpy(g->bdown, g->basis, bytes_down, cudaMemcpyDeviceToDevice));
		if (*rounds >= 2 && best > bound * (1.0 + o->abandon))
			break;
	}
	*score = best;
	*err_final = *err_branch;
	if (!*rounds)
		goto out;
	if (!few) {
		*err_final = tbest;
		goto out;
	}
	CK(cudaMemcpy(g->up, g->bup, bytes_up, cudaMemcpyDeviceToDevice));
	CK(cudaMemcpy(g->basis, g->bdown, bytes_down, cudaMemcpyDeviceToDevice));
	TRY(residual(g, g->s, g->r, err));
	TRY(eval(g, g->x, g->y, g->m, g->s, g->r, &e, &t, err));
	if (rel(e, g->ynorm) < all0) {
		*err_final = rel(t, g->ynorm);
		goto out;
	}
	CK(cudaMemcpy(g->bup, g->b0up, bytes_up, cudaMemcpyDeviceToDevice));
	CK(cudaMemcpy(g->bdown, g->b0down, bytes_down, cudaMemcpyDeviceToDevice));
	*rounds = 0;
out:
	return ret;
}

// Candidate i with error e into place `at` of the finalists (< nfin),
// with its subspace (SVD: its branch).
static int insert(struct gctx *g, double *ferr, int *fidx, int *nf, int nfin, int at, double e,
		  int i, size_t bytes_basis, size_t bytes_up, struct fx_err *err)
{
	int ret = 0;

	*nf = *nf < nfin ? *nf + 1 : *nf;
	for (int j = *nf - 1; j > at; j--) {
		ferr[j] = ferr[j - 1];
		fidx[j] = fidx[j - 1];
		CK(cudaMemcpy(g->fbasis + (size_t)j * bytes_basis / 4,
			      g->fbasis + (size_t)(j - 1) * bytes_basis / 4, bytes_basis,
			      cudaMemcpyDeviceToDevice));
		CK(cudaMemcpy(g->fup + (size_t)j * bytes_up / 4, g->fup + (size_t)(j - 1) * bytes_up / 4,
			      bytes_up, cudaMemcpyDeviceToDevice));
	}
	ferr[at] = e;
	fidx[at] = i;
	CK(cudaMemcpy(g->fbasis + (size_t)at * bytes_basis / 4, g->basis, bytes_basis,
		      cudaMemcpyDeviceToDevice));
	CK(cudaMemcpy(g->fup + (size_t)at * bytes_up / 4, g->up, bytes_up, cudaMemcpyDeviceToDevice));
out:
	return ret;
}

extern "C" int fx_lowrank_group_cuda(int device, struct fx_lowrank_result *res,
				     const struct fx_lowrank_problem *p,
				     const struct fx_lowrank_opts *o, struct fx_err *err)
{
	float alpha[2 * FX_LOWRANK_MAX_GRID], beta[2 * FX_LOWRANK_MAX_GRID];
	double ferr[FX_LOWRANK_MAX_FINALISTS], best = INFINITY, e, eb = 0, ef = 0, sc = 0;
	int fidx[FX_LOWRANK_MAX_FINALISTS], nf = 0, nfin, rounds = 0;
	int todo[2 * FX_LOWRANK_MAX_GRID], seed[2 * FX_LOWRANK_MAX_GRID], ntodo = 0, ncoarse;
	double cerr[FX_LOWRANK_SEEDS];
	int cidx[FX_LOWRANK_SEEDS], nc = 0;
	struct gctx gc, *g = &gc;
	size_t bytes_basis, bytes_up, bytes_down;
	int ret, ncand;

	memset(g, 0, sizeof(*g));
	g->dev = device;
	if (p->prec != FX_QPREC_NVFP4 && p->prec != FX_QPREC_INT4)
		return fx_error(err, FX_E_ARG, "low-rank search supports nvfp4 and int4 only");
	if (p->n <= 0 || p->k <= 0 || p->k % 64 || p->m <= 0 || o->rank < 1 || o->rank > p->n ||
	    o->rank > p->k || o->iters < 0 || o->finalists < 1 ||
	    o->finalists > FX_LOWRANK_MAX_FINALISTS || o->refine_power < 0 || !(o->abandon >= 0.0) ||
	    !(o->gptq_weight >= 0.0 && o->gptq_weight <= 1.0))
		return fx_error(err, FX_E_ARG, "bad low-rank problem (n %lld, k %lld, m %lld, rank %d)",
				(long long)p->n, (long long)p->k, (long long)p->m, o->rank);
	if ((ret = fx_lowrank_candidates(alpha, beta, (int)(sizeof(alpha) / sizeof(alpha[0])),
					 o->grid, err)) < 0)
		return ret;
	ncand = ret;
	nfin = o->finalists < ncand ? o->finalists : ncand;
	ret = 0;
	TRY(ctx_init(g, device, p, o, err));
	bytes_basis = (size_t)g->k * g->l * sizeof(float);
	bytes_up = (size_t)g->n * g->r * sizeof(float);
	bytes_down = (size_t)g->r * g->k * sizeof(float);

	TRY(residual(g, NULL, 0, err));
	TRY(eval(g, g->x, g->y, g->m, NULL, 0, &sc, &e, err));
	res->err_rtn = rel(e, g->ynorm);

	// rank the candidates on the search rows, as the CPU does: every other
	// one, then the skipped neighbours of the FX_LOWRANK_SEEDS best of those
	// (each from its coarse neighbour's subspace); keep the nfin best (ties:
	// the earlier evaluated) with their subspace (SVD: their branch)
	for (int i = 0; i < ncand; i += 2) {
		seed[ntodo] = -1;
		todo[ntodo++] = i;
	}
	ncoarse = ntodo;
	for (int t = 0; t < ntodo; t++) {
		int at, i = todo[t];

		TRY(set_smooth(g, alpha[i], beta[i], err));
		if (seed[t] >= 0)
			CK(cudaMemcpy(g->basis, g->sbasis + (size_t)seed[t] * bytes_basis / 4, bytes_basis,
				      cudaMemcpyDeviceToDevice));
		TRY(branch(g, o, g->w, true, t > 0, t > 0 ? 0 : o->power, err));
		TRY(residual(g, g->s, g->r, err));
		TRY(eval(g, g->xs, g->ys, g->ms, g->s, g->r, &e, &sc, err));
		e = rel(e, g->ysnorm);
		for (at = nf; at > 0 && e < ferr[at - 1]; at--)
			;
		if (at < nfin)
			TRY(insert(g, ferr, fidx, &nf, nfin, at, e, i, bytes_basis, bytes_up, err));
		if (t >= ncoarse)
			continue;
		for (at = nc; at > 0 && e < cerr[at - 1]; at--)
			;
		if (at < FX_LOWRANK_SEEDS) {
			nc = nc < FX_LOWRANK_SEEDS ? nc + 1 : nc;
			for (int j = nc - 1; j > at; j--) {
				cerr[j] = cerr[j - 1];
				cidx[j] = cidx[j - 1];
				CK(cudaMemcpy(g->sbasis + (size_t)j * bytes_basis / 4,
					      g->sbasis + (size_t)(j - 1) * bytes_basis / 4, bytes_basis,
					      cudaMemcpyDeviceToDevice));
			}
			cerr[at] = e;
			cidx[at] = i;
			CK(cudaMemcpy(g->sbasis + (size_t)at * bytes_basis / 4, g->basis, bytes_basis,
				      cudaMemcpyDeviceToDevice));
		}
		if (t != ncoarse - 1)
			continue;
		for (int f = 0; f < nc; f++)
			for (int d = -1; d <= 1; d += 2) {
				int j = cidx[f] + d;
				bool seen = false;

				for (int q = 0; q < ntodo; q++)
					seen = seen || todo[q] == j;
				if (j < 0 || j >= ncand || seen)
					continue;
				seed[ntodo] = f;
				todo[ntodo++] = j;
			}
	}
	res->candidates = ntodo;

	// the finalists, each finished; the lowest refined error wins
	for (int f = 0; f < nf; f++) {
		CK(cudaMemcpy(g->basis, g->fbasis + (size_t)f * bytes_basis / 4, bytes_basis,
			      cudaMemcpyDeviceToDevice));
		CK(cudaMemcpy(g->up, g->fup + (size_t)f * bytes_up / 4, bytes_up,
			      cudaMemcpyDeviceToDevice));
		TRY(finish(g, o, alpha[fidx[f]], beta[fidx[f]], best, &sc, &eb, &ef, &rounds, err));
		if (f > 0 && !(sc < best))
			continue;
		best = sc;
		res->alpha = alpha[fidx[f]];
		res->beta = beta[fidx[f]];
		res->err_branch = eb;
		res->err_final = ef;
		res->rounds = rounds;
		memcpy(res->smooth, g->h_s, (size_t)g->k * sizeof(float));
		CK(cudaMemcpy(res->up, g->bup, bytes_up, cudaMemcpyDeviceToHost));
		CK(cudaMemcpy(res->down, g->bdown, bytes_down, cudaMemcpyDeviceToHost));
	}
out:
	ctx_free(g);
	return ret;
}
