/* The forward's CPU kernels give the same bytes whichever target clone the
 * CPU selects (AVX-512, AVX2 or baseline): fx-calib output must not depend
 * on the machine. The Makefile links a second copy of kernels/cpu/ops.c built
 * with FX_NO_CLONES, its symbols renamed plain_*; this test compares the two
 * on the same inputs. (Under SANITIZE=1 both copies are baseline.) */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fx-err.h"
#include "fx-ops.h"

extern __typeof__(fx_ops_attention) plain_fx_ops_attention;
extern __typeof__(fx_ops_gelu_tanh) plain_fx_ops_gelu_tanh;
extern __typeof__(fx_ops_silu) plain_fx_ops_silu;
extern __typeof__(fx_ops_gemv_bf16) plain_fx_ops_gemv_bf16;

/* deterministic values in [-a, a), with exact zeros, tiny and large ones */
static void fill(float *x, size_t n, float a, uint32_t seed)
{
	uint32_t s = seed * 2654435761u + 1;

	for (size_t i = 0; i < n; i++) {
		s = s * 1664525u + 1013904223u;
		x[i] = ((float)(s >> 8) / 16777216.0f * 2.0f - 1.0f) * a;
		if (i % 97 == 0)
			x[i] = 0.0f;
		else if (i % 89 == 0)
			x[i] *= 1e-30f;
		else if (i % 83 == 0)
			x[i] *= 40.0f;
	}
}

static void check_same(const float *a, const float *b, size_t n, const char *what)
{
	for (size_t i = 0; i < n; i++)
		if (memcmp(&a[i], &b[i], sizeof(float)) != 0)
			fail_msg("%s: element %zu differs: clone %.9g, baseline %.9g", what, i, a[i],
				 b[i]);
}

static void test_attention(void **state)
{
	/* odd sizes: tails after the 16-lane loops, more than one query block */
	const int64_t ns[] = { 1, 17, 300, 1301 };
	const int heads = 3, hd = 128;
	const int64_t ld = 3 * heads * hd;

	(void)state;
	for (size_t t = 0; t < sizeof ns / sizeof ns[0]; t++) {
		int64_t n = ns[t];
		float *qkv = malloc((size_t)(n * ld) * sizeof(float));
		float *o1 = malloc((size_t)(n * heads * hd) * sizeof(float));
		float *o2 = malloc((size_t)(n * heads * hd) * sizeof(float));
		struct fx_err err;

		assert_non_null(qkv);
		assert_non_null(o1);
		assert_non_null(o2);
		fill(qkv, (size_t)(n * ld), 6.0f, (uint32_t)n);
		assert_int_equal(fx_ops_attention(o1, heads * hd, qkv, qkv + heads * hd,
						  qkv + 2 * heads * hd, ld, n, heads, hd, NULL, &err), 0);
		assert_int_equal(plain_fx_ops_attention(o2, heads * hd, qkv, qkv + heads * hd,
							qkv + 2 * heads * hd, ld, n, heads, hd, NULL,
							&err), 0);
		check_same(o1, o2, (size_t)(n * heads * hd), "attention");
		free(qkv);
		free(o1);
		free(o2);
	}
}

static void test_elementwise(void **state)
{
	const size_t n = 200003;   /* several spans and a tail */
	float *x = malloc(n * sizeof(float)), *a = malloc(n * sizeof(float));
	float *b = malloc(n * sizeof(float));

	(void)state;
	assert_non_null(x);
	assert_non_null(a);
	assert_non_null(b);
	fill(x, n, 12.0f, 7);
	memcpy(a, x, n * sizeof(float));
	memcpy(b, x, n * sizeof(float));
	fx_ops_gelu_tanh(a, n);
	plain_fx_ops_gelu_tanh(b, n);
	check_same(a, b, n, "gelu_tanh");
	fx_ops_silu(a, x, n);
	plain_fx_ops_silu(b, x, n);
	check_same(a, b, n, "silu");
	free(x);
	free(a);
	free(b);
}

static void test_gemv_bf16(void **state)
{
	const int64_t n = 333, k = 3077;
	float *x = malloc((size_t)k * sizeof(float)), *wf = malloc((size_t)(n * k) * sizeof(float));
	uint16_t *w = malloc((size_t)(n * k) * sizeof(uint16_t));
	float *bias = malloc((size_t)n * sizeof(float));
	float *y1 = malloc((size_t)n * sizeof(float)), *y2 = malloc((size_t)n * sizeof(float));

	(void)state;
	assert_non_null(x && wf && w && bias && y1 && y2);
	fill(x, (size_t)k, 3.0f, 11);
	fill(wf, (size_t)(n * k), 0.05f, 12);
	fill(bias, (size_t)n, 0.5f, 13);
	for (int64_t i = 0; i < n * k; i++) {
		uint32_t u;

		memcpy(&u, &wf[i], 4);
		w[i] = (uint16_t)(u >> 16);
	}
	assert_true(fx_ops_gemv_bf16(y1, x, w, k, bias, n, k));
	assert_true(plain_fx_ops_gemv_bf16(y2, x, w, k, bias, n, k));
	check_same(y1, y2, (size_t)n, "gemv_bf16");
	w[5 * k + 17] = 0x7fc0;   /* NaN: both refuse */
	assert_false(fx_ops_gemv_bf16(y1, x, w, k, bias, n, k));
	assert_false(plain_fx_ops_gemv_bf16(y2, x, w, k, bias, n, k));
	free(x);
	free(wf);
	free(w);
	free(bias);
	free(y1);
	free(y2);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_attention),
		cmocka_unit_test(test_elementwise),
		cmocka_unit_test(test_gemv_bf16),
	};

	return cmocka_run_group_tests_name("clones", tests, NULL, NULL);
}
