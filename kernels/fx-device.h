/* Device selection: one interface, CPU always available, CUDA when built
 * with CUDA=1 and a GPU is present (otherwise a message and CPU). */
#ifndef FX_DEVICE_H
#define FX_DEVICE_H

#include "fx-err.h"

enum fx_device_kind { FX_DEV_CPU, FX_DEV_CUDA, FX_DEV_COUNT };

struct fx_device {
	enum fx_device_kind kind;
	int index;              /* CUDA ordinal */
	char desc[128];         /* "cpu (2 threads)" / "cuda:0 NVIDIA H100" */
};

/* spec: NULL/"cpu"/"cuda"/"cuda:N". A CUDA request without a usable GPU (or
 * in a build without CUDA) falls back to CPU and says why in *note. */
int fx_device_select(struct fx_device *dev, const char *spec, char *note, size_t note_cap,
		     struct fx_err *err);

/* CUDA backend entry points (kernels/cuda/, or the stub returning
 * FX_E_UNSUPPORTED). */
bool fx_cuda_built(void);
int fx_cuda_device_count(void);
int fx_cuda_describe(int index, char *buf, size_t cap);
/* C = A (m,k) · Bᵀ (n,k), row-major f32 on the host; computed on the GPU. */
int fx_cuda_sgemm_nt(int index, const float *a, const float *b, float *c,
		     int64_t m, int64_t n, int64_t k, struct fx_err *err);

#endif
