/* Unit tests of formats/fx-pack: golden bit-exactness of every Nunchaku
 * layout (tests/golden/pack_*.safetensors), unpack(pack(x)) == x, shape
 * errors, and an independent check of each layout written here as the
 * spec's index formulas (§4.1-4.7) with its worked examples. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-err.h"
#include "fx-pack.h"
#include "fx-st.h"
#include "fx-tensor.h"

/* ---- helpers ---------------------------------------------------------- */

static struct fx_st *golden(const char *name)
{
	const char *dir = getenv("FX_GOLDEN");
	char path[PATH_MAX];
	struct fx_err err = { 0 };
	struct fx_st *st = NULL;
	int rc;

	if (!dir)
		dir = "tests/golden";
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	rc = fx_st_open(&st, path, &err);
	if (rc < 0)
		fail_msg("cannot open golden '%s': %s", path, err.msg);
	return st;
}

/* Golden data may sit at any offset in the file: tests read aligned copies,
 * released by golden_close(). */
static void *copies[16];
static int ncopies;

static const void *need(const struct fx_st *st, const char *name, enum fx_dtype dt, size_t nbytes)
{
	const struct fx_tensor *t = fx_st_find(st, name);
	void *c;
	if (!t)
		fail_msg("golden tensor '%s' missing", name);
	assert_int_equal(t->dtype, dt);
	assert_int_equal(t->nbytes, nbytes);
	assert_true(ncopies < 16);
	c = malloc(nbytes ? nbytes : 1);
	assert_non_null(c);
	memcpy(c, t->data, nbytes);
	copies[ncopies++] = c;
	return c;
}

static void golden_close(struct fx_st *st)
{
	while (ncopies > 0)
		free(copies[--ncopies]);
	fx_st_close(st);
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);
	assert_non_null(p);
	return p;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint32_t rnd(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return (uint32_t)((z ^ (z >> 31)) >> 16);
}

static unsigned nib_at(const uint8_t *bytes, size_t byte, int high)
{
	return high ? bytes[byte] >> 4 : bytes[byte] & 15u;
}

/* ---- independent index formulas (spec text, written out again) -------- */

/* §4.1: byte offset and nibble of code (n, k). */
static size_t spec_w4a4(int64_t n, int64_t k, int64_t K, int *high)
{
	int64_t tn = n / 128, p = (n / 16) % 8, h = (n / 8) % 2, l = n % 8;
	int64_t tk = k / 64, u = (k / 32) % 2, m = (k / 8) % 4, e = k % 8;
	int64_t KT = K / 64;
	int64_t w = (((((tn * KT + tk) * 8 + p) * 8 + l) * 4 + m) * 2 + h) * 2 + u;
	*high = (int)(e & 1);
	return (size_t)(4 * w + e / 2);
}

/* §4.3 / §4.4 */
static size_t spec_scale16(int64_t n, int64_t g, int64_t G)
{
	int64_t tn = n / 128, a = (n / 16) % 8, b = (n / 8) % 2, c = (n / 2) % 4, d = n % 2;
	return (size_t)((tn * G + g) * 128 + a * 16 + c * 4 + b * 2 + d);
}

/* §4.5 */
static size_t spec_fp8(int64_t n, int64_t g, int64_t K)
{
	int64_t tn = n / 128, p = (n / 32) % 4, q = (n / 8) % 4, l = n % 8;
	int64_t t = g / 4, j = g % 4, KT = K / 64;
	return (size_t)(((((tn * KT + t) * 8 + l) * 4 + q) * 4 + p) * 4 + j);
}

/* §4.6: outer index o (k for down, n for up), rank j; rho/kappa per table. */
static size_t spec_lora(int64_t o, int64_t j, int64_t r, int64_t rho, int64_t kappa)
{
	int64_t h = rho / 8, l = rho % 8, u = kappa / 8, m = (kappa % 8) / 2, e = kappa % 2;
	int64_t tile = (o / 16) * (r / 16) + j / 16;
	return (size_t)(tile * 256 + l * 32 + m * 8 + h * 4 + u * 2 + e);
}

/* §4.7: 16-bit element index and nibble of u[n][k]. */
static size_t spec_awq(int64_t n, int64_t k, int64_t K, int *nibble)
{
	int64_t o = n / 4, s = n % 4, kc = k / 64, w = k % 64;
	int64_t chunk = w / 32, a = (w % 32) / 8, b = w % 8, t = chunk * 8 + b;
	*nibble = (int)a;
	return (size_t)(o * K + kc * 64 + s * 16 + t);
}

