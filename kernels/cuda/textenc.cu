// The text encoders' layers on a GPU (kernels/fx-textenc-cuda.h): cuBLAS
// sgemm for the linears and for the attention scores and AV (heads
// batched), own kernels for the norms, softmax and elementwise ops. The
// same definitions as formats/fx-textenc.c; the norm statistics are f64 as
// there.
//
// Layout: row-major as on the host. A row-major (r,c) matrix of stride ld
// is a column-major (c,r) matrix with leading dimension ld, so each
// row-major product C = A·Bᵀ is issued as Cᵀ = B·Aᵀ.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

extern "C" {
#include "../fx-textenc-cuda.h"
}

#include "fx-cuda-check.h"
#define CHECK(stmt) FX_CUDA_CHECK_DEV(dev_, stmt)
#define BLAS(stmt) FX_CUBLAS_CHECK_DEV(dev_, stmt)
#define LAUNCH(...)                                                                    \
	do {                                                                           \
		__VA_ARGS__;                                                           \
		CHECK(cudaGetLastError());                                             \
	} while (0)

#define THREADS 256
// Rows (tokens over the sequences of a chunk) per pass through a layer.
#define CHUNK_ROWS 8192

enum { W_QKV, W_QKV_B, W_O, W_O_B, W_LN1, W_LN1_B, W_LN2, W_LN2_B, W_FC1, W_FC1_B, W_FC2, W_FC2_B, W_COUNT };

struct fx_tenc_cuda {
	int device;
	cudaStream_t stream;
	cublasHandle_t blas;
	struct fx_tenc_cuda_dims d;
	int64_t seq_per_chunk;
	float *h, *x, *big, *mid, *y, *scores, *bias;
	float *w[W_COUNT];
	bool has_w[W_COUNT];
};

static unsigned grid_for(size_t n)
{
	size_t g = (n + THREADS - 1) / THREADS;

	return (unsigned)(g < 1 ? 1 : g > (1u << 22) ? (1u << 22) : g);
}

// ---- kernels ------------------------------------------------------------------

__device__ static double block_sum(double v, double *sh)
{
	for (int o = 16; o > 0; o >>= 1)
		v += __shfl_down_sync(0xffffffffu, v, o);
	if ((threadIdx.x & 31) == 0)
		sh[threadIdx.x >> 5] = v;
	__syncthreads();
	if (threadIdx.x < 32) {
		v = threadIdx.x < (blockDim.x >> 5) ? sh[threadIdx.x] : 0.0;
		for (int o = 16; o > 0; o >>= 1)
			v += __shfl_down_sync(0xffffffffu, v, o);
		if (threadIdx.x == 0)
			sh[0] = v;
	}
	__syncthreads();
	v = sh[0];
	__syncthreads();
	return v;
}

__device__ static float block_max(float v, float *sh)
{
	for (int o = 16; o > 0; o >>= 1)
		v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
	if ((threadIdx.x & 31) == 0)
		sh[threadIdx.x >> 5] = v;
	__syncthreads();
	if (threadIdx.x < 32) {
		v = threadIdx.x < (blockDim.x >> 5) ? sh[threadIdx.x] : -INFINITY;
		for (int o = 16; o > 0; o >>= 1)
			v = fmaxf(v, __shfl_down_sync(0xffffffffu, v, o));
		if (threadIdx.x == 0)
			sh[0] = v;
	}
	__syncthreads();
	v = sh[0];
	__syncthreads();
	return v;
}

// One block a row: RMSNorm y = x / sqrt(mean(x²) + eps) · w, or LayerNorm
// y = (x − mean) / sqrt(var + eps) · w + b.
__global__ static void norm_k(float *y, const float *x, const float *w, const float *b, int64_t d,
			      float eps, bool rms)
{
	__shared__ double sh[32];
	const float *xr = x + blockIdx.x * d;
	float *yr = y + blockIdx.x * d;
	double s = 0, mean = 0;
	float inv;

	if (!rms) {
		for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
			s += xr[j];
		mean = block_sum(s, sh) / (double)d;
		s = 0;
	}
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x) {
		double c = (double)xr[j] - mean;

		s += c * c;
	}
	inv = (float)(1.0 / sqrt(block_sum(s, sh) / (double)d + eps));
	for (int64_t j = threadIdx.x; j < d; j += blockDim.x)
		yr[j] = rms ? xr[j] * inv * w[j] : (float)(xr[j] - mean) * inv * w[j] + (b ? b[j] : 0.0f);
}

