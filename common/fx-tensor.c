/* Dtype table, shape helpers and widening to f32. The scalar conversions
 * live in fx-convert.c. */
#include "fx-tensor.h"

#include <stdio.h>
#include <string.h>

static const struct {
	const char *name;
	size_t size;
} dtypes[FX_DTYPE_COUNT] = {
	[FX_BF16] = { "BF16", 2 },
	[FX_F16] = { "F16", 2 },
	[FX_F32] = { "F32", 4 },
	[FX_F64] = { "F64", 8 },
	[FX_F8_E4M3] = { "F8_E4M3", 1 },
	[FX_I8] = { "I8", 1 },
	[FX_U8] = { "U8", 1 },
	[FX_I16] = { "I16", 2 },
	[FX_U16] = { "U16", 2 },
	[FX_I32] = { "I32", 4 },
	[FX_I64] = { "I64", 8 },
	[FX_F8_E5M2] = { "F8_E5M2", 1 },
};

int fx_dtype_from_name(const char *name)
{
	int i;

	if (!name)
		return -1;
	for (i = 0; i < FX_DTYPE_COUNT; i++)
		if (!strcmp(dtypes[i].name, name))
			return i;
	return -1;
}

const char *fx_dtype_name(enum fx_dtype dt)
{
	if ((unsigned)dt >= FX_DTYPE_COUNT)
		return "?";
	return dtypes[dt].name;
}

size_t fx_dtype_size(enum fx_dtype dt)
{
	if ((unsigned)dt >= FX_DTYPE_COUNT)
		return 0;
	return dtypes[dt].size;
}

bool fx_shape_numel(int ndim, const int64_t *shape, uint64_t *numel)
{
	uint64_t n = 1;
	int i;

	if (ndim < 0 || ndim > FX_MAX_DIMS || (ndim && !shape))
		return false;
	for (i = 0; i < ndim; i++) {
		if (shape[i] < 0)
			return false;
		if (shape[i] && n > UINT64_MAX / (uint64_t)shape[i])
			return false;
		n *= (uint64_t)shape[i];
	}
	if (numel)
		*numel = n;
	return true;
}

uint64_t fx_tensor_numel(const struct fx_tensor *t)
{
	uint64_t n = 1;
	int i;

	for (i = 0; i < t->ndim; i++)
		n *= (uint64_t)t->shape[i];
	return n;
}

const char *fx_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape)
{
	size_t len = 0;
	int i, k;

	if (!buf || !cap)
		return buf;
	buf[0] = '\0';
	k = snprintf(buf, cap, "[");
	if (k > 0)
		len = (size_t)k;
	for (i = 0; i < ndim && len < cap; i++) {
		k = snprintf(buf + len, cap - len, "%s%lld", i ? "," : "", (long long)shape[i]);
		if (k < 0)
			break;
		len += (size_t)k;
	}
	if (len < cap)
		snprintf(buf + len, cap - len, "]");
	return buf;
}

int fx_to_f32(float *dst, const void *src, enum fx_dtype dt, size_t n)
{
	const uint8_t *p = src;
	size_t i;

	switch (dt) {
	case FX_F32:
		if (n)
			memmove(dst, src, n * sizeof(float));
		return 0;
	case FX_F64:
		for (i = 0; i < n; i++) {
			double d;
			memcpy(&d, p + 8 * i, sizeof(d));
			dst[i] = (float)d;
		}
		return 0;
	case FX_BF16:
	case FX_F16:
		for (i = 0; i < n; i++) {
			uint16_t h = (uint16_t)(p[2 * i] | (p[2 * i + 1] << 8));
			dst[i] = dt == FX_BF16 ? fx_bf16_to_f32(h) : fx_f16_to_f32(h);
		}
		return 0;
	case FX_F8_E4M3:
		for (i = 0; i < n; i++)
			dst[i] = fx_e4m3_to_f32(p[i]);
		return 0;
	case FX_F8_E5M2:
		for (i = 0; i < n; i++)
			dst[i] = fx_e5m2_to_f32(p[i]);
		return 0;
	case FX_I8: case FX_U8: case FX_I16: case FX_U16: case FX_I32: case FX_I64:
	case FX_DTYPE_COUNT:
		break;
	}
	return FX_E_UNSUPPORTED;
}
