// f32 primitives of the FLUX forward on a GPU (kernels/fx-ops-cuda.h): the
// same definitions as kernels/cpu/ops.c. cuBLAS sgemm for every GEMM (the
// linears, attention scores and AV, heads batched; fx_ops_linear_bf16_cuda
// a BF16 GEMM with f32 accumulate), own kernels for norms,
// RoPE, softmax and the elementwise ops. Reductions that the CPU does in
// f64 (layernorm statistics, softmax sum) are f64 here too.
//
// Layout: row-major as on the host. A row-major (r,c) matrix of stride ld
// is a column-major (c,r) matrix with leading dimension ld, so each
// row-major product C = A·Bᵀ is issued as Cᵀ = B·Aᵀ (swap the operands).
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "../fx-ops-cuda.h"
}

struct fx_cuda_ctx {
	int device;
	cudaStream_t stream;
	cublasHandle_t blas;
	struct fx_dev_buf scratch;   // attention scores
	struct fx_dev_buf xb;        // BF16 copy of a linear's input
};


#include "fx-cuda-check.h"
#define FX_CUDA_CHECK(stmt) FX_CUDA_CHECK_DEV(dev_, stmt)
#define FX_CUBLAS_CHECK(stmt) FX_CUBLAS_CHECK_DEV(dev_, stmt)
#define FX_CUDA_LAUNCH(...) FX_CUDA_LAUNCH_DEV(dev_, __VA_ARGS__)

// Opens an entry point: the device for messages, current on this thread.
#define ENTER(cx)                                                                      \
	int ret = 0;                                                                   \
	int dev_ = (cx)->device;                                                       \
	FX_CUDA_CHECK(cudaSetDevice(dev_))

#define THREADS 256

static unsigned grid_for(size_t n)
{
	size_t g = (n + THREADS - 1) / THREADS;

	return (unsigned)(g < 1 ? 1 : g > (1u << 22) ? (1u << 22) : g);
}

static bool fits_int(int64_t v)
{
	return v >= 0 && v <= INT_MAX;
}

// ---- context and memory ---------------------------------------------------

extern "C" int fx_cuda_ctx_new(struct fx_cuda_ctx **outp, int device, struct fx_err *err)
{
	struct fx_cuda_ctx *cx = (struct fx_cuda_ctx *)calloc(1, sizeof(*cx));
	int ret = 0, dev_ = device;

	*outp = NULL;
	if (!cx)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	cx->device = device;
	FX_CUDA_CHECK(cudaSetDevice(device));
	FX_CUDA_CHECK(cudaStreamCreateWithFlags(&cx->stream, cudaStreamNonBlocking));
	FX_CUBLAS_CHECK(cublasCreate(&cx->blas));
	FX_CUBLAS_CHECK(cublasSetStream(cx->blas, cx->stream));
	// plain f32: no TF32 tensor-op rounding, results comparable to the CPU
	FX_CUBLAS_CHECK(cublasSetMathMode(cx->blas, CUBLAS_DEFAULT_MATH));
out:
	if (ret < 0)
		fx_cuda_ctx_free(cx);
	else
		*outp = cx;
	return ret;
}

extern "C" void fx_cuda_ctx_free(struct fx_cuda_ctx *cx)
{
	if (!cx)
		return;
	if (cudaSetDevice(cx->device) == cudaSuccess && cx->stream)
		cudaStreamSynchronize(cx->stream);
	fx_cuda_buf_release(&cx->scratch);
	fx_cuda_buf_release(&cx->xb);
	if (cx->blas)
		cublasDestroy(cx->blas);
	if (cx->stream)
		cudaStreamDestroy(cx->stream);
	free(cx);
}

extern "C" int fx_cuda_ctx_device(const struct fx_cuda_ctx *cx)
{
	return cx->device;
}

extern "C" int fx_cuda_buf_reserve(struct fx_cuda_ctx *cx, struct fx_dev_buf *b, size_t nbytes,
				   struct fx_err *err)
{
	void *p = NULL;