__device__ static float act_f(float v, int a)
{
	switch (a) {
	case FX_TENC_RELU:
		return v > 0 ? v : 0.0f;
	case FX_TENC_GELU_TANH:
		return 0.5f * v * (1.0f + tanhf(0.7978845608028654f * (v + 0.044715f * v * v * v)));
	case FX_TENC_GELU:
		return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f));
	case FX_TENC_QUICK_GELU:
		return v / (1.0f + expf(-1.702f * v));
	default:
		return v;
	}
}

// y (rows, n) += b (n), then the activation (a < 0: none).
__global__ static void bias_act_k(float *y, const float *b, size_t rows, int64_t n, int a)
{
	size_t total = rows * (size_t)n;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		float v = y[i] + (b ? b[i % (size_t)n] : 0.0f);

		y[i] = a >= 0 ? act_f(v, a) : v;
	}
}

// mid (rows, F) = act(big[:, :F]) · big[:, F:], big (rows, 2F).
__global__ static void gate_k(float *mid, const float *big, size_t rows, int64_t f, int a)
{
	size_t total = rows * (size_t)f;

	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total;
	     i += (size_t)gridDim.x * blockDim.x) {
		size_t r = i / (size_t)f, j = i % (size_t)f;
		const float *g = big + r * 2 * (size_t)f;

		mid[i] = act_f(g[j], a) * g[f + j];
	}
}

__global__ static void add_k(float *a, const float *b, size_t n)
{
	for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x)
		a[i] += b[i];
}

// One block a score row (head h, query i) of (heads·L, L): + bias, causal
// mask, softmax; masked entries become 0.
__global__ static void softmax_k(float *s, const float *bias, int64_t L, bool causal)
{
	__shared__ double shd[32];
	__shared__ float shf[32];
	const int64_t row = blockIdx.x, i = row % L, n = causal ? i + 1 : L;
	float *r = s + row * L, mx = -INFINITY, inv;
	double sum = 0;

	for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
		float v = r[j] + (bias ? bias[row * L + j] : 0.0f);

		r[j] = v;
		mx = fmaxf(mx, v);
	}
	mx = block_max(mx, shf);
	for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
		float e = expf(r[j] - mx);

		r[j] = e;
		sum += e;
	}
	inv = (float)(1.0 / block_sum(sum, shd));
	for (int64_t j = threadIdx.x; j < L; j += blockDim.x)
		r[j] = j < n ? r[j] * inv : 0.0f;
}

// ---- host side ----------------------------------------------------------------

extern "C" void fx_tenc_cuda_free(struct fx_tenc_cuda *g)
{
	if (!g)
		return;
	if (cudaSetDevice(g->device) == cudaSuccess) {
		if (g->stream)
			cudaStreamSynchronize(g->stream);
		cudaFree(g->h);
		cudaFree(g->x);
		cudaFree(g->big);
		cudaFree(g->mid);
		cudaFree(g->y);
		cudaFree(g->scores);
		cudaFree(g->bias);
		for (int i = 0; i < W_COUNT; i++)
			cudaFree(g->w[i]);
		if (g->blas)
			cublasDestroy(g->blas);
		if (g->stream)
			cudaStreamDestroy(g->stream);
	}
	free(g);
}

