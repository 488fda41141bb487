/* Unit tests of the number codes (common/fx-convert.c), the quantizers
 * (kernels/ref/quant.c, kernels/cpu/quant.c) and the runtime reference
 * (kernels/ref/runtime.c).
 *
 * Error budgets (relative Frobenius error ||W - deq|| / ||W||), 256x1024
 * standard Gaussian weights, seeded:
 *   plain Gaussian:           INT4 g64 < 0.12, NVFP4 g16 < 0.11, W4A16 g64 < 0.12
 *   with 8 outlier columns x20: NVFP4 g16 < 0.11, INT4 g64 < 0.25,
 *                             naive per-tensor INT4 (max/7) > 0.40, and
 *                             NVFP4 < INT4 < naive
 * (measured: 0.108 / 0.095 / 0.108 and 0.091 / 0.222 / 0.503). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-err.h"
#include "fx-quant.h"
#include "fx-quant-impl.h"
#include "fx-runtime.h"
#include "fx-st.h"
#include "fx-tensor.h"

/* ---- helpers ---------------------------------------------------------- */

static struct fx_st *golden(const char *name)
{
	const char *dir = getenv("FX_GOLDEN");
	char path[PATH_MAX];
	struct fx_err err = { 0 };
	struct fx_st *st = NULL;

	if (!dir)
		dir = "tests/golden";
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	if (fx_st_open(&st, path, &err) < 0)
		fail_msg("cannot open golden '%s': %s", path, err.msg);
	return st;
}

/* Golden data may sit at any offset in the file: tests read aligned copies,
 * released by golden_close(). */
static void *copies[16];
static int ncopies;

static const void *need(const struct fx_st *st, const char *name, enum fx_dtype dt, size_t *count)
{
	const struct fx_tensor *t = fx_st_find(st, name);
	void *c;
	if (!t)
		fail_msg("golden tensor '%s' missing", name);
	assert_int_equal(t->dtype, dt);
	*count = t->nbytes / fx_dtype_size(dt);
	assert_true(ncopies < 16);
	c = malloc(t->nbytes ? t->nbytes : 1);
	assert_non_null(c);
	memcpy(c, t->data, t->nbytes);
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

static uint64_t rng = 88172645463325252ull;

static double urand(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return ((double)(rng >> 11) + 0.5) / 9007199254740992.0;
}

static float gauss(void)
{
	return (float)(sqrt(-2.0 * log(urand())) * cos(6.283185307179586 * urand()));
}

static uint32_t bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	return u;
}

