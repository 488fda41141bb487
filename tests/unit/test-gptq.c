/* Unit tests of the GPTQ sweep (kernels/cpu/gptq.c): a diagonal Hessian
 * gives the RTN quantizers' codes exactly; a correlated one lowers the
 * output error well below RTN's; the codes do not depend on threads or on
 * splits of the rows at panel boundaries (FX_GPTQ_PANEL), at a width where
 * the factorization and the sweep are cut into several tiles and panels;
 * dead columns come out zero; an independent numpy implementation
 * (tests/fixtures/gen_gptq_ref.py) and an f64 sweep through H⁻¹'s factor on
 * a rank-deficient H agree within budgets (the f32 factorization's cost).
 * No test assumes bytes of a particular OpenBLAS kernel. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lapacke.h>

#include "fx-err.h"
#include "fx-gptq.h"
#include "fx-quant.h"
#include "fx-st.h"
#include "fx-tensor.h"

#define N 48
#define K 256
#define M 512

static uint64_t rng_state;

static double gauss(void)
{
	/* splitmix64 + Box-Muller: reproducible on every machine */
	double u[2];

	for (int i = 0; i < 2; i++) {
		uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);

		z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
		z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
		z ^= z >> 31;
		u[i] = ((double)(z >> 11) + 0.5) / 9007199254740992.0;
	}
	return sqrt(-2.0 * log(u[0])) * cos(2.0 * M_PI * u[1]);
}

/* Inputs with correlated columns (a few shared factors) and some columns
 * much louder than others, as activations are. */
static void make_x(float *x, int64_t m, int64_t k)
{
	double f[8];

	for (int64_t r = 0; r < m; r++) {
		for (int i = 0; i < 8; i++)
			f[i] = gauss();
		for (int64_t c = 0; c < k; c++)
			x[r * k + c] = (float)((gauss() * 0.3 + f[c % 8] + 0.5 * f[(c / 8) % 8]) *
					       (c % 17 == 0 ? 6.0 : 1.0));
	}
}

static void make_h(double *h, const float *x, int64_t m, int64_t k)
{
	memset(h, 0, (size_t)k * k * sizeof(double));
	for (int64_t r = 0; r < m; r++)
		for (int64_t a = 0; a < k; a++)
			for (int64_t b = a; b < k; b++)
				h[a * k + b] += (double)x[r * k + a] * x[r * k + b];
	for (int64_t a = 0; a < k; a++)
		for (int64_t b = 0; b < a; b++)
			h[a * k + b] = h[b * k + a];
}

/* RTN codes and the decoded scales GPTQ keeps fixed. */
static void rtn(enum fx_qprec p, const float *w, uint8_t *codes, float *gs, float *gz, float *rt)
{
	struct fx_err err = { 0 };
	int64_t ng;

	if (p == FX_QPREC_NVFP4) {
		uint8_t sc[N * K / 16];

		ng = K / 16;
		assert_int_equal(fx_quant_nvfp4_cpu(codes, sc, rt, w, N, K, NULL, 0, NULL, &err), 0);
		for (int64_t i = 0; i < N * ng; i++)
			gs[i] = fx_e4m3_to_f32(sc[i]);
	} else if (p == FX_QPREC_INT4) {
		uint16_t sc[N * K / 64];

		ng = K / 64;
		assert_int_equal(fx_quant_int4_cpu(codes, sc, w, N, K, NULL, &err), 0);
		for (int64_t i = 0; i < N * ng; i++)
			gs[i] = fx_bf16_to_f32(sc[i]);
	} else {
		uint16_t sc[N * K / 64], z[N * K / 64];

		ng = K / 64;
		assert_int_equal(fx_quant_w4a16_cpu(codes, sc, z, w, N, K, 1, NULL, &err), 0);
		for (int64_t i = 0; i < N * ng; i++) {
			gs[i] = fx_bf16_to_f32(sc[i]);
			gz[i] = fx_bf16_to_f32(z[i]);
		}
	}
}

static float deq(enum fx_qprec p, uint8_t byte, int hi, float s, float z, float t)
{
	unsigned c = hi ? byte >> 4 : byte & 15u;

	if (p == FX_QPREC_NVFP4)
		return (fx_e2m1_value(c) * s) * t;
	if (p == FX_QPREC_W4A16)
		return (float)c * s + z;
	return (float)((int)(c ^ 8u) - 8) * s;
}

