/* GPTQ column sweep on the CPU (kernels/fx-gptq.h).
 *
 * Factorization. H in visiting order (damped, dead columns unit) is written
 * flipped, J·H·J (J reverses the order), divided by mean(diag H) and rounded
 * to f32; its lower Cholesky factor J·H·J = L·Lᵀ gives H = R·Rᵀ with
 * R = J·L·J upper. GPTQ carries column i's error through U, the upper
 * Cholesky factor of H⁻¹, and U = R⁻¹: with δ_l = w_l − q_l (the weight as
 * given minus its dequantized code), the value column i has when it is
 * quantized is
 *     w_i + Σ_{l<i} δ_l·R_li/R_ii,
 * the same numbers as the update through U, without the triangular
 * inverse (k³/3 flops, as much as the factorization). R_li/R_ii does not
 * change when H is scaled, so the normalization costs nothing and keeps f32
 * far from overflow. The factorization is blocked: CB columns at a time
 * (LAPACK spotrf on the diagonal block, strsm on the panel), the trailing
 * update in CT×CT tiles of ssyrk/sgemm, each tile one single-threaded
 * OpenBLAS call; the tiles follow k alone, the threads only choose who
 * computes which, so the factor does not depend on the thread count.
 *
 * Sweep. Rows go in panels of FX_GPTQ_PANEL (P): one thread sweeps a
 * panel. Inside a block of B columns each column gets the block's earlier
 * errors in order (left-looking, vectorized over the panel's rows, no
 * contraction: the same bytes in every clone) and is quantized; then one
 * sgemm gives the block's errors to every later column:
 *     C[:, be:k] += Δ[:, blk:be] · R̃[blk:be, be:k]      P×(k−be)×B
 * A short last panel is padded with zero rows, so every panel is the same
 * product and a row's codes depend only on its place in its panel. */
#include "../fx-gptq.h"

#include <cblas.h>
#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/fx-tensor.h"
#include "../fx-ops.h"
#include "fx-cpu-simd.h"

#define P FX_GPTQ_PANEL
#define CB 256   /* Cholesky: columns factored per step */
#define CT 768   /* Cholesky: side of the trailing update's tiles */
#define HT 64    /* tiles of the copy of H's upper triangle */
#define RC 64    /* panel rows kept in registers by the in-block update */
#define RNE_MAGIC 12582912.0f   /* 1.5·2^23: (v + M) − M rounds |v| < 2^22 to nearest even */

struct fx_gptq {
	int64_t k;
	int block;
	double damp;
	int64_t ndead;
	int64_t *perm;         /* perm[i]: source column visited i-th */
	int64_t *pos;          /* pos[c]: visiting place of source column c */
	unsigned char *dead;   /* by source column */
	/* (k,k), visiting order: r[l][i] = R_li/R_ii for l < i; inside a
	 * block of B columns also r[i][l] = r[l][i], so the in-block update
	 * reads a row */
	float *r;
	size_t rn;             /* floats in r (≥ k²: a kept buffer may be larger) */
};

/* The factor's buffer outlives its fx_gptq: fx_gptq_free keeps the largest
 * one for the next fx_gptq_new (a FLUX fc2 factor is 600 MB, and touching
 * fresh pages cost this VM 0.35 to 1.5 s per 600 MB, a third of the
 * factorization). Freed at exit. */
static float *spare;
static size_t spare_n;

static float *r_take(size_t n, size_t *got)
{
	float *p = NULL;

#pragma omp critical(fx_gptq_spare)
	if (spare && spare_n >= n) {
		p = spare;
		*got = spare_n;
		spare = NULL;
	}
	if (!p && (p = fx_ops_alloc(n * sizeof(float))))
		*got = n;
	return p;
}

static void r_keep(float *p, size_t n)
{
	float *drop = p;

	if (!p)
		return;
#pragma omp critical(fx_gptq_spare)
	if (!spare || spare_n < n) {
		drop = spare;
		spare = p;
		spare_n = n;
	}
	free(drop);
}

void fx_gptq_free(struct fx_gptq *g)
{
	if (!g)
		return;
	free(g->perm);
	free(g->pos);
	free(g->dead);
	r_keep(g->r, g->rn);
	free(g);
}

double fx_gptq_damp_used(const struct fx_gptq *g)
{
	return g->damp;
}

int64_t fx_gptq_dead(const struct fx_gptq *g)
{
	return g->ndead;
}

