/* Nunchaku SVDQuant tensor layouts (spec nunchaku-svdq-format.md §4):
 * packers from fx's plain row-major forms and the exact inverses.
 *
 * Element types are raw bit patterns: BF16 as uint16_t, E4M3 as uint8_t.
 * Byte buffers are little-endian whatever the host. Every packer has an
 * unpacker with the same arguments (dst and src swapped); unpack(pack(x))
 * == x. Buffers have the size of the plain form (the layouts are
 * permutations); they must not overlap.
 *
 * Shape rules (FX_E_FORMAT naming the shape otherwise):
 *   W4A4 tensors (qweight, wscales, vectors): n and k multiples of 128
 *   (fx never pads; FLUX needs no padding); low-rank: outer dim and rank
 *   multiples of 16; W4A16: n multiple of 4, k multiple of 64.
 */
#ifndef FX_PACK_H
#define FX_PACK_H

#include "fx-err.h"

/* Two 4-bit codes a byte (even index in the low nibble) <-> one code a
 * byte; count is the number of codes (even). Unpacked codes must be < 16. */
void fx_nibbles_pack(uint8_t *dst, const uint8_t *codes, size_t count);
void fx_nibbles_unpack(uint8_t *codes, const uint8_t *src, size_t count);

/* §4.1 W4A4 qweight: src = fx.quant codes (n, k/2) row-major nibble pairs
 * (INT4 q&15 or E2M1 codes) -> n*k/2 bytes, viewed as I8 (n, k/2). */
int fx_pack_w4a4_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			struct fx_err *err);
int fx_unpack_w4a4_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			  struct fx_err *err);

/* §4.3 INT4 wscales: src (n, k/64) BF16 row-major -> flat n*k/64 (nominal
 * shape (k/64, n)). */
int fx_pack_int4_wscales(uint16_t *dst, const uint16_t *src, int64_t n, int64_t k,
			 struct fx_err *err);
int fx_unpack_int4_wscales(uint16_t *dst, const uint16_t *src, int64_t n, int64_t k,
			   struct fx_err *err);

/* §4.4 per-channel vectors (bias, wcscales over n; smooth, smooth_orig over
 * k): src (n) -> packed vector layout (n). */
int fx_pack_vector(uint16_t *dst, const uint16_t *src, int64_t n, struct fx_err *err);
int fx_unpack_vector(uint16_t *dst, const uint16_t *src, int64_t n, struct fx_err *err);

/* §4.5 NVFP4 wscales: src (n, k/16) E4M3 row-major -> flat n*k/16 (nominal
 * shape (k/16, n)). */
int fx_pack_fp4_wscales(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			struct fx_err *err);
int fx_unpack_fp4_wscales(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			  struct fx_err *err);

/* §4.6 lora_down. Input is the (r, k) row-major BF16 matrix down^T of the
 * spec's Ld, i.e. Ld[kk][j] = src[j][kk]: the fx.branch `down` orientation,
 * already divided by the smoothing factor (fx_lora_down_bf16 does that).
 * Output (k, r) tiled. */
int fx_pack_lora_down(uint16_t *dst, const uint16_t *src, int64_t k, int64_t r,
		      struct fx_err *err);
int fx_unpack_lora_down(uint16_t *dst, const uint16_t *src, int64_t k, int64_t r,
			struct fx_err *err);
/* §4.6 lora_up: src (n, r) row-major BF16 (Lu = fx.branch `up`) -> (n, r) tiled. */
int fx_pack_lora_up(uint16_t *dst, const uint16_t *src, int64_t n, int64_t r,
		    struct fx_err *err);
int fx_unpack_lora_up(uint16_t *dst, const uint16_t *src, int64_t n, int64_t r,
		      struct fx_err *err);
/* The stored down matrix before tiling: dst (r, k) BF16 = bf16(a / s) with
 * the division in f64 as upstream; a: fx.branch `down` (r, k) f32 acting on
 * x/s; smooth (k) or NULL (folded smoothing: no division). */
int fx_lora_down_bf16(uint16_t *dst, const float *a, const float *smooth, int64_t k, int64_t r,
		      struct fx_err *err);

/* §4.7 W4A16 qweight: src = fx.quant codes (n, k/2) nibble pairs, u in
 * [0,15], rows already interleaved -> n*k/2 bytes = I16 (n/4, k) = I32
 * (n/4, k/2) little-endian. */
int fx_pack_w4a16_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			 struct fx_err *err);
int fx_unpack_w4a16_weight(uint8_t *dst, const uint8_t *src, int64_t n, int64_t k,
			   struct fx_err *err);

/* §2.4 W4A16 wscales / wzeros: src (n, k/64) -> plain transpose (k/64, n). */
int fx_pack_w4a16_scales(uint16_t *dst, const uint16_t *src, int64_t n, int64_t k,
			 struct fx_err *err);
int fx_unpack_w4a16_scales(uint16_t *dst, const uint16_t *src, int64_t n, int64_t k,
			   struct fx_err *err);

#endif