/* e H eᵀ summed over rows: the layer's output error on the inputs of H. */
static double out_err(enum fx_qprec p, const float *w, const uint8_t *codes, const float *gs,
		      const float *gz, const float *rt, const double *h)
{
	int64_t G = p == FX_QPREC_NVFP4 ? 16 : 64, ng = K / G;
	double *e = malloc(K * sizeof(double)), tot = 0.0;

	for (int64_t r = 0; r < N; r++) {
		for (int64_t c = 0; c < K; c++)
			e[c] = w[r * K + c] - deq(p, codes[r * (K / 2) + c / 2], (int)(c & 1),
						  gs[r * ng + c / G], gz ? gz[r * ng + c / G] : 0.0f,
						  rt ? rt[r] : 1.0f);
		for (int64_t a = 0; a < K; a++)
			for (int64_t b = 0; b < K; b++)
				tot += e[a] * h[a * K + b] * e[b];
	}
	free(e);
	return tot;
}

static const enum fx_qprec precs[] = { FX_QPREC_INT4, FX_QPREC_NVFP4, FX_QPREC_W4A16 };

static void test_diagonal_is_rtn(void **state)
{
	float *w = malloc(N * K * sizeof(float)), *ws = malloc(N * K * sizeof(float));
	double *h = calloc(K * K, sizeof(double));
	float gs[N * K / 16], gz[N * K / 64], rt[N];
	uint8_t c_rtn[N * K / 2], c_gptq[N * K / 2];
	struct fx_gptq *g = NULL;
	struct fx_err err = { 0 };

	(void)state;
	rng_state = 11;
	for (int64_t i = 0; i < N * K; i++)
		w[i] = (float)gauss();
	for (int64_t i = 0; i < K; i++)
		h[i * K + i] = 0.5 + (double)(i % 7);
	assert_int_equal(fx_gptq_new(&g, h, K, FX_GPTQ_DAMP, FX_GPTQ_BLOCK, &err), 0);
	for (size_t p = 0; p < sizeof(precs) / sizeof(precs[0]); p++) {
		rtn(precs[p], w, c_rtn, gs, gz, rt);
		memcpy(ws, w, N * K * sizeof(float));
		assert_int_equal(fx_gptq_rows(g, precs[p], ws, N, gs, gz, rt, c_gptq, &err), 0);
		assert_memory_equal(c_rtn, c_gptq, sizeof(c_rtn));
	}
	fx_gptq_free(g);
	free(w);
	free(ws);
	free(h);
}

static void test_beats_rtn_any_threads(void **state)
{
	float *w = malloc(N * K * sizeof(float)), *ws = malloc(N * K * sizeof(float));
	float *x = malloc(M * K * sizeof(float));
	double *h = malloc(K * K * sizeof(double));
	float gs[N * K / 16], gz[N * K / 64], rt[N];
	uint8_t c_rtn[N * K / 2], c1[N * K / 2], c2[N * K / 2];
	struct fx_gptq *g = NULL;
	struct fx_err err = { 0 };

	(void)state;
	rng_state = 5;
	for (int64_t i = 0; i < N * K; i++)
		w[i] = (float)gauss() * 0.05f;
	make_x(x, M, K);
	make_h(h, x, M, K);
	assert_int_equal(fx_gptq_new(&g, h, K, FX_GPTQ_DAMP, FX_GPTQ_BLOCK, &err), 0);
	assert_int_equal(fx_gptq_dead(g), 0);
	for (size_t p = 0; p < sizeof(precs) / sizeof(precs[0]); p++) {
		const float *z = precs[p] == FX_QPREC_W4A16 ? gz : NULL;
		const float *t = precs[p] == FX_QPREC_NVFP4 ? rt : NULL;
		double e_rtn, e_gptq;

		rtn(precs[p], w, c_rtn, gs, gz, rt);
		omp_set_num_threads(1);
		memcpy(ws, w, N * K * sizeof(float));
		assert_int_equal(fx_gptq_rows(g, precs[p], ws, N, gs, z, t, c1, &err), 0);
		e_rtn = out_err(precs[p], w, c_rtn, gs, z, t, h);
		e_gptq = out_err(precs[p], w, c1, gs, z, t, h);
		printf("# precision %d: output error RTN %.4g, GPTQ %.4g (%.2f)\n", (int)precs[p],
		       e_rtn, e_gptq, e_gptq / e_rtn);
		assert_true(e_gptq < 0.7 * e_rtn);
		/* two threads (splits: test_threads_and_panels) */
		omp_set_num_threads(2);
		memcpy(ws, w, N * K * sizeof(float));
		assert_int_equal(fx_gptq_rows(g, precs[p], ws, N, gs, z, t, c2, &err), 0);
		assert_memory_equal(c1, c2, sizeof(c1));
	}
	fx_gptq_free(g);
	free(w);
	free(ws);
	free(x);
	free(h);
}