/* ---- golden files ----------------------------------------------------- */

static void test_golden_w4a4_weight(void **state)
{
	(void)state;
	struct fx_st *st = golden("pack_w4.safetensors");
	const int64_t N = 256, K = 384;
	const uint8_t *codes = need(st, "codes", FX_U8, N * K);
	const uint8_t *packed = need(st, "packed", FX_I8, N * K / 2);
	uint8_t *plain = xmalloc(N * K / 2), *out = xmalloc(N * K / 2), *back = xmalloc(N * K / 2);
	struct fx_err err = { 0 };

	fx_nibbles_pack(plain, codes, N * K);
	assert_int_equal(fx_pack_w4a4_weight(out, plain, N, K, &err), 0);
	assert_memory_equal(out, packed, N * K / 2);
	assert_int_equal(fx_unpack_w4a4_weight(back, packed, N, K, &err), 0);
	assert_memory_equal(back, plain, N * K / 2);
	/* the golden bytes also follow the spec formula, code by code */
	for (int64_t n = 0; n < N; n++)
		for (int64_t k = 0; k < K; k++) {
			int high;
			size_t b = spec_w4a4(n, k, K, &high);
			if (nib_at(packed, b, high) != codes[n * K + k])
				fail_msg("w4a4 formula mismatch at n=%lld k=%lld", (long long)n, (long long)k);
		}
	free(plain);
	free(out);
	free(back);
	golden_close(st);
}

static void test_golden_int4_wscales(void **state)
{
	(void)state;
	struct fx_st *st = golden("pack_scale16.safetensors");
	const int64_t N = 256, G = 6, K = G * 64;
	const uint16_t *in = need(st, "group64.scales", FX_BF16, N * G * 2);
	const uint16_t *packed = need(st, "group64.packed", FX_BF16, N * G * 2);
	uint16_t out[256 * 6], back[256 * 6];
	struct fx_err err = { 0 };

	assert_int_equal(fx_pack_int4_wscales(out, in, N, K, &err), 0);
	assert_memory_equal(out, packed, sizeof(out));
	assert_int_equal(fx_unpack_int4_wscales(back, packed, N, K, &err), 0);
	assert_memory_equal(back, in, sizeof(back));
	for (int64_t n = 0; n < N; n++)
		for (int64_t g = 0; g < G; g++)
			assert_int_equal(packed[spec_scale16(n, g, G)], in[n * G + g]);
	golden_close(st);
}

static void test_golden_vector(void **state)
{
	(void)state;
	struct fx_st *st = golden("pack_scale16.safetensors");
	const int64_t N = 256;
	const uint16_t *in = need(st, "vector.values", FX_BF16, N * 2);
	const uint16_t *packed = need(st, "vector.packed", FX_BF16, N * 2);
	uint16_t out[256], back[256];
	struct fx_err err = { 0 };

	assert_int_equal(fx_pack_vector(out, in, N, &err), 0);
	assert_memory_equal(out, packed, sizeof(out));
	assert_int_equal(fx_unpack_vector(back, packed, N, &err), 0);
	assert_memory_equal(back, in, sizeof(back));
	for (int64_t n = 0; n < N; n++)
		assert_int_equal(packed[spec_scale16(n, 0, 1)], in[n]);
	golden_close(st);
}

static void test_golden_fp4_wscales(void **state)
{
	(void)state;
	struct fx_st *st = golden("pack_scale_fp8.safetensors");
	const int64_t N = 256, G = 24, K = G * 16;
	const uint8_t *in = need(st, "codes", FX_F8_E4M3, N * G);
	const uint8_t *packed = need(st, "packed", FX_F8_E4M3, N * G);
	uint8_t out[256 * 24], back[256 * 24];
	struct fx_err err = { 0 };

	assert_int_equal(fx_pack_fp4_wscales(out, in, N, K, &err), 0);
	assert_memory_equal(out, packed, sizeof(out));
	assert_int_equal(fx_unpack_fp4_wscales(back, packed, N, K, &err), 0);
	assert_memory_equal(back, in, sizeof(back));
	for (int64_t n = 0; n < N; n++)
		for (int64_t g = 0; g < G; g++)
			assert_int_equal(packed[spec_fp8(n, g, K)], in[n * G + g]);
	golden_close(st);
}

