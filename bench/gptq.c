/* GPTQ timing on FLUX-width layers (bench/run.sh gptq runs it):
 *
 *   fx-gptq-bench K ROWS [BASE_ROWS]
 *
 * Builds a K x K Hessian from K correlated synthetic input rows (a few loud
 * columns, as activations have), RTN scales from the weights' group absmax
 * (INT4 grid), and times
 *   - fx_gptq_new (the factorization; the second of two calls, as fx-quant's
 *     later layers find the factor's buffer kept, and the first) and
 *     fx_gptq_rows on ROWS rows (the sweep; a multiple of 2 x FX_GPTQ_PANEL
 *     keeps both cores busy);
 *   - with BASE_ROWS > 0, the previous implementation kept below (f64 LAPACK
 *     dpotrf + dtrtri for H⁻¹'s factor, a sweep of 16-row tiles whose later
 *     columns get each block's errors from a fixed-order loop) on BASE_ROWS
 *     rows;
 *   - OpenBLAS sgemm (2048³, all threads) before and after, the machine's
 *     speed now: the ratios to it hold on a loaded machine, seconds do not;
 *   - the CPU seconds of the factorization and the sweep (all threads): on
 *     a loaded machine, half of them is what two idle cores would take.
 * The output error Σ_r e_r·H·e_rᵀ (e = w − dequantized codes, f64) of the
 * new codes is compared with RTN's and with the previous implementation's
 * on the same rows. One line of key=value pairs:
 *   k rows factor_s sweep_ms_row factor_cpu_s sweep_cpu_ms_row factor_first_s
 *   factor_first_cpu_s factor_gflops sweep_gflops sgemm_gflops err_vs_rtn
 *   [base_rows base_factor_s base_sweep_ms_row err_vs_base] */
#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cpu/fx-cpu-simd.h"
#include "fx-gptq.h"

/* ---- the previous implementation (commit 730c61c..c99fd87), unchanged but
 * for the names: the baseline of the speedup --------------------------- */
#define TILE 16
#define JCHUNK 512

struct base {
	int64_t k;
	int block;
	double damp;
	int64_t ndead;
	int64_t *perm;
	unsigned char *dead;
	float *u;
};

static void base_free(struct base *g)
{
	if (!g)
		return;
	free(g->perm);
	free(g->dead);
	free(g->u);
	free(g);
}

static const double *sort_key;

static int by_diag_desc(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	double dx = sort_key[x], dy = sort_key[y];

	if (dx != dy)
		return dx > dy ? -1 : 1;
	return x < y ? -1 : x > y;
}

static struct base *base_new(const double *h, int64_t k, double damp, int block)
{
	struct base *g = calloc(1, sizeof(*g));
	double *hp = NULL, *diag = NULL, mean = 0.0;
	int tries;
	int64_t i, j;

	if (!g)
		return NULL;
	g->k = k;
	g->block = block;
	g->perm = malloc((size_t)k * sizeof(*g->perm));
	g->dead = calloc((size_t)k, 1);
	g->u = malloc((size_t)k * (size_t)k * sizeof(float));
	hp = malloc((size_t)k * (size_t)k * sizeof(double));
	diag = malloc((size_t)k * sizeof(double));
	if (!g->perm || !g->dead || !g->u || !hp || !diag)
		goto fail;
	for (i = 0; i < k; i++) {
		diag[i] = h[i * k + i];
		if (diag[i] == 0.0) {
			g->dead[i] = 1;
			g->ndead++;
			diag[i] = 1.0;
		}
		g->perm[i] = i;
	}
	sort_key = diag;
	qsort(g->perm, (size_t)k, sizeof(*g->perm), by_diag_desc);
	for (i = 0; i < k; i++)
		mean += diag[i];
	mean /= (double)k;
	for (tries = 0; tries < 7; tries++, damp *= 10.0) {
		for (i = 0; i < k; i++) {
			int64_t a = g->perm[k - 1 - i];

			for (j = 0; j <= i; j++) {
				int64_t b = g->perm[k - 1 - j];
				double v = a <= b ? h[a * k + b] : h[b * k + a];

				if (g->dead[a] || g->dead[b])
					v = a == b ? 1.0 : 0.0;
				hp[i * k + j] = v;
			}
			hp[i * k + i] += damp * mean;
		}
		if (LAPACKE_dpotrf(LAPACK_ROW_MAJOR, 'L', (lapack_int)k, hp, (lapack_int)k) != 0 ||
		    LAPACKE_dtrtri(LAPACK_ROW_MAJOR, 'L', 'N', (lapack_int)k, hp, (lapack_int)k) != 0)
			continue;
		break;
	}
	if (tries == 7)
		goto fail;
	g->damp = damp;
	for (i = 0; i < k; i++)
		for (j = 0; j < k; j++)
			g->u[i * k + j] = j >= i ? (float)hp[(k - 1 - i) * k + (k - 1 - j)] : 0.0f;
	free(hp);
	free(diag);
	return g;
fail:
	free(hp);
	free(diag);
	base_free(g);
	return NULL;
}