static void test_dead_columns_and_damping(void **state)
{
	float *w = malloc(N * K * sizeof(float)), *x = malloc(M * K * sizeof(float));
	double *h = malloc(K * K * sizeof(double));
	float gs[N * K / 16], gz[N * K / 64], rt[N];
	uint8_t c[N * K / 2];
	struct fx_gptq *g = NULL;
	struct fx_err err = { 0 };

	(void)state;
	rng_state = 9;
	for (int64_t i = 0; i < N * K; i++)
		w[i] = (float)gauss();
	make_x(x, M, K);
	/* columns 3 and 100 never active */
	for (int64_t r = 0; r < M; r++)
		x[r * K + 3] = x[r * K + 100] = 0.0f;
	make_h(h, x, M, K);
	assert_int_equal(fx_gptq_new(&g, h, K, FX_GPTQ_DAMP, FX_GPTQ_BLOCK, &err), 0);
	assert_int_equal(fx_gptq_dead(g), 2);
	rtn(FX_QPREC_INT4, w, c, gs, gz, rt);
	assert_int_equal(fx_gptq_rows(g, FX_QPREC_INT4, w, N, gs, NULL, NULL, c, &err), 0);
	for (int64_t r = 0; r < N; r++) {
		assert_int_equal(c[r * (K / 2) + 1] >> 4, 0);       /* column 3 */
		assert_int_equal(c[r * (K / 2) + 50] & 15, 0);      /* column 100 */
	}
	fx_gptq_free(g);
	/* a rank-deficient H (fewer rows than columns) needs more damping */
	make_h(h, x, 16, K);
	for (int64_t i = 0; i < K; i++)
		h[i * K + i] *= 1.0 - 1e-9;
	assert_int_equal(fx_gptq_new(&g, h, K, 1e-12, FX_GPTQ_BLOCK, &err), 0);
	assert_true(fx_gptq_damp_used(g) > 1e-12);
	fx_gptq_free(g);
	/* a negative diagonal is refused */
	h[5 * K + 5] = -1.0;
	assert_int_equal(fx_gptq_new(&g, h, K, FX_GPTQ_DAMP, FX_GPTQ_BLOCK, &err), FX_E_VALUE);
	assert_non_null(strstr(err.msg, "diagonal 5"));
	free(w);
	free(x);
	free(h);
}

/* The numpy implementation of tests/fixtures/gen_gptq_ref.py on its own
 * inputs: most codes equal, the same output error within 1%. */
static void test_numpy_reference(void **state)
{
	const char *dir = getenv("FX_TESTS_SRC");
	char path[PATH_MAX];
	struct fx_st *st = NULL;
	struct fx_err err = { 0 };
	const struct fx_tensor *tw, *th, *ts, *tc;
	struct fx_gptq *g = NULL;
	int64_t n, k, same = 0;
	float *w, *ws;
	uint8_t *c;
	double *h, e_ref, e_c;

	(void)state;
	assert_non_null(dir);
	snprintf(path, sizeof(path), "%s/fixtures/gptq-ref.safetensors", dir);
	assert_int_equal(fx_st_open(&st, path, &err), 0);
	tw = fx_st_find(st, "w");
	th = fx_st_find(st, "h");
	ts = fx_st_find(st, "scales");
	tc = fx_st_find(st, "codes");
	assert_true(tw && th && ts && tc);
	n = tw->shape[0];
	k = tw->shape[1];
	w = malloc((size_t)(n * k) * sizeof(float));
	ws = malloc((size_t)(n * k) * sizeof(float));
	h = malloc((size_t)(k * k) * sizeof(double));
	c = malloc((size_t)(n * k / 2));
	memcpy(w, tw->data, (size_t)(n * k) * sizeof(float));
	memcpy(ws, w, (size_t)(n * k) * sizeof(float));
	memcpy(h, th->data, (size_t)(k * k) * sizeof(double));
	assert_int_equal(fx_gptq_new(&g, h, k, FX_GPTQ_DAMP, FX_GPTQ_BLOCK, &err), 0);
	assert_int_equal(fx_gptq_rows(g, FX_QPREC_INT4, ws, n, ts->data, NULL, NULL, c, &err), 0);
	e_ref = e_c = 0.0;
	for (int64_t r = 0; r < n; r++) {
		double *er = calloc((size_t)k, sizeof(double)), *ec = calloc((size_t)k, sizeof(double));

		for (int64_t i = 0; i < k; i++) {
			int qr = ((const int8_t *)tc->data)[r * k + i];
			int qc = (int)(((c[r * (k / 2) + i / 2] >> (4 * (i & 1))) & 15u) ^ 8u) - 8;
			float s = ((const float *)ts->data)[r * (k / 64) + i / 64];

			same += qr == qc;
			er[i] = w[r * k + i] - qr * s;
			ec[i] = w[r * k + i] - qc * s;
		}
		for (int64_t a = 0; a < k; a++)
			for (int64_t b = 0; b < k; b++) {
				e_ref += er[a] * h[a * k + b] * er[b];
				e_c += ec[a] * h[a * k + b] * ec[b];
			}
		free(er);
		free(ec);
	}
	printf("# numpy reference: %.2f%% codes equal, output error %.6g (numpy %.6g)\n",
	       100.0 * (double)same / (double)(n * k), e_c, e_ref);
	assert_true((double)same >= 0.97 * (double)(n * k));
	assert_true(fabs(e_c - e_ref) <= 0.01 * e_ref);
	fx_gptq_free(g);
	fx_st_close(st);
	free(w);
	free(ws);
	free(h);
	free(c);
}