extern "C" int fx_tenc_cuda_new(struct fx_tenc_cuda **outp, int device, const struct fx_tenc_cuda_dims *d,
				const float *h, const float *pos_bias, struct fx_err *err)
{
	struct fx_tenc_cuda *g = (struct fx_tenc_cuda *)calloc(1, sizeof(*g));
	const int64_t inner = d->heads * d->dk, nf = d->gated ? 2 * d->F : d->F;
	int ret = 0, dev_ = device;
	size_t R, nbig, nmid, wsz[W_COUNT];

	*outp = NULL;
	if (!g)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	if (d->n < 1 || d->L < 1 || d->D < 1 || d->heads < 1 || d->dk < 1 || d->F < 1 ||
	    d->L * d->L > INT_MAX || 3 * inner > INT_MAX || nf > INT_MAX || d->D > INT_MAX) {
		free(g);
		return fx_error(err, FX_E_ARG, "text encoder: dimensions out of range for the GPU path");
	}
	g->device = device;
	g->d = *d;
	g->seq_per_chunk = d->L >= CHUNK_ROWS ? 1 : CHUNK_ROWS / d->L;
	if (g->seq_per_chunk > d->n)
		g->seq_per_chunk = d->n;
	R = (size_t)(g->seq_per_chunk * d->L);
	nbig = R * (size_t)(3 * inner > nf ? 3 * inner : nf);
	nmid = R * (size_t)(inner > d->F ? inner : d->F);
	wsz[W_QKV] = (size_t)(3 * inner * d->D);
	wsz[W_QKV_B] = (size_t)(3 * inner);
	wsz[W_O] = (size_t)(d->D * inner);
	wsz[W_O_B] = wsz[W_LN1] = wsz[W_LN1_B] = wsz[W_LN2] = wsz[W_LN2_B] = wsz[W_FC2_B] = (size_t)d->D;
	wsz[W_FC1] = (size_t)(nf * d->D);
	wsz[W_FC1_B] = (size_t)nf;
	wsz[W_FC2] = (size_t)(d->D * d->F);
	CHECK(cudaSetDevice(device));
	CHECK(cudaStreamCreateWithFlags(&g->stream, cudaStreamNonBlocking));
	BLAS(cublasCreate(&g->blas));
	BLAS(cublasSetStream(g->blas, g->stream));
	// plain f32: no TF32 tensor-op rounding, results comparable to the CPU
	BLAS(cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH));
	CHECK(cudaMalloc(&g->h, sizeof(float) * (size_t)(d->n * d->L * d->D)));
	CHECK(cudaMalloc(&g->x, sizeof(float) * R * (size_t)d->D));
	CHECK(cudaMalloc(&g->y, sizeof(float) * R * (size_t)d->D));
	CHECK(cudaMalloc(&g->big, sizeof(float) * nbig));
	CHECK(cudaMalloc(&g->mid, sizeof(float) * nmid));
	CHECK(cudaMalloc(&g->scores, sizeof(float) * (size_t)(d->heads * d->L * d->L)));
	for (int i = 0; i < W_COUNT; i++)
		CHECK(cudaMalloc(&g->w[i], sizeof(float) * wsz[i]));
	if (pos_bias) {
		CHECK(cudaMalloc(&g->bias, sizeof(float) * (size_t)(d->heads * d->L * d->L)));
		CHECK(cudaMemcpyAsync(g->bias, pos_bias, sizeof(float) * (size_t)(d->heads * d->L * d->L),
				      cudaMemcpyHostToDevice, g->stream));
	}
	CHECK(cudaMemcpyAsync(g->h, h, sizeof(float) * (size_t)(d->n * d->L * d->D), cudaMemcpyHostToDevice,
			      g->stream));
out:
	if (ret < 0) {
		if (ret == FX_E_CUDA && err)
			fx_error_prefix(err, "text encoder on the GPU (%lld sequences of %lld tokens)",
					(long long)d->n, (long long)d->L);
		fx_tenc_cuda_free(g);
	} else {
		*outp = g;
	}
	return ret;
}

// Uploads one weight (rows·cols floats); a NULL host pointer marks it absent.
static int upload(struct fx_tenc_cuda *g, int slot, const float *src, size_t count, struct fx_err *err)
{
	int ret = 0, dev_ = g->device;

	g->has_w[slot] = src != NULL;
	if (src)
		CHECK(cudaMemcpyAsync(g->w[slot], src, sizeof(float) * count, cudaMemcpyHostToDevice, g->stream));
out:
	return ret;
}

// y (m,n) = x (m,k) · wᵀ, w (n,k) row-major.
static int linear(struct fx_tenc_cuda *g, float *y, const float *x, const float *w, int64_t m, int64_t n,
		  int64_t k, struct fx_err *err)
{
	const float one = 1.0f, zero = 0.0f;
	int ret = 0, dev_ = g->device;

	BLAS(cublasSgemm(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m, (int)k, &one, w, (int)k, x, (int)k,
			 &zero, y, (int)n));
out:
	return ret;
}

