/* Nunchaku layouts (spec §4). Each layout is one index function; packers
 * scatter, unpackers gather with the same function. */
#include "fx-pack.h"
#include "fx-tensor.h"

#include <math.h>
#include <string.h>

static int check_w4a4(const char *what, int64_t n, int64_t k, struct fx_err *err)
{
	if (n <= 0 || k <= 0 || n % 128 || k % 128)
		return fx_error(err, FX_E_FORMAT,
				"%s: shape [%lld,%lld] is not supported: n and k must be multiples of 128",
				what, (long long)n, (long long)k);
	return 0;
}

void fx_nibbles_pack(uint8_t *dst, const uint8_t *codes, size_t count)
{
	for (size_t i = 0; i + 1 < count; i += 2)
		dst[i / 2] = (uint8_t)((codes[i] & 15u) | (codes[i + 1] << 4));
}

void fx_nibbles_unpack(uint8_t *codes, const uint8_t *src, size_t count)
{
	for (size_t i = 0; i + 1 < count; i += 2) {
		codes[i] = src[i / 2] & 15u;
		codes[i + 1] = src[i / 2] >> 4;
	}
}

/* ---- §4.1 W4A4 weights ----------------------------------------------- */

/* 32-bit word holding codes k..k+7 (k % 8 == 0) of row n. Those 8 codes are
 * also 4 consecutive bytes of the fx.quant row, so packing moves words. */
static size_t w4a4_word(int64_t n, int64_t k, int64_t kt)
{
	int64_t tn = n / 128, p = (n % 128) / 16, h = (n % 16) / 8, l = n % 8;
	int64_t tk = k / 64, u = (k % 64) / 32, m = (k % 32) / 8;
	return (size_t)((((((tn * kt + tk) * 8 + p) * 8 + l) * 4 + m) * 2 + h) * 2 + u);
}

static int w4a4_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k, bool pack,
		       struct fx_err *err)
{
	int ret = check_w4a4("w4a4 qweight", n, k, err);
	if (ret < 0)
		return ret;
	/* w4a4_word(r, kk) = w4a4_word(r, 0) + w4a4_word(0, kk): the row and
	 * column digits occupy separate places of the mixed radix */
#pragma omp parallel for schedule(static) if (n * k > (1 << 20))
	for (int64_t r = 0; r < n; r++) {
		size_t rw = w4a4_word(r, 0, k / 64);
		for (int64_t kk = 0; kk < k; kk += 8) {
			size_t plain = (size_t)r * (size_t)(k / 2) + (size_t)(kk / 2);
			size_t tiled = 4 * (rw + w4a4_word(0, kk, k / 64));
			if (pack)
				memcpy(dst + tiled, src + plain, 4);
			else
				memcpy(dst + plain, src + tiled, 4);
		}
	}
	return 0;
}

int fx_pack_w4a4_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			struct fx_err *err)
{
	return w4a4_weight(dst, src, n, k, true, err);
}

int fx_unpack_w4a4_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			  struct fx_err *err)
{
	return w4a4_weight(dst, src, n, k, false, err);
}

/* ---- §4.3 / §4.4 INT4 scales and vectors ------------------------------ */

/* Position of channel n in "vector order" within its 128-tile. */
static int64_t vec_pos(int64_t n)
{
	int64_t a = (n % 128) / 16, b = (n % 16) / 8, c = (n % 8) / 2, d = n % 2;
	return a * 16 + c * 4 + b * 2 + d;
}

static int scales16(uint16_t *dst, const uint16_t *src, int64_t n, int64_t ng, bool pack)
{
	for (int64_t r = 0; r < n; r++)
		for (int64_t g = 0; g < ng; g++) {
			size_t plain = (size_t)(r * ng + g);
			size_t tiled = (size_t)(((r / 128) * ng + g) * 128 + vec_pos(r));
			if (pack)
				dst[tiled] = src[plain];
			else
				dst[plain] = src[tiled];
		}
	return 0;
}

int fx_pack_int4_wscales(uint16_t *dst, const uint16_t *src, int64_t n, int64_t k,
			 struct fx_err *err)
{
	int ret = check_w4a4("int4 wscales", n, k, err);
	return ret < 0 ? ret : scales16(dst, src, n, k / 64, true);
}

int fx_unpack_int4_wscales(uint16_t *dst, const uint16_t *src, int64_t n, int64_t k,
			   struct fx_err *err)
{
	int ret = check_w4a4("int4 wscales", n, k, err);
	return ret < 0 ? ret : scales16(dst, src, n, k / 64, false);
}

static int check_vec(int64_t n, struct fx_err *err)
{
	if (n <= 0 || n % 128)
		return fx_error(err, FX_E_FORMAT,
				"vector: length %lld is not supported: must be a multiple of 128",
				(long long)n);
	return 0;
}