/* Classic GPTQ in f64, independent of kernels/cpu/gptq.c: U = the upper
 * Cholesky factor of (H in visiting order, damped)⁻¹ by dpotrf, dpotri and
 * dpotrf, then each row on its own, column by column, with fixed INT4
 * scales gs (n,k/64). Codes (n,k) as signed values. */
static void ref_gptq_f64(const double *h, int64_t k, const float *w, int64_t n, const float *gs,
			 int8_t *q)
{
	double *hv = malloc((size_t)(k * k) * sizeof(double)), *wr = malloc((size_t)k * sizeof(double));
	int64_t *perm = malloc((size_t)k * sizeof(int64_t));
	double mean = 0.0;

	for (int64_t i = 0; i < k; i++) {
		perm[i] = i;
		mean += h[i * k + i];
	}
	mean /= (double)k;
	for (int64_t i = 1; i < k; i++)   /* stable insertion sort, decreasing H_ii */
		for (int64_t j = i; j > 0 && h[perm[j - 1] * k + perm[j - 1]] < h[perm[j] * k + perm[j]]; j--) {
			int64_t t = perm[j];

			perm[j] = perm[j - 1];
			perm[j - 1] = t;
		}
	for (int64_t a = 0; a < k; a++)
		for (int64_t b = 0; b < k; b++)
			hv[a * k + b] = h[perm[a] * k + perm[b]] + (a == b ? 0.01 * mean : 0.0);
	assert_int_equal(LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', (lapack_int)k, hv, (lapack_int)k), 0);
	assert_int_equal(LAPACKE_dpotri(LAPACK_ROW_MAJOR, 'U', (lapack_int)k, hv, (lapack_int)k), 0);
	assert_int_equal(LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'U', (lapack_int)k, hv, (lapack_int)k), 0);
	for (int64_t r = 0; r < n; r++) {
		for (int64_t i = 0; i < k; i++)
			wr[i] = w[r * k + perm[i]];
		for (int64_t i = 0; i < k; i++) {
			int64_t c = perm[i];
			float s = gs[r * (k / 64) + c / 64];
			double v = rint((double)((float)wr[i] / s)), e;

			v = v < -8.0 ? -8.0 : v > 7.0 ? 7.0 : v;
			q[r * k + c] = (int8_t)v;
			e = (wr[i] - v * s) / hv[i * k + i];
			for (int64_t j = i + 1; j < k; j++)
				wr[j] -= e * hv[i * k + j];
		}
	}
	free(hv);
	free(wr);
	free(perm);
}

/* Σ_r e_r·H·e_rᵀ for INT4 codes (packed) or signed values (q8). */
static double out_err_int4(const double *h, int64_t k, const float *w, int64_t n, const float *gs,
			   const uint8_t *packed, const int8_t *q8)
{
	double *e = malloc((size_t)k * sizeof(double)), tot = 0.0;

	for (int64_t r = 0; r < n; r++) {
		for (int64_t c = 0; c < k; c++) {
			int q = q8 ? q8[r * k + c]
				   : (int)(((packed[r * (k / 2) + c / 2] >> (4 * (c & 1))) & 15u) ^ 8u) - 8;

			e[c] = w[r * k + c] - q * gs[r * (k / 64) + c / 64];
		}
		for (int64_t a = 0; a < k; a++) {
			double t = 0.0;

			for (int64_t b = 0; b < k; b++)
				t += h[a * k + b] * e[b];
			tot += e[a] * t;
		}
	}
	free(e);
	return tot;
}