static const double *sort_key;

static int by_diag_desc(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	double dx = sort_key[x], dy = sort_key[y];

	if (dx != dy)
		return dx > dy ? -1 : 1;
	return x < y ? -1 : x > y;   /* ties: source order, so the sort is stable */
}

/* Row t of a in visiting order: tmp[u] = row[src[u]], src[u] = perm[k−1−u]. */
FX_CPU_CLONES
static void gather_f32(float *restrict row, float *restrict tmp, const int32_t *restrict src,
		       int64_t k)
{
	for (int64_t u = 0; u < k; u++)
		tmp[u] = row[src[u]];
	memcpy(row, tmp, (size_t)k * sizeof(float));
}

/* a (k,k) = J·H'·J in visiting order, H' = (H + damp·mean·I)/mean with dead
 * rows and columns unit: rounded to f32 in af, or in f64 in ad when not
 * NULL (the full matrix). H's upper triangle is read in HT×HT tiles, each
 * element once, and written to the rows of its flipped places (columns
 * still in source order); then every row gathers its columns. -1: out of
 * memory, -2: H holds NaN or Inf. */
static int build(float *af, double *ad, const double *h, const struct fx_gptq *g, double mean,
		 double damp)
{
	const int64_t k = g->k, nt = (k + HT - 1) / HT;
	const double im = 1.0 / mean;
	int32_t *src = malloc((size_t)k * sizeof(*src));
	int bad = 0, nonfinite = 0;

	if (!src)
		return -1;
	for (int64_t u = 0; u < k; u++)
		src[u] = (int32_t)g->perm[k - 1 - u];
#pragma omp parallel for schedule(dynamic, 1) reduction(| : nonfinite)
	for (int64_t t = 0; t < nt * nt; t++) {
		int64_t a0 = t / nt * HT, b0 = t % nt * HT;
		int64_t a1 = a0 + HT < k ? a0 + HT : k, b1 = b0 + HT < k ? b0 + HT : k;

		if (b0 < a0)
			continue;
		for (int64_t x = a0; x < a1; x++) {
			const double *hx = h + x * k;
			const int64_t tx = (k - 1 - g->pos[x]) * k;

			for (int64_t y = x > b0 ? x : b0; y < b1; y++) {
				const int64_t ty = (k - 1 - g->pos[y]) * k;
				double v = hx[y];

				nonfinite |= !(v - v == 0.0);
				if (ad)
					ad[tx + y] = ad[ty + x] = v * im;
				else
					af[tx + y] = af[ty + x] = (float)(v * im);
			}
		}
	}
	/* the diagonal damped, dead rows and columns unit (one thread: two
	 * dead columns share elements) */
	for (int64_t x = 0; x < k; x++) {
		const int64_t tx = (k - 1 - g->pos[x]) * k;
		double v = g->dead[x] ? 1.0 : (h[x * k + x] + damp * mean) * im;

		if (g->dead[x])
			for (int64_t y = 0; y < k; y++) {
				const int64_t ty = (k - 1 - g->pos[y]) * k;

				if (ad)
					ad[tx + y] = ad[ty + x] = 0.0;
				else
					af[tx + y] = af[ty + x] = 0.0f;
			}
		if (ad)
			ad[tx + x] = v;
		else
			af[tx + x] = (float)v;
	}
#pragma omp parallel reduction(| : bad)
	{
		void *tmp = malloc((size_t)k * sizeof(double));

		if (!tmp)
			bad = 1;
#pragma omp for schedule(static)
		for (int64_t t = 0; t < k; t++) {
			if (!tmp)
				continue;
			if (ad) {
				double *row = ad + t * k, *tr = tmp;

				for (int64_t u = 0; u < k; u++)
					tr[u] = row[src[u]];
				memcpy(row, tr, (size_t)k * sizeof(double));
			} else {
				gather_f32(af + t * k, tmp, src, k);
			}
		}
		free(tmp);
	}
	free(src);
	return bad ? -1 : nonfinite ? -2 : 0;
}

/* The f64 factor when f32 found no positive definite matrix (a tiny
 * damping): one single-threaded LAPACK call, rounded into a. 0, 1 when not
 * positive definite in f64 either, -1 out of memory. */
