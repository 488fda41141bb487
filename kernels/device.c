#include "fx-device.h"

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int fx_device_select(struct fx_device *dev, const char *spec, char *note, size_t note_cap,
		     struct fx_err *err)
{
	int idx = 0;

	if (note && note_cap)
		note[0] = '\0';
	memset(dev, 0, sizeof(*dev));
	dev->kind = FX_DEV_CPU;
	snprintf(dev->desc, sizeof(dev->desc), "cpu (%d threads)", omp_get_max_threads());
	if (!spec || !strcmp(spec, "cpu"))
		return 0;
	if (strncmp(spec, "cuda", 4) != 0 || (spec[4] && spec[4] != ':'))
		return fx_error(err, FX_E_ARG, "unknown device '%s' (expected cpu, cuda or cuda:N)", spec);
	if (spec[4] == ':') {
		char *end;
		long v = strtol(spec + 5, &end, 10);

		if (end == spec + 5 || *end || v < 0 || v > 64)
			return fx_error(err, FX_E_ARG, "bad device index in '%s'", spec);
		idx = (int)v;
	}
	if (!fx_cuda_built()) {
		if (note)
			snprintf(note, note_cap, "this build has no CUDA support (make CUDA=1); using the CPU");
		return 0;
	}
	if (fx_cuda_device_count() <= idx) {
		if (note)
			snprintf(note, note_cap, "no CUDA device %d found; using the CPU", idx);
		return 0;
	}
	dev->kind = FX_DEV_CUDA;
	dev->index = idx;
	fx_cuda_describe(idx, dev->desc, sizeof(dev->desc));
	return 0;
}