	ENTER(cx);
	if (b->data_dev && b->nbytes >= nbytes && b->device == cx->device)
		return 0;
	// queued kernels may still read the old buffer
	FX_CUDA_CHECK(cudaStreamSynchronize(cx->stream));
	fx_cuda_buf_release(b);
	FX_CUDA_CHECK(cudaSetDevice(dev_));
	FX_CUDA_CHECK(cudaMalloc(&p, nbytes ? nbytes : 1));
	b->data_dev = p;
	b->nbytes = nbytes;
	b->device = cx->device;
out:
	return ret;
}

extern "C" void fx_cuda_buf_release(struct fx_dev_buf *b)
{
	if (!b || !b->data_dev)
		return;
	if (cudaSetDevice(b->device) == cudaSuccess)
		cudaFree(b->data_dev);
	b->data_dev = NULL;
	b->nbytes = 0;
}

extern "C" int fx_cuda_upload(struct fx_cuda_ctx *cx, void *dst_dev, const void *src, size_t nbytes,
			      struct fx_err *err)
{
	ENTER(cx);
	if (!nbytes)
		return 0;
	// pageable src: returns once src is staged, so the caller may reuse it
	FX_CUDA_CHECK(cudaMemcpyAsync(dst_dev, src, nbytes, cudaMemcpyHostToDevice, cx->stream));
out:
	return ret;
}

extern "C" int fx_cuda_download(struct fx_cuda_ctx *cx, void *dst, const void *src_dev,
				size_t nbytes, struct fx_err *err)
{
	ENTER(cx);
	if (nbytes)
		FX_CUDA_CHECK(cudaMemcpyAsync(dst, src_dev, nbytes, cudaMemcpyDeviceToHost, cx->stream));
	FX_CUDA_CHECK(cudaStreamSynchronize(cx->stream));
out:
	return ret;
}

extern "C" int fx_cuda_sync(struct fx_cuda_ctx *cx, struct fx_err *err)
{
	ENTER(cx);
	FX_CUDA_CHECK(cudaStreamSynchronize(cx->stream));
out:
	return ret;
}

// ---- block reductions -----------------------------------------------------

template <typename T> __device__ __forceinline__ T warp_sum(T v)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_xor_sync(0xffffffffu, v, o);
	return v;
}

__device__ __forceinline__ float warp_max(float v)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
	return v;
}

// Sum over the block (blockDim.x a multiple of 32, ≤ 1024); every thread
// gets the result. sh: 32 slots.
template <typename T> __device__ T block_sum(T v, T *sh)
{
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;

	v = warp_sum(v);
	__syncthreads();   // sh may still be read by a previous reduction
	if (lane == 0)
		sh[w] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : (T)0;
	return warp_sum(v);
}

__device__ float block_max(float v, float *sh)
{
	int lane = threadIdx.x & 31, w = threadIdx.x >> 5, nw = blockDim.x >> 5;

	v = warp_max(v);
	__syncthreads();
	if (lane == 0)
		sh[w] = v;
	__syncthreads();
	v = lane < nw ? sh[lane] : -INFINITY;
	return warp_max(v);
}

// ---- kernels --------------------------------------------------------------

__global__ void k_bias_rows(float *y, const float *b, int64_t m, int64_t n)
{
	size_t total = (size_t)m * (size_t)n;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x)
		y[i] = b[i % (size_t)n];
}

// One block per row; mean and variance summed in f64 as on the CPU.
__global__ void k_layernorm(float *y, const float *x, int64_t d, const float *shift,
			    const float *scale, float eps)
{
	__shared__ double sh[32];
	const float *xr = x + (int64_t)blockIdx.x * d;
	float *yr = y + (int64_t)blockIdx.x * d;
	double s = 0.0, v = 0.0;
	float mean, rstd;

	for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
		s += xr[j];
	s = block_sum(s, sh);
	mean = (float)(s / (double)d);
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
		double t = (double)xr[j] - mean;

		v += t * t;
	}
	v = block_sum(v, sh);
	rstd = (float)(1.0 / sqrt(v / (double)d + eps));
	if (scale) {
		for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
			yr[j] = ((xr[j] - mean) * rstd) * (1.0f + scale[j]) + shift[j];
	} else {
		for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
			yr[j] = (xr[j] - mean) * rstd;
	}
}