static void test_golden_lora(void **state)
{
	(void)state;
	struct fx_st *st = golden("pack_lowrank.safetensors");
	const int64_t R = 32, K = 384, N = 256;
	const uint16_t *din = need(st, "down.input", FX_BF16, R * K * 2);
	const uint16_t *dpk = need(st, "down.packed", FX_BF16, R * K * 2);
	const uint16_t *uin = need(st, "up.input", FX_BF16, N * R * 2);
	const uint16_t *upk = need(st, "up.packed", FX_BF16, N * R * 2);
	uint16_t *out = xmalloc(R * K * 2), *back = xmalloc(R * K * 2);
	struct fx_err err = { 0 };

	assert_int_equal(fx_pack_lora_down(out, din, K, R, &err), 0);
	assert_memory_equal(out, dpk, R * K * 2);
	assert_int_equal(fx_unpack_lora_down(back, dpk, K, R, &err), 0);
	assert_memory_equal(back, din, R * K * 2);
	/* down: Ld[k][j] = input[j][k]; tile row = rank, column = input channel */
	for (int64_t j = 0; j < R; j++)
		for (int64_t k = 0; k < K; k++)
			assert_int_equal(dpk[spec_lora(k, j, R, j % 16, k % 16)], din[j * K + k]);

	assert_int_equal(fx_pack_lora_up(out, uin, N, R, &err), 0);
	assert_memory_equal(out, upk, N * R * 2);
	assert_int_equal(fx_unpack_lora_up(back, upk, N, R, &err), 0);
	assert_memory_equal(back, uin, N * R * 2);
	for (int64_t n = 0; n < N; n++)
		for (int64_t j = 0; j < R; j++)
			assert_int_equal(upk[spec_lora(n, j, R, n % 16, j % 16)], uin[n * R + j]);
	free(out);
	free(back);
	golden_close(st);
}

static void test_golden_w4a16_weight(void **state)
{
	(void)state;
	struct fx_st *st = golden("pack_awq_w4.safetensors");
	const int64_t N = 128, K = 256;
	const uint8_t *codes = need(st, "codes", FX_U8, N * K);
	const uint8_t *packed = need(st, "packed", FX_I16, N * K / 2);
	uint8_t *plain = xmalloc(N * K / 2), *out = xmalloc(N * K / 2), *back = xmalloc(N * K / 2);
	struct fx_err err = { 0 };

	fx_nibbles_pack(plain, codes, N * K);
	assert_int_equal(fx_pack_w4a16_weight(out, plain, N, K, &err), 0);
	assert_memory_equal(out, packed, N * K / 2);
	assert_int_equal(fx_unpack_w4a16_weight(back, packed, N, K, &err), 0);
	assert_memory_equal(back, plain, N * K / 2);
	for (int64_t n = 0; n < N; n++)
		for (int64_t k = 0; k < K; k++) {
			int a;
			size_t e = spec_awq(n, k, K, &a);
			/* 16-bit little-endian element e, nibble a */
			unsigned v = (unsigned)(packed[2 * e] | packed[2 * e + 1] << 8);
			if (((v >> (4 * a)) & 15u) != codes[n * K + k])
				fail_msg("awq formula mismatch at n=%lld k=%lld", (long long)n, (long long)k);
		}
	free(plain);
	free(out);
	free(back);
	golden_close(st);
}

/* ---- worked examples of the spec, through the packers ----------------- */

static void test_example_w4a4(void **state)
{
	(void)state;
	uint8_t codes[128 * 128], plain[128 * 64], out[128 * 64];
	struct fx_err err = { 0 };
	int high;

	/* the formula itself: n=37, k=77 -> byte 5458, high nibble */
	assert_int_equal(spec_w4a4(37, 77, 128, &high), 5458);
	assert_int_equal(high, 1);
	assert_int_equal(5458 / 64, 85);
	assert_int_equal(5458 % 64, 18);
	/* a lone code lands there */
	memset(codes, 0, sizeof(codes));
	codes[37 * 128 + 77] = 0xb;
	fx_nibbles_pack(plain, codes, sizeof(codes));
	assert_int_equal(fx_pack_w4a4_weight(out, plain, 128, 128, &err), 0);
	for (size_t i = 0; i < sizeof(out); i++)
		assert_int_equal(out[i], i == 5458 ? 0xb0 : 0);
}