static int cholesky_f64(float *a, const double *h, const struct fx_gptq *g, double mean,
			double damp)
{
	const int64_t k = g->k;
	double *ad = malloc((size_t)k * (size_t)k * sizeof(double));
	int ret = -1;

	if (ad && build(NULL, ad, h, g, mean, damp) == 0) {
		ret = LAPACKE_dpotrf_work(LAPACK_COL_MAJOR, 'U', (lapack_int)k, ad, (lapack_int)k) != 0;
		if (!ret)
			for (int64_t i = 0; i < k; i++)
				for (int64_t j = 0; j <= i; j++)
					a[i * k + j] = (float)ad[i * k + j];
	}
	free(ad);
	return ret;
}

/* Lower Cholesky factor of a (k,k) in place (the upper triangle is left
 * as scratch). 0, or 1 when a is not positive definite in f32. */
static int cholesky(float *a, int64_t k)
{
	for (int64_t p0 = 0; p0 < k; p0 += CB) {
		const int64_t nb = k - p0 < CB ? k - p0 : CB, p1 = p0 + nb, m = k - p1;
		const int64_t nt = (m + CT - 1) / CT;
		float *d = a + p0 * k + p0;

		/* row-major lower = column-major upper: LAPACK works in place */
		if (LAPACKE_spotrf_work(LAPACK_COL_MAJOR, 'U', (lapack_int)nb, d, (lapack_int)k) != 0)
			return 1;
		if (m == 0)
			break;
		/* the panel below: X·L11ᵀ = A21 */
#pragma omp parallel for schedule(dynamic, 1)
		for (int64_t t = 0; t < (m + CB - 1) / CB; t++) {
			int64_t r0 = p1 + t * CB, mr = k - r0 < CB ? k - r0 : CB;

			cblas_strsm(CblasRowMajor, CblasRight, CblasLower, CblasTrans, CblasNonUnit,
				    (blasint)mr, (blasint)nb, 1.0f, d, (blasint)k, a + r0 * k + p0,
				    (blasint)k);
		}
		/* A22 −= A21·A21ᵀ, lower tiles only, larger tiles first */
#pragma omp parallel for schedule(dynamic, 1)
		for (int64_t t = 0; t < nt * (nt + 1) / 2; t++) {
			int64_t ti = 0, tj = t, i0, j0, mi, mj;

			while (tj > ti)
				tj -= ++ti;
			i0 = p1 + ti * CT;
			j0 = p1 + tj * CT;
			mi = k - i0 < CT ? k - i0 : CT;
			mj = k - j0 < CT ? k - j0 : CT;
			if (ti == tj)
				cblas_ssyrk(CblasRowMajor, CblasLower, CblasNoTrans, (blasint)mi, (blasint)nb,
					    -1.0f, a + i0 * k + p0, (blasint)k, 1.0f, a + i0 * k + i0,
					    (blasint)k);
			else
				cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)mi, (blasint)mj,
					    (blasint)nb, -1.0f, a + i0 * k + p0, (blasint)k, a + j0 * k + p0,
					    (blasint)k, 1.0f, a + i0 * k + j0, (blasint)k);
		}
	}
	return 0;
}

/* L (lower, flipped order) to r: r[x][y] = L[k−1−x][k−1−y] / L[k−1−y][k−1−y]
 * for y ≥ x (1 on the diagonal), rows x and k−1−x swapped in one go; then
 * each block's triangle mirrored below the diagonal. */
static int to_r(float *a, int64_t k, int64_t B)
{
	float *dg = malloc((size_t)k * sizeof(float));
	int bad = 0;

	if (!dg)
		return -1;
	for (int64_t i = 0; i < k; i++)
		dg[i] = a[i * k + i];
#pragma omp parallel reduction(| : bad)
	{
		float *tmp = malloc((size_t)k * sizeof(float));

		if (!tmp)
			bad = 1;
#pragma omp for schedule(dynamic, 16)
		for (int64_t x = 0; x < (k + 1) / 2; x++) {
			int64_t y = k - 1 - x;
			float *rx = a + x * k, *ry = a + y * k;

			if (!tmp)
				continue;
			memcpy(tmp, rx, (size_t)(x + 1) * sizeof(float));      /* L row x */
			if (x == y) {
				for (int64_t b = x; b < k; b++)
					rx[b] = tmp[k - 1 - b] / dg[k - 1 - b];
				continue;
			}
			for (int64_t b = x; b < k; b++)
				rx[b] = ry[k - 1 - b] / dg[k - 1 - b];
			for (int64_t b = y; b < k; b++)
				ry[b] = tmp[k - 1 - b] / dg[k - 1 - b];
		}
		free(tmp);
	}
	free(dg);
	for (int64_t b0 = 0; b0 < k; b0 += B)
		for (int64_t i = b0; i < k && i < b0 + B; i++)
			for (int64_t l = b0; l < i; l++)
				a[i * k + l] = a[l * k + i];
	return bad ? -1 : 0;
}

