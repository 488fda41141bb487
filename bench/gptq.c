/* GPTQ timing on FLUX-width layers (bench/gptq.sh runs it):
 *
 *   fx-gptq-bench K ROWS
 *
 * Builds a K x K Hessian from K correlated synthetic input rows, times its
 * factorization (fx_gptq_new) and the sweep of ROWS INT4 rows
 * (fx_gptq_rows), and prints "K ROWS factor_s sweep_s_per_row". */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cblas.h>

#include "fx-gptq.h"

int main(int argc, char **argv)
{
	int64_t k, n, m, i;
	double *h, t0, t1, t2;
	float *x, *w, *gs;
	uint8_t *codes;
	struct fx_gptq *g = NULL;
	struct fx_err err = { 0 };
	uint64_t s = 1;

	if (argc != 3 || (k = atoll(argv[1])) <= 0 || k % 64 || (n = atoll(argv[2])) <= 0) {
		fprintf(stderr, "usage: fx-gptq-bench K ROWS\n");
		return 2;
	}
	m = k;   /* setup only: a rank-k H, damped like any other */
	x = malloc((size_t)(m * k) * sizeof(float));
	h = malloc((size_t)(k * k) * sizeof(double));
	w = malloc((size_t)(n * k) * sizeof(float));
	gs = malloc((size_t)(n * k / 64) * sizeof(float));
	codes = malloc((size_t)(n * k / 2));
	if (!x || !h || !w || !gs || !codes) {
		fprintf(stderr, "fx-gptq-bench: out of memory\n");
		return 4;
	}
	for (i = 0; i < m * k; i++) {
		s = s * 6364136223846793005ull + 1442695040888963407ull;
		x[i] = (float)((double)(s >> 11) / 9007199254740992.0 - 0.5) +
		       (i % k ? x[i - 1] * 0.5f : 0.0f);
	}
	{
		float *hf = malloc((size_t)(k * k) * sizeof(float));

		cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)k, (int)m, 1.0f, x, (int)k,
			    0.0f, hf, (int)k);
		for (i = 0; i < k * k; i++)
			h[i] = hf[i];
		free(hf);
	}
	for (i = 0; i < n * k; i++)
		w[i] = x[i % (m * k)] * 0.05f;
	for (i = 0; i < n * k / 64; i++)
		gs[i] = 0.01f;
	t0 = omp_get_wtime();
	if (fx_gptq_new(&g, h, k, FX_GPTQ_DAMP, FX_GPTQ_BLOCK, &err) < 0) {
		fprintf(stderr, "fx-gptq-bench: %s\n", err.msg);
		return 1;
	}
	t1 = omp_get_wtime();
	if (fx_gptq_rows(g, FX_QPREC_INT4, w, n, gs, NULL, NULL, codes, &err) < 0) {
		fprintf(stderr, "fx-gptq-bench: %s\n", err.msg);
		return 1;
	}
	t2 = omp_get_wtime();
	printf("%lld %lld %.4f %.6g\n", (long long)k, (long long)n, t1 - t0, (t2 - t1) / (double)n);
	fx_gptq_free(g);
	free(x);
	free(h);
	free(w);
	free(gs);
	free(codes);
	return 0;
}