// One sequence's attention: qkv (L, 3 inner) -> o (L, inner).
static int attention(struct fx_tenc_cuda *g, float *o, const float *qkv, struct fx_err *err)
{
	const struct fx_tenc_cuda_dims *d = &g->d;
	const int64_t inner = d->heads * d->dk, ld = 3 * inner, L = d->L;
	const float one = 1.0f, zero = 0.0f;
	int ret = 0, dev_ = g->device;

	// scores_h (L,L) = q_h k_hᵀ · scale  <=>  column-major S_hᵀ = K_h Q_hᵀ
	BLAS(cublasSgemmStridedBatched(g->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)L, (int)L, (int)d->dk, &d->scale,
				       qkv + inner, (int)ld, (long long)d->dk, qkv, (int)ld, (long long)d->dk,
				       &zero, g->scores, (int)L, (long long)(L * L), (int)d->heads));
	LAUNCH(softmax_k<<<(unsigned)(d->heads * L), THREADS, 0, g->stream>>>(g->scores, g->bias, L, d->causal));
	// o_h (L,dk) = P_h v_h  <=>  column-major O_hᵀ = V_hᵀ P_hᵀ
	BLAS(cublasSgemmStridedBatched(g->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)d->dk, (int)L, (int)L, &one,
				       qkv + 2 * inner, (int)ld, (long long)d->dk, g->scores, (int)L,
				       (long long)(L * L), &zero, o, (int)inner, (long long)d->dk, (int)d->heads));
out:
	return ret;
}

static const float *wp(const struct fx_tenc_cuda *g, int slot)
{
	return g->has_w[slot] ? g->w[slot] : NULL;
}