int fx_gptq_new(struct fx_gptq **out, const double *h, int64_t k, double damp, int block,
		struct fx_err *err)
{
	struct fx_gptq *g = calloc(1, sizeof(*g));
	double *diag = NULL, mean = 0.0;
	int ret = 0, tries, blas = 0;
	int64_t i;

	*out = NULL;
	if (!g || k <= 0 || block <= 0 || !(damp > 0.0)) {
		free(g);
		return fx_error(err, g ? FX_E_ARG : FX_E_NOMEM,
				g ? "gptq: bad arguments (k %lld, block %d, damp %g)" : "out of memory",
				(long long)k, block, damp);
	}
	g->k = k;
	g->block = block;
	g->perm = malloc((size_t)k * sizeof(*g->perm));
	g->pos = malloc((size_t)k * sizeof(*g->pos));
	g->dead = calloc((size_t)k, 1);
	g->r = r_take((size_t)k * (size_t)k, &g->rn);
	diag = malloc((size_t)k * sizeof(double));
	if (!g->perm || !g->pos || !g->dead || !g->r || !diag) {
		ret = fx_error(err, FX_E_NOMEM, "gptq: out of memory for a %lld-column Hessian",
			       (long long)k);
		goto out;
	}
	for (i = 0; i < k; i++) {
		diag[i] = h[i * k + i];
		if (!isfinite(diag[i]) || diag[i] < 0.0) {
			ret = fx_error(err, FX_E_VALUE, "gptq: Hessian diagonal %lld is %g", (long long)i,
				       diag[i]);
			goto out;
		}
		if (diag[i] == 0.0) {
			g->dead[i] = 1;
			g->ndead++;
			diag[i] = 1.0;
		}
		g->perm[i] = i;
	}
	sort_key = diag;
	qsort(g->perm, (size_t)k, sizeof(*g->perm), by_diag_desc);
	for (i = 0; i < k; i++) {
		g->pos[g->perm[i]] = i;
		mean += diag[i];
	}
	mean /= (double)k;
	blas = fx_ops_blas_single();
	for (tries = 0; tries < 7; tries++, damp *= 10.0) {
		int fail;

		if ((fail = build(g->r, NULL, h, g, mean, damp)) == -2) {
			ret = fx_error(err, FX_E_VALUE, "gptq: the Hessian holds NaN or Inf");
			goto out;
		}
		if (fail < 0)
			goto nomem;
		if (cholesky(g->r, k) == 0)
			break;
		/* f32 rounding may break down before f64 would: damping grows
		 * only when f64 fails too */
		if ((fail = cholesky_f64(g->r, h, g, mean, damp)) < 0)
			goto nomem;
		if (!fail)
			break;
	}
	if (tries == 7) {
		ret = fx_error(err, FX_E_VALUE, "gptq: the Hessian is not positive definite even "
			       "with damping %g", damp / 10.0);
		goto out;
	}
	g->damp = damp;
	if (to_r(g->r, k, block) < 0)
		goto nomem;
	*out = g;
	g = NULL;
	goto out;
nomem:
	ret = fx_error(err, FX_E_NOMEM, "gptq: out of memory for a %lld-column Hessian", (long long)k);
out:
	fx_ops_blas_restore(blas);
	free(diag);
	fx_gptq_free(g);
	return ret;
}


/* A panel: d (k,P) by column, the weights as given, replaced by their
 * errors δ once quantized; c (P,k) by row, the earlier blocks' corrections,
 * and cb (B,P) those of the block being swept by column; q (k,P) the codes;
 * s, z (k/G,P) the group scales and zeros; t (P) the row scales. */
struct panel {
	float *d, *c, *cb, *s, *z, *t;
	uint8_t *q;
};

/* 8 floats, elementwise: the same operations in every clone. */
typedef float v8f __attribute__((vector_size(32)));

/* Columns [blk, be) of a panel: each gets the block's earlier errors, b in
 * order, then is quantized against its fixed scales (the RTN quantizers'
 * operations, so a diagonal H gives their codes). */