// One warp per (row, head).
__global__ void k_rmsnorm_heads(float *x, int64_t ld, int64_t m, int heads, int hd,
				const float *g, float eps)
{
	int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
	int lane = threadIdx.x & 31;
	float ss = 0.0f, rs;
	float *v;

	if (wid >= m * heads)
		return;   // whole warps leave together
	v = x + (wid / heads) * ld + (wid % heads) * (int64_t)hd;
	for (int j = lane; j < hd; j += 32)
		ss += v[j] * v[j];
	ss = warp_sum(ss);
	rs = 1.0f / sqrtf(ss / (float)hd + eps);
	for (int j = lane; j < hd; j += 32)
		v[j] = (v[j] * rs) * g[j];
}

// One thread per (token, pair); angles in f64.
__global__ void k_rope_table(float *cs, float *sn, const float *ids, int64_t n, int a0, int a1,
			     int a2, double theta)
{
	int half = (a0 + a1 + a2) / 2;
	size_t total = (size_t)n * (size_t)half;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		int64_t t = (int64_t)(i / (size_t)half);
		int k = (int)(i % (size_t)half), a = 0, ax = a0;
		double w, ang;

		if (k >= a0 / 2) {
			k -= a0 / 2;
			a = 1;
			ax = a1;
			if (k >= a1 / 2) {
				k -= a1 / 2;
				a = 2;
				ax = a2;
			}
		}
		w = 1.0 / pow(theta, (double)(2 * k) / (double)ax);
		ang = (double)ids[t * 3 + a] * w;
		cs[i] = (float)cos(ang);
		sn[i] = (float)sin(ang);
	}
}

// One thread per (token, head, pair).
__global__ void k_rope_apply(float *x, int64_t ld, int64_t n, int heads, int hd, const float *cs,
			     const float *sn)
{
	int half = hd / 2;
	size_t per = (size_t)heads * (size_t)half, total = (size_t)n * per;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		int64_t t = (int64_t)(i / per);
		int r = (int)(i % per), h = r / half, k = r % half;
		float *v = x + t * ld + (int64_t)h * hd + 2 * k;
		float c = cs[t * half + k], s = sn[t * half + k], a = v[0], b = v[1];

		v[0] = a * c - b * s;
		v[1] = b * c + a * s;
	}
}

// Row softmax in place, one block per row: max, exp, f64 sum, normalize.
__global__ void k_softmax_rows(float *s, int64_t n)
{
	__shared__ float shm[32];
	__shared__ double shs[32];
	float *row = s + (int64_t)blockIdx.x * n, mx = -INFINITY, inv;
	double sum = 0.0;

	for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
		mx = fmaxf(mx, row[j]);
	mx = block_max(mx, shm);
	for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
		float e = expf(row[j] - mx);

		row[j] = e;
		sum += e;
	}
	sum = block_sum(sum, shs);
	inv = (float)(1.0 / sum);
	for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
		row[j] *= inv;
}

// GELUt(x) = 0.5·x·(1 + tanh(u)) = x·σ(2u), as on the CPU.
__global__ void k_gelu_tanh(float *x, size_t n)
{
	const float c = 0.7978845608028654f;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x) {
		float a = x[i], u = c * (a + 0.044715f * a * a * a);

		x[i] = a / (1.0f + expf(-2.0f * u));
	}
}

__global__ void k_silu(float *y, const float *x, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		y[i] = x[i] / (1.0f + expf(-x[i]));
}

