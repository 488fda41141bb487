/* Tensor views and the dtype table. A view owns nothing. */
#ifndef FX_TENSOR_H
#define FX_TENSOR_H

#include "fx.h"

#define FX_MAX_DIMS 8

enum fx_dtype {
	FX_BF16, FX_F16, FX_F32, FX_F64, FX_F8_E4M3,
	FX_I8, FX_U8, FX_I16, FX_U16, FX_I32, FX_I64,
	FX_F8_E5M2,
	FX_DTYPE_COUNT
};

struct fx_tensor {
	const char *name;
	enum fx_dtype dtype;
	int ndim;
	int64_t shape[FX_MAX_DIMS];
	size_t nbytes;
	const void *data;   /* borrowed; may point into an mmap */
};

/* safetensors dtype name ("BF16") <-> enum; returns -1 when unknown. */
int fx_dtype_from_name(const char *name);
const char *fx_dtype_name(enum fx_dtype dt);
size_t fx_dtype_size(enum fx_dtype dt);
/* Element count; returns false on overflow or negative dims. */
bool fx_shape_numel(int ndim, const int64_t *shape, uint64_t *numel);
/* Number of elements of a view (shape product; no overflow check). */
uint64_t fx_tensor_numel(const struct fx_tensor *t);
/* "[3072,64]" into buf. */
const char *fx_shape_str(char *buf, size_t cap, int ndim, const int64_t *shape);

/* Scalar conversions (round to nearest even where narrowing). */
float fx_bf16_to_f32(uint16_t h);
uint16_t fx_f32_to_bf16(float f);
/* n BF16 values (src needs no alignment) widened into dst; returns true when
 * any of them is NaN or Inf. stream: dst is part of a buffer much larger
 * than the caches, read back only later (streaming stores, 2x faster). */
bool fx_bf16_widen(float *dst, const void *src, size_t n, bool stream);
/* The same without widening: n BF16 values copied; true when any is NaN/Inf. */
bool fx_bf16_copy(uint16_t *dst, const void *src, size_t n);
float fx_f16_to_f32(uint16_t h);
uint16_t fx_f32_to_f16(float f);
float fx_e4m3_to_f32(uint8_t c);
float fx_e5m2_to_f32(uint8_t c);    /* exact: the high byte of an F16 */
uint8_t fx_f32_to_e4m3(float f);     /* nearest, ties to even code, saturating at ±448 */

/* Widen n elements of any float dtype (BF16/F16/F32/F64/F8_E4M3/F8_E5M2) to f32.
 * Returns FX_E_UNSUPPORTED for integer dtypes. */
int fx_to_f32(float *dst, const void *src, enum fx_dtype dt, size_t n);

#endif