extern "C" int fx_tenc_cuda_layer(struct fx_tenc_cuda *g, const struct fx_tenc_cuda_layer *w, struct fx_err *err)
{
	const struct fx_tenc_cuda_dims *d = &g->d;
	const int64_t D = d->D, F = d->F, inner = d->heads * d->dk, nf = d->gated ? 2 * F : F, L = d->L;
	int ret = 0, dev_ = g->device;

	CHECK(cudaSetDevice(dev_));
	if ((ret = upload(g, W_QKV, w->qkv, (size_t)(3 * inner * D), err)) < 0 ||
	    (ret = upload(g, W_QKV_B, w->qkv_b, (size_t)(3 * inner), err)) < 0 ||
	    (ret = upload(g, W_O, w->o, (size_t)(D * inner), err)) < 0 ||
	    (ret = upload(g, W_O_B, w->o_b, (size_t)D, err)) < 0 ||
	    (ret = upload(g, W_LN1, w->ln1_w, (size_t)D, err)) < 0 ||
	    (ret = upload(g, W_LN1_B, w->ln1_b, (size_t)D, err)) < 0 ||
	    (ret = upload(g, W_LN2, w->ln2_w, (size_t)D, err)) < 0 ||
	    (ret = upload(g, W_LN2_B, w->ln2_b, (size_t)D, err)) < 0 ||
	    (ret = upload(g, W_FC1, w->fc1, (size_t)(nf * D), err)) < 0 ||
	    (ret = upload(g, W_FC1_B, w->fc1_b, (size_t)nf, err)) < 0 ||
	    (ret = upload(g, W_FC2, w->fc2, (size_t)(D * F), err)) < 0 ||
	    (ret = upload(g, W_FC2_B, w->fc2_b, (size_t)D, err)) < 0)
		goto out;
	if (!w->qkv || !w->o || !w->ln1_w || !w->ln2_w || !w->fc1 || !w->fc2) {
		ret = fx_error(err, FX_E_ARG, "text encoder layer: a weight matrix or norm is missing");
		goto out;
	}
	for (int64_t s0 = 0; s0 < d->n; s0 += g->seq_per_chunk) {
		int64_t ns = d->n - s0 < g->seq_per_chunk ? d->n - s0 : g->seq_per_chunk, rows = ns * L;
		float *h = g->h + s0 * L * D;

		// attention
		LAUNCH(norm_k<<<(unsigned)rows, THREADS, 0, g->stream>>>(g->x, h, wp(g, W_LN1), wp(g, W_LN1_B), D,
									  d->eps, d->rms));
		if ((ret = linear(g, g->big, g->x, g->w[W_QKV], rows, 3 * inner, D, err)) < 0)
			goto out;
		if (g->has_w[W_QKV_B])
			LAUNCH(bias_act_k<<<grid_for((size_t)(rows * 3 * inner)), THREADS, 0, g->stream>>>(
				g->big, g->w[W_QKV_B], (size_t)rows, 3 * inner, -1));
		for (int64_t s = 0; s < ns; s++)
			if ((ret = attention(g, g->mid + s * L * inner, g->big + s * L * 3 * inner, err)) < 0)
				goto out;
		if ((ret = linear(g, g->y, g->mid, g->w[W_O], rows, D, inner, err)) < 0)
			goto out;
		if (g->has_w[W_O_B])
			LAUNCH(bias_act_k<<<grid_for((size_t)(rows * D)), THREADS, 0, g->stream>>>(
				g->y, g->w[W_O_B], (size_t)rows, D, -1));
		LAUNCH(add_k<<<grid_for((size_t)(rows * D)), THREADS, 0, g->stream>>>(h, g->y, (size_t)(rows * D)));
		// feed-forward
		LAUNCH(norm_k<<<(unsigned)rows, THREADS, 0, g->stream>>>(g->x, h, wp(g, W_LN2), wp(g, W_LN2_B), D,
									  d->eps, d->rms));
		if ((ret = linear(g, g->big, g->x, g->w[W_FC1], rows, nf, D, err)) < 0)
			goto out;
		if (d->gated) {
			if (g->has_w[W_FC1_B])
				LAUNCH(bias_act_k<<<grid_for((size_t)(rows * nf)), THREADS, 0, g->stream>>>(
					g->big, g->w[W_FC1_B], (size_t)rows, nf, -1));
			LAUNCH(gate_k<<<grid_for((size_t)(rows * F)), THREADS, 0, g->stream>>>(
				g->mid, g->big, (size_t)rows, F, (int)d->act));
		} else {
			LAUNCH(bias_act_k<<<grid_for((size_t)(rows * F)), THREADS, 0, g->stream>>>(
				g->big, wp(g, W_FC1_B), (size_t)rows, F, (int)d->act));
		}
		if ((ret = linear(g, g->y, d->gated ? g->mid : g->big, g->w[W_FC2], rows, D, F, err)) < 0)
			goto out;
		if (g->has_w[W_FC2_B])
			LAUNCH(bias_act_k<<<grid_for((size_t)(rows * D)), THREADS, 0, g->stream>>>(
				g->y, g->w[W_FC2_B], (size_t)rows, D, -1));
		LAUNCH(add_k<<<grid_for((size_t)(rows * D)), THREADS, 0, g->stream>>>(h, g->y, (size_t)(rows * D)));
	}
out:
	return ret;
}

extern "C" int fx_tenc_cuda_finish(struct fx_tenc_cuda *g, const float *ln_w, const float *ln_b, float *out,
				   struct fx_err *err)
{
	const struct fx_tenc_cuda_dims *d = &g->d;
	const size_t rows = (size_t)(d->n * d->L);
	int ret = 0, dev_ = g->device;

	CHECK(cudaSetDevice(dev_));
	if (ln_w) {
		// the norm weights go in the (now free) first layer-norm slots
		CHECK(cudaMemcpyAsync(g->w[W_LN1], ln_w, sizeof(float) * (size_t)d->D, cudaMemcpyHostToDevice,
				      g->stream));
		if (ln_b)
			CHECK(cudaMemcpyAsync(g->w[W_LN1_B], ln_b, sizeof(float) * (size_t)d->D,
					      cudaMemcpyHostToDevice, g->stream));
		LAUNCH(norm_k<<<(unsigned)rows, THREADS, 0, g->stream>>>(g->h, g->h, g->w[W_LN1],
									  ln_b ? g->w[W_LN1_B] : NULL, d->D,
									  d->eps, d->rms));
	}
	CHECK(cudaMemcpyAsync(out, g->h, sizeof(float) * rows * (size_t)d->D, cudaMemcpyDeviceToHost, g->stream));
	CHECK(cudaStreamSynchronize(g->stream));
out:
	return ret;
}