// The CPU computes expf, cosf and sinf of f32 arguments with glibc (within
// about half an ulp); the f64 functions rounded to f32 give the same values
// (CUDA's f32 ones are up to 2 ulp off, and an ulp of a 1000-radian angle
// is visible).
__global__ void k_timestep_embed(float *out, float t, int half, float c)
{
	for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < half; i += gridDim.x * blockDim.x) {
		float e = (c * (float)i) / (float)half;
		float a = t * (float)exp((double)e);

		out[i] = (float)cos((double)a);
		out[half + i] = (float)sin((double)a);
	}
}

__global__ void k_gated_add(float *x, const float *y, const float *gate, int64_t m, int64_t d)
{
	size_t total = (size_t)m * (size_t)d;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x)
		x[i] += gate[i % (size_t)d] * y[i];
}

__global__ void k_add(float *a, const float *b, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		a[i] += b[i];
}

// ---- entry points ---------------------------------------------------------

__global__ void k_to_bf16(__nv_bfloat16 *y, const float *x, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
	     i += (size_t)gridDim.x * blockDim.x)
		y[i] = __float2bfloat16_rn(x[i]);
}

// Y = X·Wᵀ + b with W f32, or BF16 (x rounded to BF16 into cx->xb first).
static int linear_any(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev, const void *w_dev,
		      bool bf16, const float *b_dev, int64_t m, int64_t n, int64_t k,
		      struct fx_err *err)
{
	const float one = 1.0f;
	float beta = 0.0f;

	ENTER(cx);
	if (m <= 0 || n <= 0)
		return 0;
	if (!fits_int(m) || !fits_int(n) || !fits_int(k))
		return fx_error(err, FX_E_ARG, "linear of %lld x %lld x %lld is too large for cuBLAS",
				(long long)m, (long long)n, (long long)k);
	if (b_dev) {
		FX_CUDA_LAUNCH(k_bias_rows<<<grid_for((size_t)(m * n)), THREADS, 0, cx->stream>>>(
			y_dev, b_dev, m, n));
		beta = 1.0f;
	}
	if (k <= 0) {
		if (!b_dev)
			FX_CUDA_CHECK(cudaMemsetAsync(y_dev, 0, (size_t)(m * n) * sizeof(float),
						      cx->stream));
		return 0;
	}
	// row-major Y(m,n) = X(m,k)·Wᵀ  <=>  column-major Yᵀ(n,m) = W(n,k)·Xᵀ
	if (!bf16) {
		FX_CUBLAS_CHECK(cublasSgemm(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m, (int)k,
					    &one, (const float *)w_dev, (int)k, x_dev, (int)k, &beta,
					    y_dev, (int)n));
		return 0;
	}
	if ((ret = fx_cuda_buf_reserve(cx, &cx->xb, (size_t)(m * k) * sizeof(__nv_bfloat16), err)) < 0)
		return ret;
	FX_CUDA_LAUNCH(k_to_bf16<<<grid_for((size_t)(m * k)), THREADS, 0, cx->stream>>>(
		(__nv_bfloat16 *)cx->xb.data_dev, x_dev, (size_t)(m * k)));
	FX_CUBLAS_CHECK(cublasGemmEx(cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m, (int)k, &one,
				     w_dev, CUDA_R_16BF, (int)k, cx->xb.data_dev, CUDA_R_16BF, (int)k,
				     &beta, y_dev, CUDA_R_32F, (int)n, CUBLAS_COMPUTE_32F,
				     CUBLAS_GEMM_DEFAULT));
out:
	return ret;
}

extern "C" int fx_ops_linear_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev,
				  const float *w_dev, const float *b_dev, int64_t m, int64_t n,
				  int64_t k, struct fx_err *err)
{
	return linear_any(cx, y_dev, x_dev, w_dev, false, b_dev, m, n, k, err);
}

extern "C" int fx_ops_linear_bf16_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev,
				       const void *w_dev, const float *b_dev, int64_t m, int64_t n,
				       int64_t k, struct fx_err *err)
{
	return linear_any(cx, y_dev, x_dev, w_dev, true, b_dev, m, n, k, err);
}