static float from_bits(uint32_t u)
{
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static double rel_err(const float *a, const float *b, size_t n)
{
	double e = 0.0, s = 0.0;
	for (size_t i = 0; i < n; i++) {
		e += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
		s += (double)a[i] * a[i];
	}
	return sqrt(e / s);
}

static unsigned code_at(const uint8_t *codes, int64_t k, int64_t r, int64_t kk)
{
	return (codes[r * (k / 2) + kk / 2] >> ((kk & 1) * 4)) & 15u;
}

/* Gaussian (n,k), optional outlier columns, a zero group, and exact ties. */
static float *make_weights(int64_t n, int64_t k, bool outliers)
{
	float *w = xmalloc((size_t)(n * k) * sizeof(float));
	for (int64_t i = 0; i < n * k; i++)
		w[i] = gauss();
	if (outliers)
		for (int64_t r = 0; r < n; r++)
			for (int c = 0; c < 8; c++)
				w[r * k + (c * 131 + 7) % k] *= 20.0f;
	return w;
}

/* ---- number codes: golden --------------------------------------------- */

static void test_golden_e4m3(void **state)
{
	(void)state;
	struct fx_st *st = golden("codes.safetensors");
	size_t n, n2;
	const float *in = need(st, "e4m3.input", FX_F32, &n);
	const uint8_t *exp = need(st, "e4m3.expected", FX_U8, &n2);

	assert_int_equal(n, n2);
	for (size_t i = 0; i < n; i++)
		if (fx_f32_to_e4m3(in[i]) != exp[i])
			fail_msg("e4m3(%a) = 0x%02x, expected 0x%02x", (double)in[i],
				 fx_f32_to_e4m3(in[i]), exp[i]);
	golden_close(st);
}

static void test_golden_bf16(void **state)
{
	(void)state;
	struct fx_st *st = golden("codes.safetensors");
	size_t n, n2;
	const float *in = need(st, "bf16.input", FX_F32, &n);
	const uint16_t *exp = need(st, "bf16.expected", FX_BF16, &n2);

	assert_int_equal(n, n2);
	for (size_t i = 0; i < n; i++)
		if (fx_f32_to_bf16(in[i]) != exp[i])
			fail_msg("bf16(0x%08x) = 0x%04x, expected 0x%04x", bits(in[i]),
				 fx_f32_to_bf16(in[i]), exp[i]);
	golden_close(st);
}

static void test_golden_tables(void **state)
{
	(void)state;
	struct fx_st *st = golden("codes.safetensors");
	size_t n;
	const float *e2 = need(st, "e2m1.values", FX_F32, &n);

	assert_int_equal(n, 16);
	for (unsigned c = 0; c < 16; c++)
		assert_int_equal(bits(fx_e2m1_value(c)), bits(e2[c]));
	const float *e4 = need(st, "e4m3.values", FX_F32, &n);
	assert_int_equal(n, 256);
	for (unsigned c = 0; c < 256; c++) {
		float v = fx_e4m3_to_f32((uint8_t)c);
		if (c == 0x7f || c == 0xff) {
			assert_true(isnan(v));
			assert_true(e4[c] == 0.0f);
		} else {
			assert_int_equal(bits(v), bits(e4[c]));
		}
	}
	golden_close(st);
}

/* ---- number codes: properties ------------------------------------------ */

static void test_e4m3_props(void **state)
{
	(void)state;
	/* every finite code round-trips; -0 becomes +0 */
	for (unsigned c = 0; c < 256; c++) {
		if ((c & 0x7f) == 0x7f)
			continue;
		assert_int_equal(fx_f32_to_e4m3(fx_e4m3_to_f32((uint8_t)c)), c == 0x80 ? 0 : c);
	}
	/* midpoints of neighbouring codes go to the even code, just above/below to the nearer */
	for (unsigned c = 0; c < 0x7e; c++) {
		float lo = fx_e4m3_to_f32((uint8_t)c), hi = fx_e4m3_to_f32((uint8_t)(c + 1));
		float mid = (lo + hi) * 0.5f;
		assert_int_equal(fx_f32_to_e4m3(mid), (c & 1) ? c + 1 : c);
		assert_int_equal(fx_f32_to_e4m3(nextafterf(mid, 0.0f)), c);
		assert_int_equal(fx_f32_to_e4m3(nextafterf(mid, 1000.0f)), c + 1);
		if (c)
			assert_int_equal(fx_f32_to_e4m3(-nextafterf(mid, 1000.0f)), (c + 1) | 0x80);
	}
	assert_int_equal(fx_f32_to_e4m3(NAN), 0x7f);
	assert_int_equal(fx_f32_to_e4m3(INFINITY), 0x7e);
	assert_int_equal(fx_f32_to_e4m3(-INFINITY), 0xfe);
	assert_int_equal(fx_f32_to_e4m3(463.99f), 0x7e);
	assert_int_equal(fx_f32_to_e4m3(-1e-30f), 0x00);
}

static void test_bf16_props(void **state)
{
	(void)state;
	assert_int_equal(fx_f32_to_bf16(from_bits(0x3f808000u)), 0x3f80);   /* tie, even */
	assert_int_equal(fx_f32_to_bf16(from_bits(0x3f818000u)), 0x3f82);   /* tie, odd up */
	assert_int_equal(fx_f32_to_bf16(from_bits(0x3f808001u)), 0x3f81);
	assert_int_equal(fx_f32_to_bf16(from_bits(0x7f7fffffu)), 0x7f80);   /* overflow to inf */
	assert_int_equal(fx_f32_to_bf16(INFINITY), 0x7f80);
	assert_int_equal(fx_f32_to_bf16(-0.0f), 0x8000);
	assert_true(isnan(fx_bf16_to_f32(fx_f32_to_bf16(NAN))));
	assert_true(isnan(fx_bf16_to_f32(fx_f32_to_bf16(from_bits(0x7f800001u)))));  /* sNaN low bits */
	assert_true(isnan(fx_bf16_to_f32(fx_f32_to_bf16(from_bits(0xffffffffu)))));
	for (uint32_t h = 0; h < 0x10000u; h++)
		if ((h & 0x7fffu) <= 0x7f80u)
			assert_int_equal(fx_f32_to_bf16(fx_bf16_to_f32((uint16_t)h)), h);
}

static void test_f16_props(void **state)
{
	(void)state;
	/* every non-NaN half round-trips */
	for (uint32_t h = 0; h < 0x10000u; h++) {
		if ((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu))
			assert_true(isnan(fx_f16_to_f32((uint16_t)h)));
		else
			assert_int_equal(fx_f32_to_f16(fx_f16_to_f32((uint16_t)h)), h);
	}
	assert_int_equal(fx_f32_to_f16(65504.0f), 0x7bff);
	assert_int_equal(fx_f32_to_f16(65519.99f), 0x7bff);
	assert_int_equal(fx_f32_to_f16(65520.0f), 0x7c00);
	assert_int_equal(fx_f32_to_f16(ldexpf(1.0f, -25)), 0x0000);        /* tie to even zero */
	assert_int_equal(fx_f32_to_f16(ldexpf(1.5f, -24)), 0x0002);        /* tie 1.5 ulp -> 2 */
	assert_int_equal(fx_f32_to_f16(ldexpf(1.0f, -25) * 1.0001f), 0x0001);
	assert_int_equal(fx_f32_to_f16(1.0f + ldexpf(1.0f, -11)), 0x3c00);  /* tie, even */
	assert_int_equal(fx_f32_to_f16(1.0f + 3 * ldexpf(1.0f, -11)), 0x3c02);
	assert_true(isnan(fx_f16_to_f32(fx_f32_to_f16(NAN))));
#ifdef __FLT16_MAX__
	/* against the compiler's own conversion on random patterns */
	for (int i = 0; i < 200000; i++) {
		float f = from_bits((uint32_t)(urand() * 4294967296.0));
		_Float16 h = (_Float16)f;
		uint16_t hb;
		if (isnan(f))
			continue;
		memcpy(&hb, &h, 2);
		if (fx_f32_to_f16(f) != hb)
			fail_msg("f16(0x%08x) = 0x%04x, compiler 0x%04x", bits(f), fx_f32_to_f16(f), hb);
	}
#endif
}

static void test_e2m1_rounding(void **state)
{
	(void)state;
	/* weights: ties toward the lower index, never -0 */
	assert_int_equal(fx_e2m1_code_lowtie(0.25f), 0);
	assert_int_equal(fx_e2m1_code_lowtie(-0.25f), 0);
	assert_int_equal(fx_e2m1_code_lowtie(0.75f), 1);
	assert_int_equal(fx_e2m1_code_lowtie(1.75f), 3);
	assert_int_equal(fx_e2m1_code_lowtie(2.5f), 4);
	assert_int_equal(fx_e2m1_code_lowtie(5.0f), 6);
	assert_int_equal(fx_e2m1_code_lowtie(-5.0f), 14);
	assert_int_equal(fx_e2m1_code_lowtie(5.0001f), 7);
	assert_int_equal(fx_e2m1_code_lowtie(100.0f), 7);
	assert_int_equal(fx_e2m1_code_lowtie(-7.0f), 15);
	assert_int_equal(fx_e2m1_code_lowtie(-0.1f), 0);
	assert_int_equal(fx_e2m1_code_lowtie(-0.26f), 9);
	assert_int_equal(fx_e2m1_code_lowtie(INFINITY), 7);
	assert_int_equal(fx_e2m1_code_lowtie(-INFINITY), 15);
	assert_true(fx_e2m1_round_even(-INFINITY) == -6.0f);
	/* activations: ties to the even code */
	assert_true(fx_e2m1_round_even(0.25f) == 0.0f);
	assert_true(fx_e2m1_round_even(0.75f) == 1.0f);
	assert_true(fx_e2m1_round_even(1.25f) == 1.0f);
	assert_true(fx_e2m1_round_even(1.75f) == 2.0f);
	assert_true(fx_e2m1_round_even(2.5f) == 2.0f);
	assert_true(fx_e2m1_round_even(3.5f) == 4.0f);
	assert_true(fx_e2m1_round_even(5.0f) == 4.0f);
	assert_true(fx_e2m1_round_even(-3.5f) == -4.0f);
	assert_true(fx_e2m1_round_even(9.0f) == 6.0f);
}

/* ---- quantizers: exact small cases ------------------------------------ */

static void test_int4_hand(void **state)
{
	(void)state;
	float w[64];
	uint8_t codes[32];
	uint16_t sc;
	struct fx_err err = { 0 };

	for (int i = 0; i < 64; i++)
		w[i] = 0.0f;
	w[0] = 7.0f;     /* S = 1 */
	w[1] = -3.5f;    /* -> -4 (rne) */
	w[2] = 2.5f;     /* -> 2 */
	w[3] = -7.0f;
	w[4] = 0.49f;
	assert_int_equal(fx_quant_int4_ref(codes, &sc, w, 1, 64, NULL, &err), 0);
	assert_int_equal(sc, 0x3f80);
	assert_int_equal(code_at(codes, 64, 0, 0), 7);
	assert_int_equal(code_at(codes, 64, 0, 1), (unsigned)(-4 & 15));
	assert_int_equal(code_at(codes, 64, 0, 2), 2);
	assert_int_equal(code_at(codes, 64, 0, 3), (unsigned)(-7 & 15));
	assert_int_equal(code_at(codes, 64, 0, 4), 0);
	assert_int_equal(codes[0], 0xc7);   /* k=0 low nibble, k=1 high */
	/* all-zero group: scale 1, codes 0 */
	memset(w, 0, sizeof(w));
	assert_int_equal(fx_quant_int4_ref(codes, &sc, w, 1, 64, NULL, &err), 0);
	assert_int_equal(sc, 0x3f80);
	for (int i = 0; i < 32; i++)
		assert_int_equal(codes[i], 0);
}

static void test_nvfp4_hand(void **state)
{
	(void)state;
	/* amax 2.625 gives T = 2^-10 exactly; group 0 has Sf = 448, group 1 Sf = 1 */
	const float T = 1.0f / 1024.0f;
	float w[32] = { 0 }, rs;
	uint8_t codes[16], sc[2];
	struct fx_err err = { 0 };

	w[0] = 2.625f;                 /* 2688 / 448 = 6 -> code 7 */
	w[1] = -2.625f / 2.0f;         /* -3 -> code 13 */
	w[16] = 6.0f * T;              /* group max: Sf = 1 */
	w[17] = 2.5f * T;              /* tie 2.5 -> 2 (code 4) */
	w[18] = 5.0f * T;              /* tie 5 -> 4 (code 6) */
	w[19] = 0.25f * T;             /* tie -> 0 */
	w[20] = -0.25f * T;            /* -> +0, code 0 */
	w[21] = 0.75f * T;             /* tie -> 0.5 (code 1) */
	w[22] = -1.75f * T;            /* tie -> -1.5 (code 11) */
	w[23] = 1.3f * T;              /* nearest 1.5 (code 3) */
	assert_int_equal(fx_quant_nvfp4_ref(codes, sc, &rs, w, 1, 32, NULL, 0, NULL, &err), 0);
	assert_true(rs == T);
	assert_int_equal(sc[0], 0x7e);
	assert_int_equal(sc[1], 0x38);
	assert_int_equal(code_at(codes, 32, 0, 0), 7);
	assert_int_equal(code_at(codes, 32, 0, 1), 13);
	assert_int_equal(code_at(codes, 32, 0, 16), 7);
	assert_int_equal(code_at(codes, 32, 0, 17), 4);
	assert_int_equal(code_at(codes, 32, 0, 18), 6);
	assert_int_equal(code_at(codes, 32, 0, 19), 0);
	assert_int_equal(code_at(codes, 32, 0, 20), 0);
	assert_int_equal(code_at(codes, 32, 0, 21), 1);
	assert_int_equal(code_at(codes, 32, 0, 22), 11);
	assert_int_equal(code_at(codes, 32, 0, 23), 3);
	assert_int_equal(code_at(codes, 32, 0, 24), 0);

	/* T is the smallest bf16 >= (amax/6)/448 */
	w[0] = 3.0f;
	assert_int_equal(fx_quant_nvfp4_ref(codes, sc, &rs, w, 1, 32, NULL, 0, NULL, &err), 0);
	{
		float t = (3.0f / 6.0f) / 448.0f;
		assert_true(rs >= t);
		assert_int_equal(bits(rs) & 0xffffu, 0);
		assert_true(from_bits(bits(rs) - 0x10000u) < t);
		assert_true(fx_e4m3_to_f32(sc[0]) <= 448.0f);
	}
}

static void test_nvfp4_members(void **state)
{
	(void)state;
	const int64_t n = 12, k = 32, rows[3] = { 4, 4, 4 };
	float *w = make_weights(n, k, false), rs[12], rs2[12];
	uint8_t c1[12 * 16], c2[12 * 16], s1[12 * 2], s2[12 * 2];
	struct fx_err err = { 0 };

	for (int64_t i = 4 * k; i < 8 * k; i++)
		w[i] *= 100.0f;                     /* member 1 is much larger */
	assert_int_equal(fx_quant_nvfp4_ref(c1, s1, rs, w, n, k, rows, 3, NULL, &err), 0);
	assert_int_equal(fx_quant_nvfp4_cpu(c2, s2, rs2, w, n, k, rows, 3, NULL, &err), 0);
	assert_memory_equal(c1, c2, sizeof(c1));
	assert_memory_equal(s1, s2, sizeof(s1));
	assert_memory_equal(rs, rs2, sizeof(rs));
	for (int i = 0; i < 12; i++)
		assert_true(rs[i] == rs[(i / 4) * 4]);
	assert_true(rs[4] > 50.0f * rs[0]);
	assert_true(rs[4] > 50.0f * rs[8]);
	/* each member's T matches quantizing that member alone */
	for (int mi = 0; mi < 3; mi++) {
		float r1[4];
		uint8_t cc[4 * 16], ss[4 * 2];
		assert_int_equal(fx_quant_nvfp4_ref(cc, ss, r1, w + mi * 4 * k, 4, k, NULL, 0, NULL, &err), 0);
		assert_true(r1[0] == rs[mi * 4]);
		assert_memory_equal(cc, c1 + mi * 4 * 16, sizeof(cc));
		assert_memory_equal(ss, s1 + mi * 4 * 2, sizeof(ss));
	}
	{
		const int64_t bad[2] = { 4, 4 };
		assert_int_equal(fx_quant_nvfp4_ref(c1, s1, rs, w, n, k, bad, 2, NULL, &err), FX_E_ARG);
		assert_int_equal(fx_quant_nvfp4_cpu(c1, s1, rs, w, n, k, bad, 2, NULL, &err), FX_E_ARG);
	}
	free(w);
}

static void test_w4a16_interleave(void **state)
{
	(void)state;
	const int64_t D = 8, k = 128;
	struct fx_err err = { 0 };

	assert_int_equal(fx_quant_adaln_src_row(64, 18432, 6), 3072 * 4 + 10);
	for (int S = 3; S <= 6; S += 3) {
		int64_t n = S * D;
		float *w = xmalloc((size_t)(n * k) * sizeof(float)), *deq = xmalloc((size_t)(n * k) * sizeof(float));
		float b[48];
		uint8_t *codes = xmalloc((size_t)(n * k / 2));
		uint16_t sc[48 * 2], ze[48 * 2], bias[48];

		/* row j*D+i of the source holds values tagged by (j, i) */
		for (int64_t j = 0; j < S; j++)
			for (int64_t i = 0; i < D; i++) {
				for (int64_t kk = 0; kk < k; kk++)
					w[(j * D + i) * k + kk] = (float)(j * 16 + i) * (kk % 2 ? 1.0f : -1.0f) * 0.125f;
				b[j * D + i] = (float)(j * 100 + i) * 0.25f;
			}
		assert_int_equal(fx_quant_w4a16_ref(codes, sc, ze, w, n, k, S, NULL, &err), 0);
		assert_int_equal(fx_dequant_w4a16_ref(deq, codes, sc, ze, n, k, &err), 0);
		assert_int_equal(fx_quant_adaln_bias(bias, b, n, S, &err), 0);
		for (int64_t j = 0; j < S; j++)
			for (int64_t i = 0; i < D; i++) {
				int64_t r = i * S + j, src = j * D + i;
				float amax = (float)(j * 16 + i) * 0.125f;
				float d = (j == 1 || j == S - 2) ? 1.0f : 0.0f;
				for (int64_t kk = 0; kk < k; kk++)
					assert_true(fabsf(deq[r * k + kk] - w[src * k + kk]) <= amax / 7.0f * 0.51f + 1e-6f);
				assert_int_equal(bias[r], fx_f32_to_bf16(b[src] + d));
				/* scale and zero as upstream: bf16(max/7), bf16(-7 S); u = q + 7 */
				if (amax > 0.0f) {
					float s = fx_bf16_to_f32(fx_f32_to_bf16(amax / 7.0f));
					assert_int_equal(sc[r * 2], fx_f32_to_bf16(amax / 7.0f));
					assert_int_equal(ze[r * 2], fx_f32_to_bf16(-7.0f * s));
					assert_int_equal(code_at(codes, k, r, 1), (unsigned)(rintf(amax / s) + 7));
				} else {
					assert_int_equal(code_at(codes, k, r, 0), 7);
				}
			}
		/* the +1 goes to chunks 1 and S-2 only (S=3: chunk 1) */
		assert_int_equal(bias[1 * S + 1], fx_f32_to_bf16(b[1 * D + 1] + 1.0f));
		assert_int_equal(bias[1 * S + 0], fx_f32_to_bf16(b[1]));
		assert_int_equal(bias[1 * S + S - 1], fx_f32_to_bf16(b[(S - 1) * D + 1]));
		free(w);
		free(deq);
		free(codes);
	}
}

/* ---- quantizers: cpu == ref, error bounds, search ---------------------- */

static void check_cpu_ref(int64_t n, int64_t k, bool outliers, const struct fx_qsearch *search)
{
	float *w = make_weights(n, k, outliers);
	size_t cb = fx_quant_codes_size(n, k);
	uint8_t *c1 = xmalloc(cb), *c2 = xmalloc(cb), *f1 = xmalloc((size_t)(n * k / 16)),
		*f2 = xmalloc((size_t)(n * k / 16));
	uint16_t *s1 = xmalloc((size_t)(n * k / 64) * 2), *s2 = xmalloc((size_t)(n * k / 64) * 2),
		 *z1 = xmalloc((size_t)(n * k / 64) * 2), *z2 = xmalloc((size_t)(n * k / 64) * 2);
	float *r1 = xmalloc((size_t)n * 4), *r2 = xmalloc((size_t)n * 4);
	float *d1 = xmalloc((size_t)(n * k) * 4), *d2 = xmalloc((size_t)(n * k) * 4);
	struct fx_err err = { 0 };
	int64_t members[3] = { n / 4, n / 2, n - n / 4 - n / 2 };

	/* ties and zero groups exercise the rounding rules */
	for (int64_t i = 0; i < 64; i++)
		w[i] = 0.0f;
	for (int64_t i = 64; i < 128; i++)
		w[i] = (float)((i % 15) - 7) * 0.5f;
	w[k + 3] = 1e-30f;

	assert_int_equal(fx_quant_int4_ref(c1, s1, w, n, k, search, &err), 0);
	assert_int_equal(fx_quant_int4_cpu(c2, s2, w, n, k, search, &err), 0);
	assert_memory_equal(c1, c2, cb);
	assert_memory_equal(s1, s2, (size_t)(n * k / 64) * 2);
	if (!search) {
		/* the streaming form, in two uneven blocks */
		memset(c2, 0, cb);
		fx_quant_int4_rows_cpu(c2, s2, w, 5, k);
		fx_quant_int4_rows_cpu(c2 + 5 * (k / 2), s2 + 5 * (k / 64), w + 5 * k, n - 5, k);
		assert_memory_equal(c1, c2, cb);
		assert_memory_equal(s1, s2, (size_t)(n * k / 64) * 2);
	}
	assert_int_equal(fx_dequant_int4_ref(d1, c1, s1, n, k, &err), 0);
	assert_int_equal(fx_dequant_int4_cpu(d2, c1, s1, n, k, &err), 0);
	assert_memory_equal(d1, d2, (size_t)(n * k) * 4);

	for (int split = 0; split < 2; split++) {
		assert_int_equal(fx_quant_nvfp4_ref(c1, f1, r1, w, n, k, split ? members : NULL, split ? 3 : 0,
						    search, &err), 0);
		assert_int_equal(fx_quant_nvfp4_cpu(c2, f2, r2, w, n, k, split ? members : NULL, split ? 3 : 0,
						    search, &err), 0);
		assert_memory_equal(c1, c2, cb);
		assert_memory_equal(f1, f2, (size_t)(n * k / 16));
		assert_memory_equal(r1, r2, (size_t)n * 4);
		for (int64_t i = 0; i < n * k / 16; i++)
			assert_true(f1[i] != 0 && f1[i] < 0x7f);   /* unsigned, finite, nonzero */
		assert_int_equal(fx_dequant_nvfp4_ref(d1, c1, f1, r1, n, k, &err), 0);
		assert_int_equal(fx_dequant_nvfp4_cpu(d2, c1, f1, r1, n, k, &err), 0);
		assert_memory_equal(d1, d2, (size_t)(n * k) * 4);
	}

	for (int S = 1; S <= 6; S += 5) {
		assert_int_equal(fx_quant_w4a16_ref(c1, s1, z1, w, n, k, S, search, &err), 0);
		assert_int_equal(fx_quant_w4a16_cpu(c2, s2, z2, w, n, k, S, search, &err), 0);
		assert_memory_equal(c1, c2, cb);
		assert_memory_equal(s1, s2, (size_t)(n * k / 64) * 2);
		assert_memory_equal(z1, z2, (size_t)(n * k / 64) * 2);
		if (!search) {
			/* the streaming form on the rows in output order */
			float *wp = xmalloc((size_t)(n * k) * 4);

			for (int64_t r = 0; r < n; r++)
				memcpy(wp + r * k, w + fx_quant_adaln_src_row(r, n, S) * k, (size_t)k * 4);
			fx_quant_w4a16_rows_cpu(c2, s2, z2, wp, n, k);
			assert_memory_equal(c1, c2, cb);
			assert_memory_equal(s1, s2, (size_t)(n * k / 64) * 2);
			assert_memory_equal(z1, z2, (size_t)(n * k / 64) * 2);
			free(wp);
		}
		assert_int_equal(fx_dequant_w4a16_ref(d1, c1, s1, z1, n, k, &err), 0);
		assert_int_equal(fx_dequant_w4a16_cpu(d2, c1, s1, z1, n, k, &err), 0);
		assert_memory_equal(d1, d2, (size_t)(n * k) * 4);
	}
	free(w); free(c1); free(c2); free(f1); free(f2); free(s1); free(s2); free(z1); free(z2);
	free(r1); free(r2); free(d1); free(d2);
}

static void test_cpu_equals_ref(void **state)
{
	(void)state;
	check_cpu_ref(96, 256, false, NULL);
	check_cpu_ref(120, 384, true, NULL);
}

/* Rows spanning 2^-60..2^60 around the tensor maximum: group scales that
 * round to E4M3 subnormals, to zero (kept as the smallest code), saturate,
 * and whole groups of zeros or denormal floats. */
static void test_cpu_equals_ref_range(void **state)
{
	const int64_t n = 120, k = 512;   /* rows split into 6 adaLN chunks */
	float *w = make_weights(n, k, true);

	(void)state;
	for (int64_t r = 0; r < n; r++) {
		float f = ldexpf(1.0f, (int)(r % 121) - 60);
		for (int64_t c = 0; c < k; c++)
			w[r * k + c] *= (c / 16) % 5 == 0 ? f * 1e-3f : f;
	}
	for (int64_t c = 32; c < 48; c++)
		w[5 * k + c] = 1e-41f;   /* f32 subnormals */
	check_cpu_ref(n, k, false, NULL);
	free(w);
}

/* The CPU quantizer's branch-free group scale against the scalar
 * conversions: every finite positive bf16 value, its neighbours one f32
 * ulp away (the bf16 rounding ties), and a million random floats. */
static uint8_t scale_want(float v)
{
	uint8_t e = fx_f32_to_e4m3(fx_bf16_to_f32(fx_f32_to_bf16(v)));
	return e ? e : 0x01;
}

static void test_fp4_scale_exhaustive(void **state)
{
	uint64_t x = 88172645463325252ull;

	(void)state;
	for (uint32_t h = 0; h < 0x7f80u; h++)
		for (int d = -1; d <= 1; d++) {
			uint32_t u = (h << 16) + 0x8000u * (d != 0) + (uint32_t)d;
			float v;

			if (h == 0 && d < 0)
				continue;
			memcpy(&v, &u, 4);
			if (!isfinite(v))
				continue;
			if (fxq_scale_fp4(v) != scale_want(v))
				fail_msg("scale(%a) = 0x%02x, expected 0x%02x", (double)v, fxq_scale_fp4(v),
					 scale_want(v));
		}
	for (int i = 0; i < 1000000; i++) {
		uint32_t u;
		float v;

		x ^= x << 13; x ^= x >> 7; x ^= x << 17;
		u = (uint32_t)x & 0x7fffffffu;
		memcpy(&v, &u, 4);
		if (isfinite(v) && fxq_scale_fp4(v) != scale_want(v))
			fail_msg("scale(%a) = 0x%02x, expected 0x%02x", (double)v, fxq_scale_fp4(v),
				 scale_want(v));
	}
}

static void test_cpu_equals_ref_search(void **state)
{
	(void)state;
	const int64_t m = 24, k = 256;
	float *x = xmalloc((size_t)(m * k) * 4);
	const float shrink[4] = { 1.0f, 0.9f, 0.8f, 0.6f };
	struct fx_qsearch s = { x, m, NULL, 0 };

	for (int64_t i = 0; i < m * k; i++)
		x[i] = gauss() * ((i % k) % 13 == 0 ? 6.0f : 1.0f);
	check_cpu_ref(48, k, true, &s);
	s.shrink = shrink;
	s.nshrink = 4;
	check_cpu_ref(48, k, false, &s);
	free(x);
}

struct qerr { double int4, nvfp4, w4a16, naive; };

static struct qerr measure(bool outliers)
{
	const int64_t n = 256, k = 1024;
	float *w = make_weights(n, k, outliers), *d = xmalloc((size_t)(n * k) * 4), rs[256];
	uint8_t *c = xmalloc(fx_quant_codes_size(n, k)), *f = xmalloc((size_t)(n * k / 16));
	uint16_t *s = xmalloc((size_t)(n * k / 64) * 2), *z = xmalloc((size_t)(n * k / 64) * 2);
	struct fx_err err = { 0 };
	struct qerr q;
	float amax = 0.0f, S;

	assert_int_equal(fx_quant_int4_cpu(c, s, w, n, k, NULL, &err), 0);
	assert_int_equal(fx_dequant_int4_cpu(d, c, s, n, k, &err), 0);
	q.int4 = rel_err(w, d, (size_t)(n * k));
	assert_int_equal(fx_quant_nvfp4_cpu(c, f, rs, w, n, k, NULL, 0, NULL, &err), 0);
	assert_int_equal(fx_dequant_nvfp4_cpu(d, c, f, rs, n, k, &err), 0);
	q.nvfp4 = rel_err(w, d, (size_t)(n * k));
	assert_int_equal(fx_quant_w4a16_cpu(c, s, z, w, n, k, 1, NULL, &err), 0);
	assert_int_equal(fx_dequant_w4a16_cpu(d, c, s, z, n, k, &err), 0);
	q.w4a16 = rel_err(w, d, (size_t)(n * k));
	for (int64_t i = 0; i < n * k; i++)
		amax = fabsf(w[i]) > amax ? fabsf(w[i]) : amax;
	S = amax / 7.0f;
	for (int64_t i = 0; i < n * k; i++) {
		float v = rintf(w[i] / S);
		d[i] = (v < -8.0f ? -8.0f : v > 7.0f ? 7.0f : v) * S;
	}
	q.naive = rel_err(w, d, (size_t)(n * k));
	free(w); free(d); free(c); free(f); free(s); free(z);
	return q;
}

static void test_error_bounds(void **state)
{
	(void)state;
	struct qerr g = measure(false), o = measure(true);

	print_message("# gaussian: int4 %.4f nvfp4 %.4f w4a16 %.4f naive %.4f\n", g.int4, g.nvfp4,
		      g.w4a16, g.naive);
	print_message("# outliers: int4 %.4f nvfp4 %.4f w4a16 %.4f naive %.4f\n", o.int4, o.nvfp4,
		      o.w4a16, o.naive);
	assert_true(g.int4 < 0.12);
	assert_true(g.nvfp4 < 0.11);
	assert_true(g.w4a16 < 0.12);
	assert_true(o.nvfp4 < 0.11);
	assert_true(o.int4 < 0.25);
	assert_true(o.naive > 0.40);
	assert_true(o.nvfp4 < o.int4);
	assert_true(o.int4 < o.naive);
}

/* ||X (W - deq)^T|| / ||X W^T|| */
static double out_err(const float *x, int64_t m, const float *w, const float *d, int64_t n, int64_t k)
{
	double e = 0.0, s = 0.0;
	for (int64_t i = 0; i < m; i++)
		for (int64_t o = 0; o < n; o++) {
			double a = 0.0, b = 0.0;
			for (int64_t kk = 0; kk < k; kk++) {
				a += (double)x[i * k + kk] * w[o * k + kk];
				b += (double)x[i * k + kk] * d[o * k + kk];
			}
			e += (a - b) * (a - b);
			s += a * a;
		}
	return sqrt(e / s);
}

static void test_search_helps(void **state)
{
	(void)state;
	const int64_t n = 64, k = 512, m = 64;
	float *w = make_weights(n, k, false), *x = xmalloc((size_t)(m * k) * 4),
	      *d = xmalloc((size_t)(n * k) * 4), rs[64];
	uint8_t *c = xmalloc(fx_quant_codes_size(n, k)), *f = xmalloc((size_t)(n * k / 16));
	uint16_t *s = xmalloc((size_t)(n * k / 64) * 2);
	struct fx_qsearch se = { x, m, NULL, 0 };
	struct fx_err err = { 0 };
	double e0, e1;

	for (int64_t i = 0; i < m * k; i++)
		x[i] = gauss() * ((i % k) % 17 == 0 ? 5.0f : 1.0f);
	assert_int_equal(fx_quant_int4_cpu(c, s, w, n, k, NULL, &err), 0);
	assert_int_equal(fx_dequant_int4_cpu(d, c, s, n, k, &err), 0);
	e0 = out_err(x, m, w, d, n, k);
	assert_int_equal(fx_quant_int4_cpu(c, s, w, n, k, &se, &err), 0);
	assert_int_equal(fx_dequant_int4_cpu(d, c, s, n, k, &err), 0);
	e1 = out_err(x, m, w, d, n, k);
	print_message("# int4 output error: plain %.4f search %.4f\n", e0, e1);
	assert_true(e1 < e0 * 0.97);
	assert_int_equal(fx_quant_nvfp4_cpu(c, f, rs, w, n, k, NULL, 0, NULL, &err), 0);
	assert_int_equal(fx_dequant_nvfp4_cpu(d, c, f, rs, n, k, &err), 0);
	e0 = out_err(x, m, w, d, n, k);
	assert_int_equal(fx_quant_nvfp4_cpu(c, f, rs, w, n, k, NULL, 0, &se, &err), 0);
	assert_int_equal(fx_dequant_nvfp4_cpu(d, c, f, rs, n, k, &err), 0);
	e1 = out_err(x, m, w, d, n, k);
	print_message("# nvfp4 output error: plain %.4f search %.4f\n", e0, e1);
	assert_true(e1 < e0);
	free(w); free(x); free(d); free(c); free(f); free(s);
}

static void test_bad_args(void **state)
{
	(void)state;
	float w[128] = { 0 }, rs[2];
	uint8_t c[64], f[8];
	uint16_t s[2], z[2];
	struct fx_err err = { 0 };
	struct fx_qsearch bad = { NULL, 4, NULL, 0 };

	assert_int_equal(fx_quant_int4_ref(c, s, w, 1, 100, NULL, &err), FX_E_ARG);
	assert_int_equal(fx_quant_int4_cpu(c, s, w, 1, 100, NULL, &err), FX_E_ARG);
	assert_int_equal(fx_quant_nvfp4_cpu(c, f, rs, w, 1, 24, NULL, 0, NULL, &err), FX_E_ARG);
	assert_int_equal(fx_quant_w4a16_cpu(c, s, z, w, 2, 64, 3, NULL, &err), FX_E_ARG);
	assert_int_equal(fx_quant_int4_cpu(c, s, w, 1, 64, &bad, &err), FX_E_ARG);
	w[70] = NAN;
	assert_int_equal(fx_quant_int4_ref(c, s, w, 2, 64, NULL, &err), FX_E_VALUE);
	assert_non_null(strstr(err.msg, "[1,6]"));
	assert_int_equal(fx_quant_int4_cpu(c, s, w, 2, 64, NULL, &err), FX_E_VALUE);
	assert_non_null(strstr(err.msg, "[1,6]"));
	w[70] = INFINITY;
	assert_int_equal(fx_quant_nvfp4_ref(c, f, rs, w, 2, 64, NULL, 0, NULL, &err), FX_E_VALUE);
	assert_int_equal(fx_quant_nvfp4_cpu(c, f, rs, w, 2, 64, NULL, 0, NULL, &err), FX_E_VALUE);
	assert_int_equal(fx_quant_w4a16_cpu(c, s, z, w, 2, 64, 1, NULL, &err), FX_E_VALUE);
}

/* ---- activation quantization and the runtime reference ---------------- */

static void test_actq(void **state)
{
	(void)state;
	float x[64] = { 0 }, qa[64], sa[4];
	struct fx_err err = { 0 };

	x[0] = 7.0f;
	x[1] = -3.5f;
	x[2] = 2.5f;
	x[3] = -8.0f;   /* |x| max is 8 */
	assert_int_equal(fx_actq_int4_ref(qa, sa, x, 64, false, &err), 0);
	/* s = 8·(1/7) in f32, stored as bf16; qa = rne(x·(1/s)) */
	{
		float s = 8.0f * (1.0f / 7.0f);
		assert_true(sa[0] == fx_bf16_to_f32(fx_f32_to_bf16(s)));
		assert_true(qa[0] == rintf(7.0f * (1.0f / s)));
		assert_true(qa[3] == -7.0f);
		assert_true(qa[1] == rintf(-3.5f * (1.0f / s)));
	}
	for (int i = 0; i < 64; i++)
		x[i] = (float)i * 0.25f;                  /* max 15.75 */
	assert_int_equal(fx_actq_int4_ref(qa, sa, x, 64, true, &err), 0);
	assert_true(sa[0] == fx_bf16_to_f32(fx_f32_to_bf16(15.75f * (1.0f / 15.0f))));
	assert_true(qa[63] == 15.0f);
	assert_true(qa[0] == 0.0f);
	for (int i = 0; i < 64; i++)
		assert_true(qa[i] >= 0.0f && qa[i] <= 15.0f);

	/* nvfp4: group max 6 -> s = 1, e4m3 1; ties to even */
	memset(x, 0, sizeof(x));
	x[0] = 6.0f;
	x[1] = 2.5f;
	x[2] = -1.75f;
	x[3] = 0.75f;
	x[16] = 6000.0f;                              /* s clamps to 448 */
	x[17] = 4480.0f;
	assert_int_equal(fx_actq_nvfp4_ref(qa, sa, x, 64, &err), 0);
	assert_true(sa[0] == 1.0f);
	assert_true(qa[0] == 6.0f && qa[1] == 2.0f && qa[2] == -2.0f && qa[3] == 1.0f);
	assert_true(sa[1] == 448.0f);
	assert_true(qa[16] == 6.0f && qa[17] == 6.0f);   /* 13.4 and 10 saturate */
	assert_true(sa[2] == 0.0f && qa[32] == 0.0f);
}

/* A tiny INT4 module computed by hand. */
static void test_runtime_hand(void **state)
{
	(void)state;
	const int64_t n = 2, k = 64, r = 16;
	uint8_t codes[2 * 32];
	uint16_t ws[2] = { 0x3f00, 0x3f80 };           /* 0.5, 1.0 */
	float x[64], ld[64 * 16] = { 0 }, lu[2 * 16] = { 0 }, bias[2] = { 1.0f, -2.0f }, y[2];
	struct fx_rt_w4a4 mod = { 0 };
	struct fx_err err = { 0 };

	memset(codes, 0x11, 32);                       /* row 0: q = 1 */
	memset(codes + 32, 0xff, 32);                  /* row 1: q = -1 */
	for (int i = 0; i < 64; i++) {
		x[i] = 7.0f;
		ld[i * 16 + 0] = 1.0f / 64.0f;          /* a[0] = 7 */
	}
	lu[0 * 16 + 0] = 1.0f;
	lu[1 * 16 + 0] = 2.0f;
	mod.prec = FX_QPREC_INT4;
	mod.n = n;
	mod.k = k;
	mod.r = r;
	mod.codes = codes;
	mod.wscales = ws;
	mod.lora_down = ld;
	mod.lora_up = lu;
	mod.bias = bias;
	/* sa = bf16(7/7) = 1, qa = 7: row 0 = 0.5·448 + 1 + 7, row 1 = -448 - 2 + 14 */
	assert_int_equal(fx_rt_w4a4_forward_ref(y, &mod, x, 1, 0, &err), 0);
	assert_true(y[0] == 232.0f);
	assert_true(y[1] == -436.0f);
	/* the smooth divides the quantized path only: s = 2 halves it */
	{
		float sm[64];
		for (int i = 0; i < 64; i++)
			sm[i] = 2.0f;
		mod.smooth = sm;
		assert_int_equal(fx_rt_w4a4_forward_ref(y, &mod, x, 1, 0, &err), 0);
		assert_true(y[0] == 112.0f + 8.0f);
		assert_true(y[1] == -224.0f - 2.0f + 14.0f);
		mod.smooth = NULL;
	}
	mod.fc2_shift = true;
	mod.prec = FX_QPREC_NVFP4;
	assert_int_equal(fx_rt_w4a4_forward_ref(y, &mod, x, 1, 0, &err), FX_E_ARG);
}

/* Quantize a residual, build the module, compare with W_eff. */
static void test_runtime_vs_weff(void **state)
{
	(void)state;
	const int64_t n = 64, k = 256, r = 16, m = 8;
	float *w = make_weights(n, k, false), *x = xmalloc((size_t)(m * k) * 4);
	float *res = xmalloc((size_t)(n * k) * 4), *rdq = xmalloc((size_t)(n * k) * 4);
	float *weff = xmalloc((size_t)(n * k) * 4), *weff2 = xmalloc((size_t)(n * k) * 4);
	float *y = xmalloc((size_t)(m * n) * 4), *yq = xmalloc((size_t)(m * n) * 4);
	float sm[256], a[16 * 256], ld[256 * 16], lu[64 * 16], b[64], bst[64], cterm[64], rs[64], wcs[64];
	uint8_t *codes = xmalloc(fx_quant_codes_size(n, k)), *f = xmalloc((size_t)(n * k / 16));
	uint16_t *s = xmalloc((size_t)(n * k / 64) * 2);
	struct fx_rt_w4a4 mod = { 0 };
	struct fx_err err = { 0 };

	for (int64_t kk = 0; kk < k; kk++)
		sm[kk] = 0.5f + (float)(kk % 7) * 0.25f;
	for (int64_t i = 0; i < r * k; i++)
		a[i] = gauss() * 0.3f;
	for (int64_t i = 0; i < n * r; i++)
		lu[i] = gauss() * 0.3f;
	for (int64_t o = 0; o < n; o++)
		b[o] = gauss();
	for (int64_t j = 0; j < r; j++)
		for (int64_t kk = 0; kk < k; kk++)
			ld[kk * r + j] = a[j * k + kk] / sm[kk];
	/* residual of the smoothed weight: R = W·diag(s) - up·down */
	for (int64_t o = 0; o < n; o++)
		for (int64_t kk = 0; kk < k; kk++) {
			double acc = (double)w[o * k + kk] * sm[kk];
			for (int64_t j = 0; j < r; j++)
				acc -= (double)lu[o * r + j] * a[j * k + kk];
			res[o * k + kk] = (float)acc;
		}
	for (int64_t i = 0; i < m * k; i++)
		x[i] = fabsf(gauss()) + 0.05f;

	/* 0 int4, 1 nvfp4 with wtscale, 2 int4 *_fc2, 3 nvfp4 fused (wcscales) */
	for (int prec = 0; prec < 4; prec++) {
		bool fp4 = prec == 1 || prec == 3, fc2 = prec == 2;
		const int64_t members[3] = { 16, 16, 32 };
		mod = (struct fx_rt_w4a4){ 0 };
		mod.n = n;
		mod.k = k;
		mod.r = r;
		mod.codes = codes;
		mod.smooth = sm;
		mod.lora_down = ld;
		mod.lora_up = lu;
		mod.bias = b;
		if (fp4) {
			assert_int_equal(fx_quant_nvfp4_cpu(codes, f, rs, res, n, k, prec == 3 ? members : NULL,
							    prec == 3 ? 3 : 0, NULL, &err), 0);
			assert_int_equal(fx_dequant_nvfp4_cpu(rdq, codes, f, rs, n, k, &err), 0);
			mod.prec = FX_QPREC_NVFP4;
			mod.wscales = f;
			if (prec == 3) {
				/* fused: per-member T through wcscales (bf16-exact by construction) */
				for (int64_t o = 0; o < n; o++) {
					wcs[o] = fx_bf16_to_f32(fx_f32_to_bf16(rs[o]));
					assert_true(wcs[o] == rs[o]);
				}
				mod.wcscales = wcs;
			} else {
				mod.wtscale = rs[0];
			}
		} else {
			assert_int_equal(fx_quant_int4_cpu(codes, s, res, n, k, NULL, &err), 0);
			assert_int_equal(fx_dequant_int4_cpu(rdq, codes, s, n, k, &err), 0);
			mod.prec = FX_QPREC_INT4;
			mod.wscales = s;
		}
		if (fc2) {
			mod.fc2_shift = true;
			assert_int_equal(fx_rt_fc2_bias(bst, b, rdq, sm, n, k, FX_RT_FC2_SHIFT, &err), 0);
			mod.bias = bst;
		}
		/* W_eff by the library and by hand agree */
		assert_int_equal(fx_rt_w4a4_effective(weff, cterm, &mod, &err), 0);
		for (int64_t o = 0; o < n; o++) {
			for (int64_t kk = 0; kk < k; kk++) {
				double v = (double)rdq[o * k + kk] / sm[kk];
				for (int64_t j = 0; j < r; j++)
					v += (double)lu[o * r + j] * ld[kk * r + j];
				weff2[o * k + kk] = (float)v;
			}
			/* the fc2 correction cancels the shift: constant term back to b */
			assert_true(fabsf(cterm[o] - b[o]) <= 1e-4f * (1.0f + fabsf(b[o])));
		}
		assert_true(rel_err(weff2, weff, (size_t)(n * k)) < 1e-6);
		/* W_eff - W is the quantization error of the residual, divided by s */
		{
			double e = 0.0, nw = 0.0, eq = 0.0;
			for (int64_t o = 0; o < n; o++)
				for (int64_t kk = 0; kk < k; kk++) {
					size_t i = (size_t)(o * k + kk);
					double dq = ((double)rdq[i] - res[i]) / sm[kk];
					double d = (double)weff[i] - w[i] - dq;
					e += d * d;
					eq += dq * dq;
					nw += (double)w[i] * w[i];
				}
			print_message("# runtime prec %d: |W_eff - W| / |W| = %.4f\n", prec, sqrt(eq / nw));
			assert_true(sqrt(e / nw) < 1e-5);
			assert_true(sqrt(eq / nw) < 0.25);
		}

		/* forward without activation quantization, in f32 == x·W_eff^T + b */
		assert_int_equal(fx_rt_w4a4_forward_ref(y, &mod, x, m, FX_RT_NO_ACTQ | FX_RT_F32, &err), 0);
		for (int64_t i = 0; i < m; i++)
			for (int64_t o = 0; o < n; o++) {
				double e = b[o];
				for (int64_t kk = 0; kk < k; kk++)
					e += (double)x[i * k + kk] * weff[o * k + kk];
				if (fabs(y[i * n + o] - e) > 1e-3 * (1.0 + fabs(e)))
					fail_msg("prec %d row %lld col %lld: %g vs %g", prec, (long long)i,
						 (long long)o, (double)y[i * n + o], e);
			}
		/* with activation quantization and bf16 roundings: equal to fake-quantized
		 * activations times Rdq (up to bf16 rounding), near the f32 result */
		assert_int_equal(fx_rt_w4a4_forward_ref(yq, &mod, x, m, 0, &err), 0);
		for (int64_t i = 0; i < m; i++) {
			float xp[256], qa[256], sa[16], xf[256];
			const int64_t grp = fp4 ? 16 : 64;
			for (int64_t kk = 0; kk < k; kk++) {
				float v = fx_bf16_to_f32(fx_f32_to_bf16(x[i * k + kk]));
				if (fc2)
					v = fx_bf16_to_f32(fx_f32_to_bf16(v + FX_RT_FC2_SHIFT));
				xp[kk] = fx_bf16_to_f32(fx_f32_to_bf16(v / sm[kk]));
			}
			if (fp4)
				assert_int_equal(fx_actq_nvfp4_ref(qa, sa, xp, k, &err), 0);
			else
				assert_int_equal(fx_actq_int4_ref(qa, sa, xp, k, fc2, &err), 0);
			for (int64_t kk = 0; kk < k; kk++)
				xf[kk] = qa[kk] * sa[kk / grp];
			for (int64_t o = 0; o < n; o++) {
				double e = mod.bias[o], mag = fabs(mod.bias[o]);
				for (int64_t kk = 0; kk < k; kk++) {
					double xb = fx_bf16_to_f32(fx_f32_to_bf16(x[i * k + kk]));
					e += (double)xf[kk] * rdq[o * k + kk];
					mag += fabs((double)xf[kk] * rdq[o * k + kk]);
					for (int64_t j = 0; j < r; j++)
						e += xb * ld[kk * r + j] * lu[o * r + j];
				}
				/* the GEMM result and the output are rounded to bf16 */
				if (fabs(yq[i * n + o] - e) > 0.005 * (mag + fabs(e)) + 1e-3)
					fail_msg("prec %d row %lld col %lld: %g vs fake-quant %g", prec,
						 (long long)i, (long long)o, (double)yq[i * n + o], e);
			}
		}
		{
			double e = rel_err(y, yq, (size_t)(m * n));
			print_message("# runtime prec %d: activation quantization error %.4f\n", prec, e);
			assert_true(e < (fp4 ? 0.15 : 0.3));
		}
	}
	free(w); free(x); free(res); free(rdq); free(weff); free(weff2); free(y); free(yq);
	free(codes); free(f); free(s);
}

static void test_runtime_w4a16(void **state)
{
	(void)state;
	const int64_t D = 4, S = 6, n = D * S, k = 64, m = 3;
	float *w = make_weights(n, k, false), x[3 * 64], b[24], y[3 * 24], deq[24 * 64];
	uint8_t codes[24 * 32];
	uint16_t sc[24], ze[24], bb[24];
	float bf[24];
	struct fx_err err = { 0 };

	for (int i = 0; i < m * k; i++)
		x[i] = gauss();
	for (int i = 0; i < n; i++)
		b[i] = gauss();
	assert_int_equal(fx_quant_w4a16_cpu(codes, sc, ze, w, n, k, (int)S, NULL, &err), 0);
	assert_int_equal(fx_quant_adaln_bias(bb, b, n, (int)S, &err), 0);
	for (int i = 0; i < n; i++)
		bf[i] = fx_bf16_to_f32(bb[i]);
	assert_int_equal(fx_rt_w4a16_forward_ref(y, codes, sc, ze, bf, n, k, x, m, &err), 0);
	assert_int_equal(fx_dequant_w4a16_cpu(deq, codes, sc, ze, n, k, &err), 0);
	/* de-interleaved output chunk j channel i = y[i*S + j] ~ original row j*D+i
	 * plus the +1 on the scale chunks */
	for (int64_t t = 0; t < m; t++)
		for (int64_t j = 0; j < S; j++)
			for (int64_t i = 0; i < D; i++) {
				double ref = b[j * D + i] + ((j == 1 || j == S - 2) ? 1.0 : 0.0), got;
				double bound = 0.0;
				for (int64_t kk = 0; kk < k; kk++) {
					ref += (double)x[t * k + kk] * w[(j * D + i) * k + kk];
					bound += fabs(x[t * k + kk]) * fabs(w[(j * D + i) * k + kk] -
									     deq[(i * S + j) * k + kk]);
				}
				got = y[t * n + i * S + j];
				assert_true(fabs(got - ref) <= bound + 0.02 * (1.0 + fabs(ref)));
			}
	free(w);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_golden_e4m3),
		cmocka_unit_test(test_golden_bf16),
		cmocka_unit_test(test_golden_tables),
		cmocka_unit_test(test_e4m3_props),
		cmocka_unit_test(test_bf16_props),
		cmocka_unit_test(test_f16_props),
		cmocka_unit_test(test_e2m1_rounding),
		cmocka_unit_test(test_int4_hand),
		cmocka_unit_test(test_nvfp4_hand),
		cmocka_unit_test(test_nvfp4_members),
		cmocka_unit_test(test_w4a16_interleave),
		cmocka_unit_test(test_cpu_equals_ref),
		cmocka_unit_test(test_cpu_equals_ref_range),
		cmocka_unit_test(test_fp4_scale_exhaustive),
		cmocka_unit_test(test_cpu_equals_ref_search),
		cmocka_unit_test(test_error_bounds),
		cmocka_unit_test(test_search_helps),
		cmocka_unit_test(test_bad_args),
		cmocka_unit_test(test_actq),
		cmocka_unit_test(test_runtime_hand),
		cmocka_unit_test(test_runtime_vs_weff),
		cmocka_unit_test(test_runtime_w4a16),
	};
	return cmocka_run_group_tests_name("quant", tests, NULL, NULL);
}