static void test_example_int4_wscales(void **state)
{
	(void)state;
	uint16_t in[128 * 2], out[128 * 2];
	struct fx_err err = { 0 };

	assert_int_equal(spec_scale16(37, 1, 2), 169);
	for (int i = 0; i < 256; i++)
		in[i] = (uint16_t)i;
	assert_int_equal(fx_pack_int4_wscales(out, in, 128, 128, &err), 0);
	assert_int_equal(out[169], 37 * 2 + 1);     /* row 1, column 41 of (2,128) */
	assert_int_equal(169 / 128, 1);
	assert_int_equal(169 % 128, 41);
}

static void test_example_vector(void **state)
{
	(void)state;
	static const int order[16] = { 0, 1, 8, 9, 2, 3, 10, 11, 4, 5, 12, 13, 6, 7, 14, 15 };
	uint16_t in[128], out[128];
	struct fx_err err = { 0 };

	for (int i = 0; i < 128; i++)
		in[i] = (uint16_t)i;
	assert_int_equal(fx_pack_vector(out, in, 128, &err), 0);
	for (int blk = 0; blk < 8; blk++)
		for (int p = 0; p < 16; p++)
			assert_int_equal(out[blk * 16 + p], blk * 16 + order[p]);
	assert_int_equal(out[41], 37);
	assert_int_equal(spec_scale16(37, 0, 1), 41);
}

static void test_example_fp4_wscales(void **state)
{
	(void)state;
	uint8_t in[128 * 8], out[128 * 8];
	struct fx_err err = { 0 };

	assert_int_equal(spec_fp8(37, 5, 128), 837);
	memset(in, 0, sizeof(in));
	in[37 * 8 + 5] = 0x42;
	assert_int_equal(fx_pack_fp4_wscales(out, in, 128, 128, &err), 0);
	for (size_t i = 0; i < sizeof(out); i++)
		assert_int_equal(out[i], i == 837 ? 0x42 : 0);
	assert_int_equal(837 / 128, 6);
	assert_int_equal(837 % 128, 69);
	/* first entries of a tile: (n0,g0) (n0,g1) (n0,g2) (n0,g3) (n32,g0) ... (n8,g0) */
	assert_int_equal(spec_fp8(0, 3, 128), 3);
	assert_int_equal(spec_fp8(32, 0, 128), 4);
	assert_int_equal(spec_fp8(96, 3, 128), 15);
	assert_int_equal(spec_fp8(8, 0, 128), 16);
}

static void test_example_lora(void **state)
{
	(void)state;
	uint16_t down[32 * 128], up[128 * 32], out[128 * 32];
	struct fx_err err = { 0 };

	assert_int_equal(spec_lora(77, 21, 32, 21 % 16, 77 % 16), 2483);
	assert_int_equal(spec_lora(37, 21, 32, 37 % 16, 21 % 16), 1457);
	memset(down, 0, sizeof(down));
	down[21 * 128 + 77] = 0x3f80;        /* Ld[k=77][j=21] given as down^T (r, k) */
	assert_int_equal(fx_pack_lora_down(out, down, 128, 32, &err), 0);
	for (size_t i = 0; i < 128 * 32; i++)
		assert_int_equal(out[i], i == 2483 ? 0x3f80 : 0);
	assert_int_equal(2483 / 32, 77);
	assert_int_equal(2483 % 32, 19);
	memset(up, 0, sizeof(up));
	up[37 * 32 + 21] = 0x4000;
	assert_int_equal(fx_pack_lora_up(out, up, 128, 32, &err), 0);
	for (size_t i = 0; i < 128 * 32; i++)
		assert_int_equal(out[i], i == 1457 ? 0x4000 : 0);
	assert_int_equal(1457 / 32, 45);
	assert_int_equal(1457 % 32, 17);
}

