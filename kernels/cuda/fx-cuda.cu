// CUDA backend: device discovery and cuBLAS GEMM; every call checked.
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <cusolverDn.h>
#include <stdio.h>

extern "C" {
#include "fx-device.h"
}
#include "fx-cuda-check.h"

#define FX_CUDA_CHECK(stmt) FX_CUDA_CHECK_DEV(index, stmt)
#define FX_CUBLAS_CHECK(stmt) FX_CUBLAS_CHECK_DEV(index, stmt)


extern "C" bool fx_cuda_built(void) { return true; }

extern "C" int fx_cuda_device_count(void)
{
	int n = 0;
	if (cudaGetDeviceCount(&n) != cudaSuccess)
		return 0;
	return n;
}

extern "C" int fx_cuda_describe(int index, char *buf, size_t cap)
{
	cudaDeviceProp p;
	if (cudaGetDeviceProperties(&p, index) != cudaSuccess)
		return FX_E_CUDA;
	snprintf(buf, cap, "cuda:%d %s (sm_%d%d, %.0f GiB)", index, p.name, p.major, p.minor,
		 p.totalGlobalMem / 1073741824.0);
	return 0;
}

extern "C" int fx_cuda_sgemm_nt(int index, const float *a, const float *b, float *c,
				int64_t m, int64_t n, int64_t k, struct fx_err *err)
{
	int ret = 0;
	float *da = NULL, *db = NULL, *dc = NULL;
	cublasHandle_t h = NULL;
	const float one = 1.0f, zero = 0.0f;

	FX_CUDA_CHECK(cudaSetDevice(index));
	FX_CUDA_CHECK(cudaMalloc(&da, sizeof(float) * m * k));
	FX_CUDA_CHECK(cudaMalloc(&db, sizeof(float) * n * k));
	FX_CUDA_CHECK(cudaMalloc(&dc, sizeof(float) * m * n));
	FX_CUDA_CHECK(cudaMemcpy(da, a, sizeof(float) * m * k, cudaMemcpyHostToDevice));
	FX_CUDA_CHECK(cudaMemcpy(db, b, sizeof(float) * n * k, cudaMemcpyHostToDevice));
	FX_CUBLAS_CHECK(cublasCreate(&h));
	// row-major C(m,n) = A(m,k) B(n,k)^T  <=>  column-major C^T(n,m) = B(n,k) A^T
	FX_CUBLAS_CHECK(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, (int)n, (int)m, (int)k, &one,
				    db, (int)k, da, (int)k, &zero, dc, (int)n));
	FX_CUDA_CHECK(cudaMemcpy(c, dc, sizeof(float) * m * n, cudaMemcpyDeviceToHost));
out:
	if (h)
		cublasDestroy(h);
	cudaFree(da);
	cudaFree(db);
	cudaFree(dc);
	return ret;
}

// Keeps cuSOLVER linked for the low-rank stage's SVD path.
extern "C" int fx_cuda_solver_probe(void)
{
	cusolverDnHandle_t s;
	if (cusolverDnCreate(&s) != CUSOLVER_STATUS_SUCCESS)
		return FX_E_CUDA;
	cusolverDnDestroy(s);
	return 0;
}