static inline uint8_t base_quant_int4(float x, float s, float *deq)
{
	float v = rintf(x / s);

	v = v < -8.0f ? -8.0f : v > 7.0f ? 7.0f : v;
	*deq = v * s;
	return (uint8_t)((int)v & 15);
}

#define JR 32
FX_CPU_CLONES
static void base_deferred(float *restrict wp, const float *restrict eb, const float *restrict u,
			  int64_t k, int64_t B, int64_t nb, int nt, int64_t j0, int64_t nj)
{
	int r = 0;

	for (; r + 1 < nt; r += 2) {
		float *restrict w0 = wp + r * k + j0, *restrict w1 = wp + (r + 1) * k + j0;
		const float *e0 = eb + r * B, *e1 = eb + (r + 1) * B;
		int64_t j = 0;

		for (; j + JR <= nj; j += JR) {
			float a0[JR], a1[JR];

			memcpy(a0, w0 + j, sizeof(a0));
			memcpy(a1, w1 + j, sizeof(a1));
			for (int64_t b = 0; b < nb; b++) {
				const float *restrict ub = u + b * k + j;
				float f0 = e0[b], f1 = e1[b];

#pragma omp simd
				for (int jj = 0; jj < JR; jj++) {
					a0[jj] -= f0 * ub[jj];
					a1[jj] -= f1 * ub[jj];
				}
			}
			memcpy(w0 + j, a0, sizeof(a0));
			memcpy(w1 + j, a1, sizeof(a1));
		}
		for (int64_t b = 0; b < nb; b++)
			for (int64_t jt = j; jt < nj; jt++) {
				w0[jt] -= e0[b] * u[b * k + jt];
				w1[jt] -= e1[b] * u[b * k + jt];
			}
	}
	for (; r < nt; r++) {
		float *restrict w0 = wp + r * k + j0;
		const float *e0 = eb + r * B;

		for (int64_t b = 0; b < nb; b++) {
			const float *restrict ub = u + b * k;
			float a0 = e0[b];

#pragma omp simd
			for (int64_t j = 0; j < nj; j++)
				w0[j] -= a0 * ub[j];
		}
	}
}

static void base_tile(const struct base *g, float *wp, float *eb, int nt, const float *gs,
		      int64_t ng, uint8_t *codes)
{
	const int64_t k = g->k, B = g->block;
	int64_t blk, i, j;
	int r;

	for (blk = 0; blk < k; blk += B) {
		int64_t be = blk + B < k ? blk + B : k, nb = be - blk;

		for (i = blk; i < be; i++) {
			const float *ui = g->u + i * k;
			int64_t col = g->perm[i], grp = col / 64;

			for (r = 0; r < nt; r++) {
				float *w = wp + r * k, deq, e;
				uint8_t c = base_quant_int4(w[i], gs[r * ng + grp], &deq);
				uint8_t *cb = codes + r * (k / 2) + col / 2;

				*cb = (uint8_t)(col & 1 ? (*cb & 0x0f) | (c << 4) : (*cb & 0xf0) | c);
				e = (w[i] - deq) / ui[i];
#pragma omp simd
				for (j = i + 1; j < be; j++)
					w[j] -= e * ui[j];
				eb[r * B + (i - blk)] = e;
			}
		}
		for (int64_t j0 = be; j0 < k; j0 += JCHUNK)
			base_deferred(wp, eb, g->u + blk * k + j0, k, B, nb, nt, j0,
				      (j0 + JCHUNK < k ? j0 + JCHUNK : k) - j0);
	}
}