/* A width where the factorization has several steps and trailing tiles and
 * the sweep several panels (the last one short), and a rank-deficient H
 * (fewer input rows than columns, loud columns: only the damping makes it
 * definite). The codes are the same for 1, 2 and 3 threads and for calls
 * split at multiples of FX_GPTQ_PANEL; against the f64 reference, the
 * output error stays within 2% and 97% of the codes agree. */
#define K2 1280
#define N2 (2 * FX_GPTQ_PANEL + 44)
#define M2 96
static void test_threads_and_panels(void **state)
{
	float *w = malloc(N2 * K2 * sizeof(float)), *ws = malloc(N2 * K2 * sizeof(float));
	float *x = malloc(M2 * K2 * sizeof(float)), *gs = malloc(N2 * K2 / 64 * sizeof(float));
	double *h = malloc((size_t)K2 * K2 * sizeof(double)), e_ref, e_c;
	uint8_t *c1 = malloc(N2 * K2 / 2), *c2 = malloc(N2 * K2 / 2);
	int8_t *qr = malloc(N2 * K2);
	struct fx_gptq *g = NULL;
	struct fx_err err = { 0 };
	int64_t same = 0;
	const int64_t ng = K2 / 64, splits[] = { FX_GPTQ_PANEL, 2 * FX_GPTQ_PANEL };

	(void)state;
	rng_state = 21;
	make_x(x, M2, K2);
	make_h(h, x, M2, K2);
	for (int64_t i = 0; i < N2 * K2; i++)
		w[i] = (float)gauss() * 0.05f;
	for (int64_t i = 0; i < N2 * ng; i++) {
		float a = 0.0f;

		for (int j = 0; j < 64; j++)
			a = fabsf(w[i * 64 + j]) > a ? fabsf(w[i * 64 + j]) : a;
		gs[i] = fx_bf16_to_f32(fx_f32_to_bf16(a / 7.0f));
	}
	for (int th = 1; th <= 3; th++) {
		omp_set_num_threads(th);
		assert_int_equal(fx_gptq_new(&g, h, K2, FX_GPTQ_DAMP, FX_GPTQ_BLOCK, &err), 0);
		memcpy(ws, w, N2 * K2 * sizeof(float));
		assert_int_equal(fx_gptq_rows(g, FX_QPREC_INT4, ws, N2, gs, NULL, NULL,
					      th == 1 ? c1 : c2, &err), 0);
		if (th > 1)
			assert_memory_equal(c1, c2, N2 * K2 / 2);
		if (th == 2)
			for (size_t sp = 0; sp < sizeof(splits) / sizeof(splits[0]); sp++) {
				int64_t a = splits[sp];

				memset(c2, 0, N2 * K2 / 2);
				memcpy(ws, w, N2 * K2 * sizeof(float));
				assert_int_equal(fx_gptq_rows(g, FX_QPREC_INT4, ws, a, gs, NULL, NULL, c2, &err), 0);
				assert_int_equal(fx_gptq_rows(g, FX_QPREC_INT4, ws + a * K2, N2 - a, gs + a * ng,
							      NULL, NULL, c2 + a * (K2 / 2), &err), 0);
				assert_memory_equal(c1, c2, N2 * K2 / 2);
			}
		fx_gptq_free(g);
	}
	omp_set_num_threads(2);
	ref_gptq_f64(h, K2, w, N2, gs, qr);
	for (int64_t r = 0; r < N2; r++)
		for (int64_t c = 0; c < K2; c++)
			same += qr[r * K2 + c] ==
				(int)(((c1[r * (K2 / 2) + c / 2] >> (4 * (c & 1))) & 15u) ^ 8u) - 8;
	e_ref = out_err_int4(h, K2, w, N2, gs, NULL, qr);
	e_c = out_err_int4(h, K2, w, N2, gs, c1, NULL);
	printf("# k %d, %d rows of H: %.2f%% codes equal to the f64 reference, output error %.6g "
	       "(f64 %.6g, ratio %.4f)\n", K2, M2, 100.0 * (double)same / (double)(N2 * K2), e_c,
	       e_ref, e_c / e_ref);
	assert_true((double)same >= 0.97 * (double)(N2 * K2));
	assert_true(fabs(e_c - e_ref) <= 0.02 * e_ref);
	free(w);
	free(ws);
	free(x);
	free(gs);
	free(h);
	free(c1);
	free(c2);
	free(qr);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_diagonal_is_rtn),
		cmocka_unit_test(test_beats_rtn_any_threads),
		cmocka_unit_test(test_dead_columns_and_damping),
		cmocka_unit_test(test_numpy_reference),
		cmocka_unit_test(test_threads_and_panels),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