static int layernorm_any(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev, int64_t m,
			 int64_t d, const float *shift_dev, const float *scale_dev, float eps,
			 struct fx_err *err)
{
	ENTER(cx);
	if (m <= 0 || d <= 0)
		return 0;
	if (m > INT_MAX)
		return fx_error(err, FX_E_ARG, "layernorm of %lld rows is too large", (long long)m);
	FX_CUDA_LAUNCH(k_layernorm<<<(unsigned)m, THREADS, 0, cx->stream>>>(y_dev, x_dev, d,
									    shift_dev, scale_dev, eps));
out:
	return ret;
}

extern "C" int fx_ops_layernorm_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev,
				     int64_t m, int64_t d, float eps, struct fx_err *err)
{
	return layernorm_any(cx, y_dev, x_dev, m, d, NULL, NULL, eps, err);
}

extern "C" int fx_ops_layernorm_mod_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev,
					 int64_t m, int64_t d, const float *shift_dev,
					 const float *scale_dev, float eps, struct fx_err *err)
{
	return layernorm_any(cx, y_dev, x_dev, m, d, shift_dev, scale_dev, eps, err);
}

extern "C" int fx_ops_rmsnorm_heads_cuda(struct fx_cuda_ctx *cx, float *x_dev, int64_t ld,
					 int64_t m, int heads, int hd, const float *g_dev, float eps,
					 struct fx_err *err)
{
	size_t warps = (size_t)(m > 0 ? m : 0) * (size_t)(heads > 0 ? heads : 0);

	ENTER(cx);
	if (!warps || hd <= 0)
		return 0;
	if (warps / (THREADS / 32) >= (size_t)INT_MAX)
		return fx_error(err, FX_E_ARG, "rmsnorm of %lld rows is too large", (long long)m);
	FX_CUDA_LAUNCH(k_rmsnorm_heads<<<(unsigned)((warps * 32 + THREADS - 1) / THREADS), THREADS, 0,
					 cx->stream>>>(x_dev, ld, m, heads, hd, g_dev, eps));
out:
	return ret;
}

extern "C" int fx_ops_rope_table_cuda(struct fx_cuda_ctx *cx, float *cs_dev, float *sn_dev,
				      const float *ids_dev, int64_t n, const int axes[3],
				      double theta, struct fx_err *err)
{
	int half = (axes[0] + axes[1] + axes[2]) / 2;

	ENTER(cx);
	if (n <= 0 || half <= 0)
		return 0;
	FX_CUDA_LAUNCH(k_rope_table<<<grid_for((size_t)n * half), THREADS, 0, cx->stream>>>(
		cs_dev, sn_dev, ids_dev, n, axes[0], axes[1], axes[2], theta));
out:
	return ret;
}

extern "C" int fx_ops_rope_apply_cuda(struct fx_cuda_ctx *cx, float *x_dev, int64_t ld, int64_t n,
				      int heads, int hd, const float *cs_dev, const float *sn_dev,
				      struct fx_err *err)
{
	ENTER(cx);
	if (n <= 0 || heads <= 0 || hd < 2)
		return 0;
	FX_CUDA_LAUNCH(k_rope_apply<<<grid_for((size_t)n * heads * (hd / 2)), THREADS, 0,
				      cx->stream>>>(x_dev, ld, n, heads, hd, cs_dev, sn_dev));
out:
	return ret;
}