int fx_pack_vector(uint16_t *dst, const uint16_t *src, int64_t n, struct fx_err *err)
{
	int ret = check_vec(n, err);
	return ret < 0 ? ret : scales16(dst, src, n, 1, true);
}

int fx_unpack_vector(uint16_t *dst, const uint16_t *src, int64_t n, struct fx_err *err)
{
	int ret = check_vec(n, err);
	return ret < 0 ? ret : scales16(dst, src, n, 1, false);
}

/* ---- §4.5 NVFP4 micro-scales ----------------------------------------- */

static size_t fp4_scale_idx(int64_t n, int64_t g, int64_t kt)
{
	int64_t tn = n / 128, p = (n % 128) / 32, q = (n % 32) / 8, l = n % 8;
	int64_t t = g / 4, j = g % 4;
	return (size_t)(((((tn * kt + t) * 8 + l) * 4 + q) * 4 + p) * 4 + j);
}

static int fp4_wscales(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k, bool pack,
		       struct fx_err *err)
{
	int64_t ng = k / 16;
	int ret = check_w4a4("fp4 wscales", n, k, err);
	if (ret < 0)
		return ret;
	for (int64_t r = 0; r < n; r++)
		for (int64_t g = 0; g < ng; g++) {
			size_t plain = (size_t)(r * ng + g), tiled = fp4_scale_idx(r, g, k / 64);
			if (pack)
				dst[tiled] = src[plain];
			else
				dst[plain] = src[tiled];
		}
	return 0;
}

int fx_pack_fp4_wscales(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			struct fx_err *err)
{
	return fp4_wscales(dst, src, n, k, true, err);
}

int fx_unpack_fp4_wscales(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			  struct fx_err *err)
{
	return fp4_wscales(dst, src, n, k, false, err);
}

/* ---- §4.6 low-rank tiles --------------------------------------------- */

/* Flat index of the element at tile row rho, tile column kappa. */
static size_t lora_idx(int64_t outer, int64_t rank, int64_t r, int64_t rho, int64_t kappa)
{
	int64_t h = rho / 8, l = rho % 8, u = kappa / 8, m = (kappa % 8) / 2, e = kappa % 2;
	int64_t tile = (outer / 16) * (r / 16) + rank / 16;
	return (size_t)(tile * 256 + l * 32 + m * 8 + h * 4 + u * 2 + e);
}

static int check_lora(const char *what, int64_t outer, int64_t r, struct fx_err *err)
{
	if (outer <= 0 || r <= 0 || outer % 16 || r % 16)
		return fx_error(err, FX_E_FORMAT,
				"%s: shape [%lld,%lld] is not supported: both must be multiples of 16",
				what, (long long)outer, (long long)r);
	return 0;
}

/* down: src (r, k); the tile row is the rank, the column the input channel. */
static int lora_down(uint16_t *dst, const uint16_t *src, int64_t k, int64_t r, bool pack,
		     struct fx_err *err)
{
	int ret = check_lora("lora_down", k, r, err);
	if (ret < 0)
		return ret;
	for (int64_t j = 0; j < r; j++)
		for (int64_t kk = 0; kk < k; kk++) {
			size_t plain = (size_t)(j * k + kk), tiled = lora_idx(kk, j, r, j % 16, kk % 16);
			if (pack)
				dst[tiled] = src[plain];
			else
				dst[plain] = src[tiled];
		}
	return 0;
}

static int lora_up(uint16_t *dst, const uint16_t *src, int64_t n, int64_t r, bool pack,
		   struct fx_err *err)
{
	int ret = check_lora("lora_up", n, r, err);
	if (ret < 0)
		return ret;
	for (int64_t nn = 0; nn < n; nn++)
		for (int64_t j = 0; j < r; j++) {
			size_t plain = (size_t)(nn * r + j), tiled = lora_idx(nn, j, r, nn % 16, j % 16);
			if (pack)
				dst[tiled] = src[plain];
			else
				dst[plain] = src[tiled];
		}
	return 0;
}

int fx_pack_lora_down(uint16_t *dst, const uint16_t *src, int64_t k, int64_t r,
		      struct fx_err *err)
{
	return lora_down(dst, src, k, r, true, err);
}

int fx_unpack_lora_down(uint16_t *dst, const uint16_t *src, int64_t k, int64_t r,
			struct fx_err *err)
{
	return lora_down(dst, src, k, r, false, err);
}

int fx_pack_lora_up(uint16_t *dst, const uint16_t *src, int64_t n, int64_t r,
		    struct fx_err *err)
{
	return lora_up(dst, src, n, r, true, err);
}

int fx_unpack_lora_up(uint16_t *dst, const uint16_t *src, int64_t n, int64_t r,
		      struct fx_err *err)
{
	return lora_up(dst, src, n, r, false, err);
}