FX_CPU_CLONES
static void sweep_block(const struct fx_gptq *g, enum fx_qprec p, const struct panel *pn,
			int64_t G, int64_t blk, int64_t be)
{
	_Static_assert(RC % 8 == 0 && P % RC == 0, "panel rows in whole vectors");
	const int64_t k = g->k;

	/* RC rows at a time: their errors of the block stay in L1 */
	for (int r0 = 0; r0 < P; r0 += RC)
		for (int64_t i = blk; i < be; i++) {
			const float *ri = g->r + i * k;
			const int64_t grp = g->perm[i] / G;
			float *di = pn->d + i * P, *ci = pn->cb + (i - blk) * P;
			const float *sv = pn->s + grp * P, *zv = pn->z + grp * P;
			uint8_t *qi = pn->q + i * P;
			v8f va[RC / 8];
			float acc[RC];

			memcpy(va, ci + r0, sizeof(va));
			for (int64_t l = blk; l < i; l++) {
				const float *dl = pn->d + l * P + r0;
				const v8f f = { ri[l], ri[l], ri[l], ri[l], ri[l], ri[l], ri[l], ri[l] };

#pragma GCC unroll 16
				for (int v = 0; v < RC / 8; v++) {
					v8f x;

					memcpy(&x, dl + 8 * v, sizeof(x));
					va[v] += f * x;
				}
			}
			memcpy(acc, va, sizeof(acc));
			if (p == FX_QPREC_NVFP4) {
#pragma omp simd
				for (int j = 0; j < RC; j++) {
					float x = di[r0 + j] + acc[j], s = sv[r0 + j], t = pn->t[r0 + j];
					float y = (x / t) / s, a = fabsf(y), v;
					unsigned c = (unsigned)(a > 0.25f) + (unsigned)(a > 0.75f) +
						     (unsigned)(a > 1.25f) + (unsigned)(a > 1.75f) +
						     (unsigned)(a > 2.5f) + (unsigned)(a > 3.5f) +
						     (unsigned)(a > 5.0f);
					unsigned neg = (y < 0.0f) & (c != 0);

					/* E2M1 magnitudes 0 .5 1 1.5 2 3 4 6 from the code */
					v = (float)c * 0.5f + (float)(c > 4 ? c - 4 : 0) * 0.5f + (float)(c == 7);
					v = fx_select_f32((int)neg, -v, v);
					qi[r0 + j] = (uint8_t)(c | neg << 3);
					di[r0 + j] -= (v * s) * t;
				}
			} else if (p == FX_QPREC_W4A16) {
#pragma omp simd
				for (int j = 0; j < RC; j++) {
					float x = di[r0 + j] + acc[j], s = sv[r0 + j], v = x / s;

					v = fx_select_f32(v < -7.0f, -7.0f, v);
					v = fx_select_f32(v > 8.0f, 8.0f, v);
					v = (v + RNE_MAGIC) - RNE_MAGIC;
					qi[r0 + j] = (uint8_t)(int)(v + 7.0f);
					di[r0 + j] -= (v + 7.0f) * s + zv[r0 + j];
				}
			} else {
#pragma omp simd
				for (int j = 0; j < RC; j++) {
					float x = di[r0 + j] + acc[j], s = sv[r0 + j], v = x / s;

					v = fx_select_f32(v < -8.0f, -8.0f, v);
					v = fx_select_f32(v > 7.0f, 7.0f, v);
					v = (v + RNE_MAGIC) - RNE_MAGIC;
					qi[r0 + j] = (uint8_t)((int)v & 15);
					di[r0 + j] -= v * s;
				}
			}
		}
}

/* Rows [r0, r0+nr) (nr ≤ P): load by column (padded with zero rows, unit
 * scales), sweep, codes into their source columns. */