extern "C" int fx_ops_attention_cuda(struct fx_cuda_ctx *cx, float *o_dev, int64_t ldo,
				     const float *q_dev, const float *k_dev, const float *v_dev,
				     int64_t ld, int64_t n, int heads, int hd, struct fx_err *err)
{
	const float one = 1.0f, zero = 0.0f, scale = 1.0f / sqrtf((float)hd);
	int64_t bq;
	float *s;

	ENTER(cx);
	if (n <= 0 || heads <= 0)
		return 0;
	if (!fits_int(n) || !fits_int(ld) || !fits_int(ldo) || hd <= 0)
		return fx_error(err, FX_E_ARG, "attention over %lld tokens (stride %lld) is too large",
				(long long)n, (long long)ld);
	bq = (int64_t)FX_CUDA_ATTN_TILE_FLOATS / ((int64_t)heads * n);
	bq = bq < 1 ? 1 : bq > 1024 ? 1024 : bq;
	bq = bq > n ? n : bq;
	if ((ret = fx_cuda_buf_reserve(cx, &cx->scratch, (size_t)(heads * bq * n) * sizeof(float),
				       err)) < 0)
		return ret;
	s = (float *)cx->scratch.data_dev;
	for (int64_t i0 = 0; i0 < n; i0 += bq) {
		int64_t mb = n - i0 < bq ? n - i0 : bq;

		// per head h: row-major S_h(mb,n) = scale · Q_h(mb,hd)·K_hᵀ, heads hd
		// columns apart in q/k, mb·n floats apart in s
		FX_CUBLAS_CHECK(cublasSgemmStridedBatched(
			cx->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)mb, hd, &scale, k_dev,
			(int)ld, (long long)hd, q_dev + i0 * ld, (int)ld, (long long)hd, &zero, s,
			(int)n, (long long)(mb * n), heads));
		FX_CUDA_LAUNCH(k_softmax_rows<<<(unsigned)(heads * mb), THREADS, 0, cx->stream>>>(s, n));
		// O_h(mb,hd) = P_h(mb,n)·V_h(n,hd)  <=>  O_hᵀ = V_hᵀ·P_hᵀ
		FX_CUBLAS_CHECK(cublasSgemmStridedBatched(
			cx->blas, CUBLAS_OP_N, CUBLAS_OP_N, hd, (int)mb, (int)n, &one, v_dev,
			(int)ld, (long long)hd, s, (int)n, (long long)(mb * n), &zero,
			o_dev + i0 * ldo, (int)ldo, (long long)hd, heads));
	}
out:
	return ret;
}

extern "C" int fx_ops_gelu_tanh_cuda(struct fx_cuda_ctx *cx, float *x_dev, size_t n,
				     struct fx_err *err)
{
	ENTER(cx);
	if (!n)
		return 0;
	FX_CUDA_LAUNCH(k_gelu_tanh<<<grid_for(n), THREADS, 0, cx->stream>>>(x_dev, n));
out:
	return ret;
}

extern "C" int fx_ops_silu_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev, size_t n,
				struct fx_err *err)
{
	ENTER(cx);
	if (!n)
		return 0;
	FX_CUDA_LAUNCH(k_silu<<<grid_for(n), THREADS, 0, cx->stream>>>(y_dev, x_dev, n));
out:
	return ret;
}

extern "C" int fx_ops_timestep_embed_cuda(struct fx_cuda_ctx *cx, float *out_dev, float t, int dim,
					  struct fx_err *err)
{
	int half = dim / 2;

	ENTER(cx);
	if (half <= 0)
		return 0;
	FX_CUDA_LAUNCH(k_timestep_embed<<<grid_for((size_t)half), THREADS, 0, cx->stream>>>(
		out_dev, t, half, (float)-log(10000.0)));
out:
	return ret;
}

extern "C" int fx_ops_gated_add_cuda(struct fx_cuda_ctx *cx, float *x_dev, const float *y_dev,
				     const float *gate_dev, int64_t m, int64_t d, struct fx_err *err)
{
	ENTER(cx);
	if (m <= 0 || d <= 0)
		return 0;
	FX_CUDA_LAUNCH(k_gated_add<<<grid_for((size_t)(m * d)), THREADS, 0, cx->stream>>>(
		x_dev, y_dev, gate_dev, m, d));
out:
	return ret;
}

extern "C" int fx_ops_add_cuda(struct fx_cuda_ctx *cx, float *a_dev, const float *b_dev, size_t n,
			       struct fx_err *err)
{
	ENTER(cx);
	if (!n)
		return 0;
	FX_CUDA_LAUNCH(k_add<<<grid_for(n), THREADS, 0, cx->stream>>>(a_dev, b_dev, n));
out:
	return ret;
}
