// Checked CUDA, cuBLAS and cuSOLVER calls, shared by the .cu files. For code
// with `int ret`, `struct fx_err *err` and an `out:` label; dev is the device
// index the message names. Each file wraps them in short local names.
#ifndef FX_CUDA_CHECK_H
#define FX_CUDA_CHECK_H

#define FX_CUDA_CHECK_DEV(dev, stmt)                                                   \
	do {                                                                           \
		cudaError_t e_ = (stmt);                                               \
		if (e_ != cudaSuccess) {                                               \
			ret = fx_error(err, FX_E_CUDA, "cuda: %s in %s at %s:%d (device %d)", \
				       cudaGetErrorString(e_), #stmt, __FILE__, __LINE__, (dev)); \
			goto out;                                                      \
		}                                                                      \
	} while (0)

#define FX_CUBLAS_CHECK_DEV(dev, stmt)                                                 \
	do {                                                                           \
		cublasStatus_t s_ = (stmt);                                            \
		if (s_ != CUBLAS_STATUS_SUCCESS) {                                     \
			ret = fx_error(err, FX_E_CUDA, "cublas: status %d in %s at %s:%d (device %d)", \
				       (int)s_, #stmt, __FILE__, __LINE__, (dev));      \
			goto out;                                                      \
		}                                                                      \
	} while (0)

#define FX_CUSOLVER_CHECK_DEV(dev, stmt)                                               \
	do {                                                                           \
		cusolverStatus_t s_ = (stmt);                                          \
		if (s_ != CUSOLVER_STATUS_SUCCESS) {                                   \
			ret = fx_error(err, FX_E_CUDA, "cusolver: status %d in %s at %s:%d (device %d)", \
				       (int)s_, #stmt, __FILE__, __LINE__, (dev));      \
			goto out;                                                      \
		}                                                                      \
	} while (0)

// A kernel launch: the launch text is the statement named in the message.
#define FX_CUDA_LAUNCH_DEV(dev, ...)                                                   \
	do {                                                                           \
		__VA_ARGS__;                                                           \
		cudaError_t e_ = cudaGetLastError();                                   \
		if (e_ != cudaSuccess) {                                               \
			ret = fx_error(err, FX_E_CUDA, "cuda: %s in %s at %s:%d (device %d)", \
				       cudaGetErrorString(e_), #__VA_ARGS__, __FILE__, __LINE__, (dev)); \
			goto out;                                                      \
		}                                                                      \
	} while (0)

#endif