static void sweep_panel(const struct fx_gptq *g, enum fx_qprec p, const struct panel *pn,
			const float *w, int64_t r0, int64_t nr, const float *gs, const float *gz,
			const float *rt, int64_t G, uint8_t *codes)
{
	const int64_t k = g->k, ng = k / G, B = g->block;

	/* 16 rows at a time: one cache line of a column, 16 rows in L1/L2 */
	for (int64_t q0 = 0; q0 < P; q0 += 16)
		for (int64_t i = 0; i < k; i++) {
			const int64_t col = g->perm[i];
			float *di = pn->d + i * P + q0;

			for (int64_t r = 0; r < 16; r++)
				di[r] = q0 + r < nr && !g->dead[col] ? w[(r0 + q0 + r) * k + col] : 0.0f;
		}
	for (int64_t r = 0; r < P; r++) {
		for (int64_t gi = 0; gi < ng; gi++) {
			pn->s[gi * P + r] = r < nr ? gs[(r0 + r) * ng + gi] : 1.0f;
			pn->z[gi * P + r] = r < nr && gz ? gz[(r0 + r) * ng + gi] : 0.0f;
		}
		pn->t[r] = r < nr && rt ? rt[r0 + r] : 1.0f;
	}
	for (int64_t blk = 0; blk < k; blk += B) {
		int64_t be = blk + B < k ? blk + B : k;

		/* the block's corrections by column (none before the first) */
		for (int64_t q0 = 0; q0 < P; q0 += 16)
			for (int64_t i = blk; i < be; i++)
				for (int64_t r = 0; r < 16; r++)
					pn->cb[(i - blk) * P + q0 + r] = blk ? pn->c[(q0 + r) * k + i] : 0.0f;
		sweep_block(g, p, pn, G, blk, be);
		if (be < k)   /* the first product sets C, the others add to it */
			cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, P, (blasint)(k - be),
				    (blasint)(be - blk), 1.0f, pn->d + blk * P, P, g->r + blk * k + be,
				    (blasint)k, blk ? 1.0f : 0.0f, pn->c + be, (blasint)k);
	}
	for (int64_t q0 = 0; q0 < nr; q0 += 16)   /* 16 rows: one cache line of q */
		for (int64_t c = 0; c < k; c += 2) {
			const uint8_t *lo = pn->q + g->pos[c] * P + q0, *hi = pn->q + g->pos[c + 1] * P + q0;

			for (int64_t r = 0; r < 16 && q0 + r < nr; r++)
				codes[(r0 + q0 + r) * (k / 2) + c / 2] = (uint8_t)(lo[r] | hi[r] << 4);
		}
}

int fx_gptq_rows(const struct fx_gptq *g, enum fx_qprec p, float *w, int64_t nr,
		 const float *gs, const float *gz, const float *rt, uint8_t *codes,
		 struct fx_err *err)
{
	const int64_t k = g->k, G = p == FX_QPREC_NVFP4 ? FX_QUANT_FP4_GROUP : FX_QUANT_INT4_GROUP;
	const int64_t ng = k / G, npan = (nr + P - 1) / P;
	int bad = 0, blas;

	if (k % G || k % 2 || (p == FX_QPREC_NVFP4 && !rt) || (p == FX_QPREC_W4A16 && !gz))
		return fx_error(err, FX_E_ARG, "gptq: k %lld does not fit precision %d", (long long)k,
				(int)p);
	blas = fx_ops_blas_single();
#pragma omp parallel reduction(| : bad) if (npan > 1)
	{
		struct panel pn;

		pn.d = malloc((size_t)k * P * sizeof(float));
		pn.c = malloc((size_t)k * P * sizeof(float));
		pn.cb = malloc((size_t)g->block * P * sizeof(float));
		pn.s = malloc((size_t)ng * P * sizeof(float));
		pn.z = malloc((size_t)ng * P * sizeof(float));
		pn.t = malloc((size_t)P * sizeof(float));
		pn.q = malloc((size_t)k * P);
		if (!pn.d || !pn.c || !pn.cb || !pn.s || !pn.z || !pn.t || !pn.q)
			bad = 1;
#pragma omp for schedule(dynamic, 1)
		for (int64_t t = 0; t < npan; t++) {
			int64_t r0 = t * P, n = nr - r0 < P ? nr - r0 : P;

			if (bad)
				continue;
			/* zeros only for W4A16, row scales only for NVFP4 */
			sweep_panel(g, p, &pn, w, r0, n, gs, p == FX_QPREC_W4A16 ? gz : NULL,
				    p == FX_QPREC_NVFP4 ? rt : NULL, G, codes);
		}
		free(pn.d);
		free(pn.c);
		free(pn.cb);
		free(pn.s);
		free(pn.z);
		free(pn.t);
		free(pn.q);
	}
	fx_ops_blas_restore(blas);
	if (bad)
		return fx_error(err, FX_E_NOMEM, "gptq: out of memory for the sweep");
	return 0;
}
