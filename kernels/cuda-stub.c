/* Linked when CUDA=0: the CUDA backend reports itself unavailable. */
#include "fx-device.h"

bool fx_cuda_built(void) { return false; }
int fx_cuda_device_count(void) { return 0; }

int fx_cuda_describe(int index, char *buf, size_t cap)
{
	(void)index;
	if (cap)
		buf[0] = '\0';
	return FX_E_UNSUPPORTED;
}

int fx_cuda_sgemm_nt(int index, const float *a, const float *b, float *c,
		     int64_t m, int64_t n, int64_t k, struct fx_err *err)
{
	(void)index; (void)a; (void)b; (void)c; (void)m; (void)n; (void)k;
	return fx_error(err, FX_E_UNSUPPORTED, "built without CUDA (make CUDA=1)");
}