static void test_example_w4a16(void **state)
{
	(void)state;
	uint8_t codes[128 * 256], plain[128 * 128], out[128 * 128];
	struct fx_err err = { 0 };
	int a;
	uint32_t word;

	assert_int_equal(spec_awq(37, 77, 256, &a), 9 * 256 + 85);
	assert_int_equal(a, 1);
	memset(codes, 0, sizeof(codes));
	codes[37 * 256 + 77] = 0xd;
	fx_nibbles_pack(plain, codes, sizeof(codes));
	assert_int_equal(fx_pack_w4a16_weight(out, plain, 128, 256, &err), 0);
	/* as I32 (32, 128): element [9][42], bits 20..23 */
	for (size_t i = 0; i < sizeof(out) / 4; i++) {
		word = (uint32_t)out[4 * i] | (uint32_t)out[4 * i + 1] << 8 |
		       (uint32_t)out[4 * i + 2] << 16 | (uint32_t)out[4 * i + 3] << 24;
		assert_int_equal(word, i == 9 * 128 + 42 ? 0xdu << 20 : 0);
	}
}

static void test_w4a16_scales_transpose(void **state)
{
	(void)state;
	uint16_t in[8 * 3], out[8 * 3], back[8 * 3];
	struct fx_err err = { 0 };

	for (int i = 0; i < 24; i++)
		in[i] = (uint16_t)(1000 + i);
	assert_int_equal(fx_pack_w4a16_scales(out, in, 8, 192, &err), 0);
	for (int n = 0; n < 8; n++)
		for (int g = 0; g < 3; g++)
			assert_int_equal(out[g * 8 + n], in[n * 3 + g]);
	assert_int_equal(fx_unpack_w4a16_scales(back, out, 8, 192, &err), 0);
	assert_memory_equal(back, in, sizeof(in));
}

/* ---- round trips on other shapes, errors ------------------------------ */

static void test_roundtrip_random(void **state)
{
	(void)state;
	const int64_t N = 384, K = 512, R = 48;
	size_t nb = (size_t)(N * K / 2);
	uint8_t *a = xmalloc(nb), *b = xmalloc(nb), *c = xmalloc(nb);
	size_t n16 = (size_t)(K * R > N * K / 16 ? K * R : N * K / 16);
	uint16_t *s = xmalloc(n16 * 2), *t = xmalloc(n16 * 2), *u = xmalloc(n16 * 2);
	struct fx_err err = { 0 };

	for (size_t i = 0; i < nb; i++)
		a[i] = (uint8_t)rnd();
	for (size_t i = 0; i < n16; i++)
		s[i] = (uint16_t)rnd();

	assert_int_equal(fx_pack_w4a4_weight(b, a, N, K, &err), 0);
	assert_int_equal(fx_unpack_w4a4_weight(c, b, N, K, &err), 0);
	assert_memory_equal(a, c, nb);
	assert_int_equal(fx_pack_w4a16_weight(b, a, N, K, &err), 0);
	assert_int_equal(fx_unpack_w4a16_weight(c, b, N, K, &err), 0);
	assert_memory_equal(a, c, nb);
	assert_int_equal(fx_pack_fp4_wscales(b, a, N, K, &err), 0);
	assert_int_equal(fx_unpack_fp4_wscales(c, b, N, K, &err), 0);
	assert_memory_equal(a, c, (size_t)(N * K / 16));
	assert_int_equal(fx_pack_int4_wscales(t, s, N, K, &err), 0);
	assert_int_equal(fx_unpack_int4_wscales(u, t, N, K, &err), 0);
	assert_memory_equal(s, u, (size_t)(N * K / 64) * 2);
	assert_int_equal(fx_pack_vector(t, s, K, &err), 0);
	assert_int_equal(fx_unpack_vector(u, t, K, &err), 0);
	assert_memory_equal(s, u, (size_t)K * 2);
	assert_int_equal(fx_pack_lora_down(t, s, K, R, &err), 0);
	assert_int_equal(fx_unpack_lora_down(u, t, K, R, &err), 0);
	assert_memory_equal(s, u, (size_t)(K * R) * 2);
	assert_int_equal(fx_pack_lora_up(t, s, N, R, &err), 0);
	assert_int_equal(fx_unpack_lora_up(u, t, N, R, &err), 0);
	assert_memory_equal(s, u, (size_t)(N * R) * 2);
	assert_int_equal(fx_pack_w4a16_scales(t, s, N, K, &err), 0);
	assert_int_equal(fx_unpack_w4a16_scales(u, t, N, K, &err), 0);
	assert_memory_equal(s, u, (size_t)(N * K / 64) * 2);
	/* packing is a permutation: every byte value count is preserved */
	{
		size_t ca[256] = { 0 }, cb[256] = { 0 };
		assert_int_equal(fx_pack_w4a4_weight(b, a, N, K, &err), 0);
		for (size_t i = 0; i < nb; i++) {
			ca[a[i]]++;
			cb[b[i]]++;
		}
		assert_memory_equal(ca, cb, sizeof(ca));
	}
	free(a);
	free(b);
	free(c);
	free(s);
	free(t);
	free(u);
}