/* INT4 only (the bench's grid) */
static int base_rows(const struct base *g, const float *w, int64_t nr, const float *gs,
		     uint8_t *codes)
{
	const int64_t k = g->k, ng = k / 64, ntiles = (nr + TILE - 1) / TILE;
	int bad = 0;

#pragma omp parallel reduction(| : bad)
	{
		float *wp = malloc((size_t)TILE * (size_t)k * sizeof(float));
		float *eb = malloc((size_t)TILE * (size_t)g->block * sizeof(float));

		if (!wp || !eb)
			bad = 1;
#pragma omp for schedule(dynamic, 1)
		for (int64_t t = 0; t < ntiles; t++) {
			int64_t r0 = t * TILE, nt = nr - r0 < TILE ? nr - r0 : TILE;

			if (!wp || !eb)
				continue;
			for (int64_t r = 0; r < nt; r++) {
				const float *src = w + (r0 + r) * k;

				for (int64_t i = 0; i < k; i++)
					wp[r * k + i] = g->dead[g->perm[i]] ? 0.0f : src[g->perm[i]];
			}
			base_tile(g, wp, eb, (int)nt, gs + r0 * ng, ng, codes + r0 * (k / 2));
		}
		free(wp);
		free(eb);
	}
	return bad ? -1 : 0;
}

/* ---- the bench ------------------------------------------------------- */

/* CPU seconds of the process (all threads). */
static double cpu_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* OpenBLAS sgemm 2048³ on all threads, best of 3 calls after a warm-up. */
static double sgemm_gflops(void)
{
	const int n = 2048;
	float *a = malloc((size_t)n * n * sizeof(float)), *b = malloc((size_t)n * n * sizeof(float));
	float *c = malloc((size_t)n * n * sizeof(float));
	double best = 0.0;

	if (!a || !b || !c)
		return 0.0;
	for (int64_t i = 0; i < (int64_t)n * n; i++) {
		a[i] = (float)(i % 7) * 0.1f;
		b[i] = (float)(i % 5) * 0.1f;
	}
	for (int rep = 0; rep < 4; rep++) {
		double t0 = omp_get_wtime(), t;

		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n, 0.0f, c,
			    n);
		t = omp_get_wtime() - t0;
		if (rep > 0 && 2.0 * n * n * (double)n / t / 1e9 > best)
			best = 2.0 * n * n * (double)n / t / 1e9;
	}
	free(a);
	free(b);
	free(c);
	return best;
}

/* Σ_r e_r·H·e_rᵀ over nr rows, e = w − codes·s (INT4). */
static double out_err(const double *h, const float *w, const uint8_t *codes, const float *gs,
		      int64_t nr, int64_t k)
{
	double *e = malloc((size_t)(nr * k) * sizeof(double)), *eh, tot = 0.0;

	eh = malloc((size_t)(nr * k) * sizeof(double));
	if (!e || !eh) {
		free(e);
		free(eh);
		return NAN;
	}
	for (int64_t r = 0; r < nr; r++)
		for (int64_t c = 0; c < k; c++) {
			unsigned q = (codes[r * (k / 2) + c / 2] >> (4 * (c & 1))) & 15u;

			e[r * k + c] = w[r * k + c] - (double)((int)(q ^ 8u) - 8) * gs[r * (k / 64) + c / 64];
		}
	cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nr, (int)k, (int)k, 1.0, e,
		    (int)k, h, (int)k, 0.0, eh, (int)k);
	for (int64_t i = 0; i < nr * k; i++)
		tot += e[i] * eh[i];
	free(e);
	free(eh);
	return tot;
}

