/* GPTQ column sweep on the CPU (kernels/fx-gptq.h). */
#include "../fx-gptq.h"

#include <lapacke.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "../../common/fx-tensor.h"
#include "fx-cpu-simd.h"

#define TILE 16        /* rows swept together: U is read once per tile */
#define JCHUNK 512     /* columns of a tile's deferred update kept in cache */

struct fx_gptq {
	int64_t k;
	int block;
	double damp;
	int64_t ndead;
	int64_t *perm;     /* perm[i]: source column visited i-th */
	unsigned char *dead;   /* by source column */
	float *u;          /* (k,k) upper Cholesky factor of H⁻¹, visiting order */
};

void fx_gptq_free(struct fx_gptq *g)
{
	if (!g)
		return;
	free(g->perm);
	free(g->dead);
	free(g->u);
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

int fx_gptq_new(struct fx_gptq **out, const double *h, int64_t k, double damp, int block,
		struct fx_err *err)
{
	struct fx_gptq *g = calloc(1, sizeof(*g));
	double *hp = NULL, *diag = NULL, mean = 0.0;
	int ret = 0, tries;
	int64_t i, j;

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
	g->dead = calloc((size_t)k, 1);
	g->u = malloc((size_t)k * (size_t)k * sizeof(float));
	hp = malloc((size_t)k * (size_t)k * sizeof(double));
	diag = malloc((size_t)k * sizeof(double));
	if (!g->perm || !g->dead || !g->u || !hp || !diag) {
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
	for (i = 0; i < k; i++)
		mean += diag[i];
	mean /= (double)k;
	for (tries = 0; tries < 7; tries++, damp *= 10.0) {
		/* H in visiting order, damped, dead rows/columns unit, stored
		 * flipped (row i holds visiting row k-1-i): J·H·J = L·Lᵀ gives
		 * H⁻¹'s upper factor as U = J·L⁻¹·J, one factorization and one
		 * triangular inverse instead of two factorizations and an inverse */
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
	if (tries == 7) {
		ret = fx_error(err, FX_E_VALUE, "gptq: the Hessian is not positive definite even "
			       "with damping %g", damp / 10.0);
		goto out;
	}
	g->damp = damp;
	for (i = 0; i < k; i++)
		for (j = 0; j < k; j++)
			g->u[i * k + j] = j >= i ? (float)hp[(k - 1 - i) * k + (k - 1 - j)] : 0.0f;
	*out = g;
	g = NULL;
out:
	free(hp);
	free(diag);
	fx_gptq_free(g);
	return ret;
}

/* One element against its fixed scale: the stored nibble and its value. */
static inline uint8_t quant_one(enum fx_qprec p, float x, float s, float z, float t, float *deq)
{
	float v;

	if (p == FX_QPREC_NVFP4) {
		uint8_t c = fx_e2m1_code_lowtie((x / t) / s);

		*deq = (fx_e2m1_value(c) * s) * t;
		return c;
	}
	v = rintf(x / s);
	if (p == FX_QPREC_W4A16) {
		v = v < -7.0f ? -7.0f : v > 8.0f ? 8.0f : v;
		*deq = (v + 7.0f) * s + z;
		return (uint8_t)(int)(v + 7.0f);
	}
	v = v < -8.0f ? -8.0f : v > 7.0f ? 7.0f : v;
	*deq = v * s;
	return (uint8_t)((int)v & 15);
}

/* w[r][j0+j] -= Σ_b e[r][b]·u[b][j] for j < nj, subtracting b in order:
 * elementwise, so every vector width gives the same bytes. Two rows and
 * 32 columns stay in registers across the block's b; each load of u
 * serves both rows. */
#define JR 32
FX_CPU_CLONES
static void deferred(float *restrict wp, const float *restrict eb, const float *restrict u,
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

/* Rows [0, nt) of a tile: the sweep, codes into their source columns. */
static void sweep_tile(const struct fx_gptq *g, enum fx_qprec p, float *wp, float *eb, int nt,
		       const float *gs, const float *gz, const float *rt, int64_t G, int64_t ng,
		       uint8_t *codes)
{
	const int64_t k = g->k, B = g->block;
	int64_t blk, i, j;
	int r;

	for (blk = 0; blk < k; blk += B) {
		int64_t be = blk + B < k ? blk + B : k, nb = be - blk;

		for (i = blk; i < be; i++) {
			const float *ui = g->u + i * k;
			int64_t col = g->perm[i], grp = col / G;

			for (r = 0; r < nt; r++) {
				float *w = wp + r * k, deq, e;
				uint8_t c = quant_one(p, w[i], gs[r * ng + grp], gz ? gz[r * ng + grp] : 0.0f,
						      rt ? rt[r] : 1.0f, &deq);
				uint8_t *cb = codes + r * (k / 2) + col / 2;

				*cb = (uint8_t)(col & 1 ? (*cb & 0x0f) | (c << 4) : (*cb & 0xf0) | c);
				e = (w[i] - deq) / ui[i];
#pragma omp simd
				for (j = i + 1; j < be; j++)
					w[j] -= e * ui[j];
				eb[r * B + (i - blk)] = e;
			}
		}
		/* the block's errors reach the later columns, b in order */
		for (int64_t j0 = be; j0 < k; j0 += JCHUNK)
			deferred(wp, eb, g->u + blk * k + j0, k, B, nb, nt, j0,
				 (j0 + JCHUNK < k ? j0 + JCHUNK : k) - j0);
	}
}

int fx_gptq_rows(const struct fx_gptq *g, enum fx_qprec p, float *w, int64_t nr,
		 const float *gs, const float *gz, const float *rt, uint8_t *codes,
		 struct fx_err *err)
{
	const int64_t k = g->k, G = p == FX_QPREC_NVFP4 ? FX_QUANT_FP4_GROUP : FX_QUANT_INT4_GROUP;
	const int64_t ng = k / G, ntiles = (nr + TILE - 1) / TILE;
	int bad = 0;

	if (k % G || k % 2 || (p == FX_QPREC_NVFP4 && !rt) || (p == FX_QPREC_W4A16 && !gz))
		return fx_error(err, FX_E_ARG, "gptq: k %lld does not fit precision %d", (long long)k,
				(int)p);
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
			/* zeros only for W4A16, row scales only for NVFP4 */
			sweep_tile(g, p, wp, eb, (int)nt, gs + r0 * ng,
				   p == FX_QPREC_W4A16 ? gz + r0 * ng : NULL,
				   p == FX_QPREC_NVFP4 ? rt + r0 : NULL, G, ng, codes + r0 * (k / 2));
		}
		free(wp);
		free(eb);
	}
	if (bad)
		return fx_error(err, FX_E_NOMEM, "gptq: out of memory for the sweep");
	return 0;
}