static void test_shape_errors(void **state)
{
	(void)state;
	uint8_t buf[512] = { 0 };
	uint16_t b16[512] = { 0 };
	struct fx_err err = { 0 };

	assert_int_equal(fx_pack_w4a4_weight(buf, buf, 100, 256, &err), FX_E_FORMAT);
	assert_non_null(strstr(err.msg, "[100,256]"));
	assert_int_equal(fx_unpack_w4a4_weight(buf, buf, 128, 192, &err), FX_E_FORMAT);
	assert_non_null(strstr(err.msg, "[128,192]"));
	assert_int_equal(fx_pack_int4_wscales(b16, b16, 128, 64, &err), FX_E_FORMAT);
	assert_int_equal(fx_pack_fp4_wscales(buf, buf, 64, 128, &err), FX_E_FORMAT);
	assert_int_equal(fx_pack_vector(b16, b16, 96, &err), FX_E_FORMAT);
	assert_int_equal(fx_pack_lora_down(b16, b16, 128, 24, &err), FX_E_FORMAT);
	assert_non_null(strstr(err.msg, "[128,24]"));
	assert_int_equal(fx_pack_lora_up(b16, b16, 40, 16, &err), FX_E_FORMAT);
	assert_int_equal(fx_pack_w4a16_weight(buf, buf, 6, 64, &err), FX_E_FORMAT);
	assert_int_equal(fx_pack_w4a16_weight(buf, buf, 8, 96, &err), FX_E_FORMAT);
	assert_int_equal(fx_pack_w4a16_scales(b16, b16, 8, 32, &err), FX_E_FORMAT);
}

static void test_nibbles_and_lora_down_bf16(void **state)
{
	(void)state;
	uint8_t codes[6] = { 1, 2, 15, 0, 7, 8 }, packed[3], back[6];
	float a[2 * 2] = { 1.0f, 3.0f, -2.0f, 1.0f / 3.0f };
	float s[2] = { 2.0f, 3.0f };
	uint16_t d[4];
	struct fx_err err = { 0 };

	fx_nibbles_pack(packed, codes, 6);
	assert_int_equal(packed[0], 0x21);
	assert_int_equal(packed[1], 0x0f);
	assert_int_equal(packed[2], 0x87);
	fx_nibbles_unpack(back, packed, 6);
	assert_memory_equal(back, codes, 6);

	assert_int_equal(fx_lora_down_bf16(d, a, s, 2, 2, &err), 0);
	assert_int_equal(d[0], fx_f32_to_bf16(0.5f));
	assert_int_equal(d[1], fx_f32_to_bf16(1.0f));
	assert_int_equal(d[2], fx_f32_to_bf16(-1.0f));
	assert_int_equal(d[3], fx_f32_to_bf16((float)((double)(1.0f / 3.0f) / 3.0)));
	assert_int_equal(fx_lora_down_bf16(d, a, NULL, 2, 2, &err), 0);
	assert_int_equal(d[1], fx_f32_to_bf16(3.0f));
	s[1] = 0.0f;
	assert_int_equal(fx_lora_down_bf16(d, a, s, 2, 2, &err), FX_E_VALUE);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_golden_w4a4_weight),
		cmocka_unit_test(test_golden_int4_wscales),
		cmocka_unit_test(test_golden_vector),
		cmocka_unit_test(test_golden_fp4_wscales),
		cmocka_unit_test(test_golden_lora),
		cmocka_unit_test(test_golden_w4a16_weight),
		cmocka_unit_test(test_example_w4a4),
		cmocka_unit_test(test_example_int4_wscales),
		cmocka_unit_test(test_example_vector),
		cmocka_unit_test(test_example_fp4_wscales),
		cmocka_unit_test(test_example_lora),
		cmocka_unit_test(test_example_w4a16),
		cmocka_unit_test(test_w4a16_scales_transpose),
		cmocka_unit_test(test_roundtrip_random),
		cmocka_unit_test(test_shape_errors),
		cmocka_unit_test(test_nibbles_and_lora_down_bf16),
	};
	return cmocka_run_group_tests_name("pack", tests, NULL, NULL);
}