int fx_lora_down_bf16(uint16_t *dst, const float *a, const float *smooth, int64_t k, int64_t r,
		      struct fx_err *err)
{
	if (k <= 0 || r < 0)
		return fx_error(err, FX_E_ARG, "lora_down: bad shape [%lld,%lld]", (long long)r,
				(long long)k);
	if (smooth)
		for (int64_t kk = 0; kk < k; kk++)
			if (!(smooth[kk] > 0.0f) || isinf(smooth[kk]))
				return fx_error(err, FX_E_VALUE, "smooth[%lld] = %g is not a positive finite value",
						(long long)kk, (double)smooth[kk]);
	for (int64_t j = 0; j < r; j++)
		for (int64_t kk = 0; kk < k; kk++) {
			double v = (double)a[j * k + kk];
			if (smooth)
				v /= (double)smooth[kk];
			/* f64 -> f32 -> bf16, as torch's .to(bfloat16) of a float64 tensor */
			dst[j * k + kk] = fx_f32_to_bf16((float)v);
		}
	return 0;
}

/* ---- §4.7 W4A16 weights ---------------------------------------------- */

static int check_w4a16(const char *what, int64_t n, int64_t k, struct fx_err *err)
{
	if (n <= 0 || k <= 0 || n % 4 || k % 64)
		return fx_error(err, FX_E_FORMAT,
				"%s: shape [%lld,%lld] is not supported: n must be a multiple of 4 and k of 64",
				what, (long long)n, (long long)k);
	return 0;
}

/* 16-bit element [o][kc*64 + s*16 + t] holds codes k = kc*64 + (t/8)*32 +
 * t%8 + 8a of row 4o+s in nibble a. */
static int w4a16_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k, bool pack,
			struct fx_err *err)
{
	int ret = check_w4a16("w4a16 qweight", n, k, err);
	if (ret < 0)
		return ret;
#pragma omp parallel for schedule(static) if (n * k > (1 << 20))
	for (int64_t o = 0; o < n / 4; o++)
		for (int64_t s = 0; s < 4; s++)
			for (int64_t kc = 0; kc < k / 64; kc++) {
				uint8_t *c = (pack ? (uint8_t *)(uintptr_t)src : dst) +
					     (4 * o + s) * (k / 2) + kc * 32;
				uint8_t *e = (pack ? dst : (uint8_t *)(uintptr_t)src) +
					     2 * (size_t)(o * k + kc * 64 + s * 16);
				uint8_t q[64];   /* the chunk's 64 codes, one per byte */

				if (pack) {
					for (int i = 0; i < 32; i++) {
						q[2 * i] = c[i] & 15u;
						q[2 * i + 1] = c[i] >> 4;
					}
					for (int t = 0; t < 16; t++) {
						int k0 = (t / 8) * 32 + t % 8;
						e[2 * t] = (uint8_t)(q[k0] | q[k0 + 8] << 4);
						e[2 * t + 1] = (uint8_t)(q[k0 + 16] | q[k0 + 24] << 4);
					}
				} else {
					for (int t = 0; t < 16; t++) {
						int k0 = (t / 8) * 32 + t % 8;
						q[k0] = e[2 * t] & 15u;
						q[k0 + 8] = e[2 * t] >> 4;
						q[k0 + 16] = e[2 * t + 1] & 15u;
						q[k0 + 24] = e[2 * t + 1] >> 4;
					}
					for (int i = 0; i < 32; i++)
						c[i] = (uint8_t)(q[2 * i] | q[2 * i + 1] << 4);
				}
			}
	return 0;
}

int fx_pack_w4a16_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			 struct fx_err *err)
{
	return w4a16_weight(dst, src, n, k, true, err);
}

int fx_unpack_w4a16_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			   struct fx_err *err)
{
	return w4a16_weight(dst, src, n, k, false, err);
}

static int w4a16_scales(uint16_t *dst, const uint16_t *src, int64_t n, int64_t k, bool pack,
			struct fx_err *err)
{
	int64_t ng = k / 64;
	int ret = check_w4a16("w4a16 scales", n, k, err);
	if (ret < 0)
		return ret;
	for (int64_t r = 0; r < n; r++)
		for (int64_t g = 0; g < ng; g++) {
			if (pack)
				dst[g * n + r] = src[r * ng + g];
			else
				dst[r * ng + g] = src[g * n + r];
		}
	return 0;
}

int fx_pack_w4a16_scales(uint16_t *dst, const uint16_t *src, int64_t n, int64_t k,
			 struct fx_err *err)
{
	return w4a16_scales(dst, src, n, k, true, err);
}

int fx_unpack_w4a16_scales(uint16_t *dst, const uint16_t *src, int64_t n, int64_t k,
			   struct fx_err *err)
{
	return w4a16_scales(dst, src, n, k, false, err);
}