int main(int argc, char **argv)
{
	int64_t k, n, nb = 0, m, i;
	double *h, t0 = 0, t1 = 0, t2, c0 = 0, c1, c2, sg0, sg1, sg, e_new, e_rtn, fs, ss, ff = 0, ffc = 0;
	float *x, *w, *ws, *gs;
	uint8_t *codes, *rtn;
	struct fx_gptq *g = NULL;
	struct fx_err err = { 0 };
	uint64_t s = 1;

	if ((argc != 3 && argc != 4) || (k = atoll(argv[1])) <= 0 || k % 64 ||
	    (n = atoll(argv[2])) <= 0 || (argc == 4 && (nb = atoll(argv[3])) < 0)) {
		fprintf(stderr, "usage: fx-gptq-bench K ROWS [BASE_ROWS]\n");
		return 2;
	}
	nb = nb < n ? nb : n;
	m = k;   /* setup only: a rank-k H, damped like any other */
	x = malloc((size_t)(m * k) * sizeof(float));
	h = malloc((size_t)(k * k) * sizeof(double));
	w = malloc((size_t)(n * k) * sizeof(float));
	ws = malloc((size_t)(n * k) * sizeof(float));
	gs = malloc((size_t)(n * k / 64) * sizeof(float));
	codes = malloc((size_t)(n * k / 2));
	rtn = malloc((size_t)(n * k / 2));
	if (!x || !h || !w || !ws || !gs || !codes || !rtn) {
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

		if (!hf)
			return 4;
		for (i = 0; i < m * k; i++)   /* a few loud input columns */
			x[i] *= i % k % 17 == 0 ? 4.0f : 1.0f;
		cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)k, (int)m, 1.0f, x, (int)k,
			    0.0f, hf, (int)k);
		for (int64_t a = 0; a < k; a++)
			for (int64_t b = 0; b < k; b++)
				h[a * k + b] = a <= b ? hf[a * k + b] : hf[b * k + a];
		free(hf);
	}
	for (i = 0; i < n * k; i++)
		w[i] = x[(i * 7919) % (m * k)] * 0.05f;
	/* RTN scales: group absmax / 7; the RTN codes beside them */
	for (i = 0; i < n * k / 64; i++) {
		float a = 0.0f;

		for (int j = 0; j < 64; j++)
			a = fabsf(w[i * 64 + j]) > a ? fabsf(w[i * 64 + j]) : a;
		gs[i] = a > 0.0f ? a / 7.0f : 1.0f;
	}
	for (i = 0; i < n * k; i += 2) {
		uint8_t lo = 0, hi = 0;

		for (int j = 0; j < 2; j++) {
			float v = rintf(w[i + j] / gs[(i + j) / 64]);

			v = v < -8.0f ? -8.0f : v > 7.0f ? 7.0f : v;
			*(j ? &hi : &lo) = (uint8_t)((int)v & 15);
		}
		rtn[i / 2] = (uint8_t)(lo | hi << 4);
	}

	sg0 = sgemm_gflops();
	memcpy(ws, w, (size_t)(n * k) * sizeof(float));
	/* twice: the first factorization touches fresh pages for its k² floats,
	 * later ones (fx-quant's next layers) reuse the buffer fx_gptq_free kept */
	for (int rep = 0; rep < 2; rep++) {
		fx_gptq_free(g);
		t0 = omp_get_wtime();
		c0 = cpu_s();
		if (fx_gptq_new(&g, h, k, FX_GPTQ_DAMP, FX_GPTQ_BLOCK, &err) < 0) {
			fprintf(stderr, "fx-gptq-bench: %s\n", err.msg);
			return 1;
		}
		t1 = omp_get_wtime();
		if (rep == 0) {
			ff = t1 - t0;
			ffc = cpu_s() - c0;
		}
	}
	c1 = cpu_s();
	if (fx_gptq_rows(g, FX_QPREC_INT4, ws, n, gs, NULL, NULL, codes, &err) < 0) {
		fprintf(stderr, "fx-gptq-bench: %s\n", err.msg);
		return 1;
	}
	t2 = omp_get_wtime();
	c2 = cpu_s();
	fx_gptq_free(g);
	sg1 = sgemm_gflops();
	sg = (sg0 + sg1) / 2.0;
	fs = t1 - t0;
	ss = (t2 - t1) / (double)n;
	e_new = out_err(h, w, codes, gs, n, k);
	e_rtn = out_err(h, w, rtn, gs, n, k);
	printf("k=%lld rows=%lld factor_s=%.4f sweep_ms_row=%.5g factor_cpu_s=%.4f "
	       "sweep_cpu_ms_row=%.5g factor_first_s=%.4f factor_first_cpu_s=%.4f factor_gflops=%.1f "
	       "sweep_gflops=%.1f sgemm_gflops=%.1f err_vs_rtn=%.4f",
	       (long long)k, (long long)n, fs, ss * 1e3, c1 - c0, (c2 - c1) / (double)n * 1e3, ff, ffc,
	       (double)k * k * k / 3.0 / fs / 1e9, (double)k * (k - 1) / ss / 1e9, sg, e_new / e_rtn);
	if (nb > 0) {
		struct base *b;
		uint8_t *cb = malloc((size_t)(nb * k / 2));

		t0 = omp_get_wtime();
		b = base_new(h, k, FX_GPTQ_DAMP, FX_GPTQ_BLOCK);
		t1 = omp_get_wtime();
		if (!b || !cb || base_rows(b, w, nb, gs, cb) < 0) {
			fprintf(stderr, "fx-gptq-bench: the previous implementation failed\n");
			return 1;
		}
		t2 = omp_get_wtime();
		printf(" base_rows=%lld base_factor_s=%.4f base_sweep_ms_row=%.5g err_vs_base=%.6f",
		       (long long)nb, t1 - t0, (t2 - t1) / (double)nb * 1e3,
		       out_err(h, w, codes, gs, nb, k) / out_err(h, w, cb, gs, nb, k));
		base_free(b);
		free(cb);
	}
	printf("\n");
	free(x);
	free(h);
	free(w);
	free(ws);
	free(gs);
	free(codes);
	free(rtn);
	return 0;
}
