/* fx-lowrank: row kernels against the quantizer/runtime references, rsvd
 * against LAPACK, the search's gains, the stage (shapes, caching, foreign
 * calib) and the fx.branch audit. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cblas.h>

#include "fx-log.h"
#include "fx-tensor.h"
#include "fx-audit-branch.h"
#include "fx-file.h"
#include "fx-search.h"
#include "fx-model.h"
#include "fx-st.h"
#include "fx-stage.h"
#include "fx-synth.h"
#include "fx-lowrank.h"
#include "fx-quant.h"
#include "fx-runtime.h"

static char tmpdir[256];

static char *tpath(const char *name)
{
	static char buf[8][512];
	static int k;

	k = (k + 1) % 8;
	snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
	return buf[k];
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb; (void)flag; (void)ftw;
	return remove(p);
}

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/fx-test-lowrank.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- deterministic data ------------------------------------------------ */

static uint64_t rng_state;

static void rng_seed(uint64_t s)
{
	rng_state = s * 0x9e3779b97f4a7c15ull + 1;
}

static double urand(void)
{
	uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	z ^= z >> 31;
	return (double)(z >> 11) * (1.0 / 9007199254740992.0);
}

static float nrand(void)
{
	double s = 0;
	for (int i = 0; i < 12; i++)
		s += urand();
	return (float)(s - 6.0);
}

static float bf16(float v)
{
	return fx_bf16_to_f32(fx_f32_to_bf16(v));
}

static float gelu(float v)
{
	return 0.5f * v * (1.0f + tanhf(0.7978845608f * (v + 0.044715f * v * v * v)));
}

/* Calibration-like rows: per-channel scales (log-normal) and a few outlier
 * channels 20-50x larger; GELU outputs for fc2 inputs. BF16 values. */
static void gen_rows(float *x, float *xmax, int64_t m, int64_t k, bool gelu_in, uint64_t seed)
{
	float *cs = malloc((size_t)k * sizeof(float));

	rng_seed(seed);
	for (int64_t j = 0; j < k; j++) {
		cs[j] = expf(0.5f * nrand());
		if (urand() < 0.02)
			cs[j] *= 20.0f + 30.0f * (float)urand();
	}
	for (int64_t j = 0; j < k; j++)
		xmax[j] = 0.0f;
	for (int64_t i = 0; i < m; i++)
		for (int64_t j = 0; j < k; j++) {
			float v = nrand() * cs[j];
			v = bf16(gelu_in ? gelu(v) : v);
			x[i * k + j] = v;
			xmax[j] = fabsf(v) > xmax[j] ? fabsf(v) : xmax[j];
		}
	free(cs);
}

static void gen_weight(float *w, int64_t n, int64_t k, uint64_t seed)
{
	rng_seed(seed);
	for (int64_t i = 0; i < n; i++) {
		float rs = expf(0.3f * nrand());
		for (int64_t j = 0; j < k; j++)
			w[i * k + j] = bf16(nrand() * rs / sqrtf((float)k) * (j % 61 == 0 ? 8.0f : 1.0f));
	}
}

/* ---- small kernels ----------------------------------------------------- */

static void test_candidates(void **state)
{
	float a[256], b[256];
	struct fx_err err = {0};
	int n, i, half;

	(void)state;
	n = fx_lowrank_candidates(a, b, 256, 20, &err);
	assert_int_equal(n, 39);
	assert_true(a[0] == 0.0f && b[0] == 0.0f);
	for (i = 1; i < 20; i++)
		assert_true(fabsf(a[i] - i / 20.0f) < 1e-6f && b[i] == 0.0f);
	half = 0;
	for (i = 20; i < 39; i++) {
		assert_true(fabsf(a[i] + b[i] - 1.0f) < 1e-6f && b[i] > 0.0f);
		half += fabsf(a[i] - 0.5f) < 1e-6f;
	}
	assert_int_equal(half, 1);
	assert_int_equal(fx_lowrank_candidates(a, b, 256, 10, &err), 19);
	assert_int_equal(fx_lowrank_candidates(a, b, 256, 1, &err), 1);
	assert_int_equal(fx_lowrank_candidates(a, b, 256, 0, &err), FX_E_ARG);
	assert_int_equal(fx_lowrank_candidates(a, b, 10, 20, &err), FX_E_ARG);
}

static void test_smooth(void **state)
{
	float xmax[4] = { 4.0f, 0.0f, 9.0f, 1.0f }, wmax[4] = { 1.0f, 2.0f, 0.25f, 1.0f }, s[4];

	(void)state;
	fx_lowrank_smooth(s, xmax, wmax, 4, 0.0f, 0.0f);
	for (int i = 0; i < 4; i++)
		assert_true(s[i] == 1.0f);
	fx_lowrank_smooth(s, xmax, wmax, 4, 0.5f, 0.5f);
	assert_true(s[0] == 2.0f && s[1] == 1.0f && s[2] == 6.0f && s[3] == 1.0f);
	for (int i = 0; i < 4; i++)
		assert_true(s[i] == bf16(s[i]));
	wmax[3] = 0.0f;  /* 1^0.5 / 0^0.5 = inf: the whole vector falls back to ones */
	fx_lowrank_smooth(s, xmax, wmax, 4, 0.5f, 0.5f);
	for (int i = 0; i < 4; i++)
		assert_true(s[i] == 1.0f);
}

/* The fast activation path equals fx_actq_*_ref applied to the runtime's x'. */
static void check_actq(enum fx_qprec p, bool shift)
{
	const int64_t m = 24, k = 256;
	const float c = shift ? FX_LOWRANK_SHIFT : 0.0f;
	float *x = malloc(m * k * 4), *xq = malloc(m * k * 4), *s = malloc(k * 4), *xmax = malloc(k * 4);
	float xp[256], qa[256], sa[16];
	struct fx_err err = {0};

	gen_rows(x, xmax, m, k, shift, 7);
	for (int64_t j = 0; j < k; j++)
		s[j] = bf16(expf(nrand()));
	for (int64_t j = 0; j < 64; j++)      /* a zero group in row 3 */
		x[3 * k + 64 + j] = shift ? -c : 0.0f;
	x[5 * k + 7] = 1e6f;                  /* NVFP4 scale saturates at 448 */
	assert_int_equal(fx_lowrank_actq_cpu(xq, x, s, m, k, p, shift, &err), 0);
	for (int64_t i = 0; i < m; i++) {
		int64_t G = p == FX_QPREC_NVFP4 ? 16 : 64;
		for (int64_t j = 0; j < k; j++)
			xp[j] = bf16(bf16(bf16(x[i * k + j]) + c) / s[j]);
		if (p == FX_QPREC_NVFP4)
			assert_int_equal(fx_actq_nvfp4_ref(qa, sa, xp, k, &err), 0);
		else
			assert_int_equal(fx_actq_int4_ref(qa, sa, xp, k, shift, &err), 0);
		for (int64_t j = 0; j < k; j++) {
			float want = qa[j] * sa[j / G] - (shift ? c / s[j] : 0.0f);
			if (xq[i * k + j] != want)
				fail_msg("row %lld col %lld: %g != %g", (long long)i, (long long)j,
					 xq[i * k + j], want);
		}
	}
	free(x); free(xq); free(s); free(xmax);
}

static void test_actq_matches_ref(void **state)
{
	(void)state;
	check_actq(FX_QPREC_NVFP4, false);
	check_actq(FX_QPREC_INT4, false);
	check_actq(FX_QPREC_INT4, true);
}

/* The fast residual quant-dequant equals fx_quant_*_cpu + fx_dequant_*_cpu. */
static void test_resq_matches_quant(void **state)
{
	const int64_t n = 96, k = 256;
	const int64_t rows[3] = { 32, 48, 16 };
	float *w = malloc(n * k * 4), *a = malloc(n * k * 4), *b = malloc(n * k * 4), rs[96];
	uint8_t *codes = malloc(n * k / 2), *sc8 = malloc(n * k / 16);
	uint16_t *sc16 = malloc(n * k / 32);
	struct fx_err err = {0};

	(void)state;
	gen_weight(w, n, k, 3);
	for (int64_t j = 0; j < k; j++)       /* member 1 is 100x larger: its own T */
		for (int64_t i = 32; i < 80; i++)
			w[i * k + j] *= 100.0f;
	memset(w + 5 * k + 16, 0, 64 * 4);    /* zero groups */
	for (int64_t j = 0; j < k; j++)       /* subnormal E4M3 group scales */
		w[7 * k + j] *= 1e-5f * (float)(j % 7);
	memcpy(a, w, n * k * 4);
	assert_int_equal(fx_lowrank_resq_cpu(a, n, k, FX_QPREC_NVFP4, rows, 3, &err), 0);
	assert_int_equal(fx_quant_nvfp4_cpu(codes, sc8, rs, w, n, k, rows, 3, NULL, &err), 0);
	assert_int_equal(fx_dequant_nvfp4_cpu(b, codes, sc8, rs, n, k, &err), 0);
	for (int64_t i = 0; i < n * k; i++)
		if (a[i] != b[i])
			fail_msg("nvfp4 element %lld: %g != %g", (long long)i, a[i], b[i]);
	memcpy(a, w, n * k * 4);
	assert_int_equal(fx_lowrank_resq_cpu(a, n, k, FX_QPREC_INT4, NULL, 0, &err), 0);
	assert_int_equal(fx_quant_int4_cpu(codes, sc16, w, n, k, NULL, &err), 0);
	assert_int_equal(fx_dequant_int4_cpu(b, codes, sc16, n, k, &err), 0);
	for (int64_t i = 0; i < n * k; i++)
		if (a[i] != b[i])
			fail_msg("int4 element %lld: %g != %g", (long long)i, a[i], b[i]);
	assert_int_equal(fx_lowrank_resq_cpu(a, n, 100, FX_QPREC_INT4, NULL, 0, &err), FX_E_ARG);
	free(w); free(a); free(b); free(codes); free(sc8); free(sc16);
}

/* ---- SVD ---------------------------------------------------------------- */

/* ‖A·diag(s) − up·down‖_F */
static double recon_err(const float *a, const float *s, const float *up, const float *down,
			int64_t n, int64_t k, int r)
{
	float *l = malloc(n * k * 4);
	double e = 0;

	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)k, r, 1.0f, up, r, down,
		    (int)k, 0.0f, l, (int)k);
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = 0; j < k; j++) {
			double d = (double)a[i * k + j] * (s ? s[j] : 1.0f) - l[i * k + j];
			e += d * d;
		}
	free(l);
	return sqrt(e);
}

static void test_rsvd_matches_lapack(void **state)
{
	const int64_t n = 384, k = 256;
	const int r = 32;
	float *a = malloc(n * k * 4), *u = malloc(n * k * 4), *v = malloc(k * k * 4), s[256];
	float *up1 = malloc(n * r * 4), *dn1 = malloc(r * k * 4);
	float *up2 = malloc(n * r * 4), *dn2 = malloc(r * k * 4);
	struct fx_err err = {0};

	(void)state;
	/* A = U·diag(σ)·Vᵀ + noise with σ_i = 10/(1+i): a decaying spectrum */
	gen_weight(u, n, k, 11);
	gen_weight(v, k, k, 12);
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = 0; j < k; j++)
			u[i * k + j] *= 10.0f / (1.0f + (float)j);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)k, (int)k, 1.0f, u, (int)k,
		    v, (int)k, 0.0f, a, (int)k);
	rng_seed(13);
	for (int64_t i = 0; i < n * k; i++)
		a[i] += 0.01f * nrand();
	for (int64_t j = 0; j < k; j++)
		s[j] = expf(0.5f * nrand());

	for (int pass = 0; pass < 2; pass++) {
		const float *sp = pass ? s : NULL;
		double e1, e2, maxcos = 0;

		assert_int_equal(fx_lowrank_svd_cpu(up1, dn1, a, sp, n, k, r, &err), 0);
		assert_int_equal(fx_lowrank_rsvd_cpu(up2, dn2, NULL, false, a, sp, n, k, r, 16, 2, 1, &err), 0);
		e1 = recon_err(a, sp, up1, dn1, n, k, r);
		e2 = recon_err(a, sp, up2, dn2, n, k, r);
		print_message("# svd %s: reconstruction %.6g (LAPACK) vs %.6g (rsvd)\n",
			      sp ? "of A·diag(s)" : "of A", e1, e2);
		assert_true(e2 <= e1 * 1.002);
		/* the leading right singular vectors agree (up to sign) */
		for (int j = 0; j < 8; j++) {
			double dot = 0, n1 = 0, n2 = 0;
			for (int64_t i = 0; i < k; i++) {
				dot += (double)dn1[j * k + i] * dn2[j * k + i];
				n1 += (double)dn1[j * k + i] * dn1[j * k + i];
				n2 += (double)dn2[j * k + i] * dn2[j * k + i];
			}
			assert_true(fabs(n1 - 1) < 1e-4 && fabs(n2 - 1) < 1e-4);
			assert_true(fabs(dot) > 0.999);
			maxcos = fmax(maxcos, fabs(dot));
		}
		/* singular values |up_j|: the leading ones tightly; near the cut,
		 * where σ_31/σ_32 is only 3% apart, rsvd converges more slowly */
		for (int j = 0; j < r; j++) {
			double s1 = 0, s2 = 0;
			for (int64_t i = 0; i < n; i++) {
				s1 += (double)up1[i * r + j] * up1[i * r + j];
				s2 += (double)up2[i * r + j] * up2[i * r + j];
			}
			assert_true(fabs(sqrt(s1) - sqrt(s2)) <= (j < 16 ? 1e-3 : 2e-2) * sqrt(s1));
		}
	}
	assert_int_equal(fx_lowrank_svd_cpu(up1, dn1, a, NULL, n, k, 300, &err), FX_E_ARG);
	free(a); free(u); free(v); free(up1); free(dn1); free(up2); free(dn2);
}

/* ---- the search ------------------------------------------------------- */

struct prob {
	float *w, *x, *xmax;
	struct fx_lowrank_problem p;
	int64_t rows[3];
};

static void prob_init(struct prob *pr, int64_t n, int64_t k, int64_t m, enum fx_qprec prec,
		      bool shift, uint64_t seed)
{
	pr->w = malloc(n * k * 4);
	pr->x = malloc(m * k * 4);
	pr->xmax = malloc(k * 4);
	gen_weight(pr->w, n, k, seed);
	gen_rows(pr->x, pr->xmax, m, k, shift, seed + 100);
	memset(&pr->p, 0, sizeof(pr->p));
	pr->p.prec = prec;
	pr->p.n = n;
	pr->p.k = k;
	pr->p.w = pr->w;
	pr->p.m = m;
	pr->p.x = pr->x;
	pr->p.xmax = pr->xmax;
	pr->p.shift = shift;
	if (n % 3 == 0) {
		pr->rows[0] = pr->rows[1] = pr->rows[2] = n / 3;
		pr->p.member_rows = pr->rows;
		pr->p.nmember = 3;
	}
}

static void prob_free(struct prob *pr)
{
	free(pr->w); free(pr->x); free(pr->xmax);
}

static double run_search(const struct prob *pr, int rank, int grid, int iters,
			 struct fx_lowrank_result *out_res, float **s_out, float **d_out, float **u_out)
{
	struct fx_lowrank_opts o;
	struct fx_lowrank_result res = {0};
	struct fx_err err = {0};
	int ret;

	fx_lowrank_opts_init(&o);
	o.rank = rank;
	o.grid = grid;
	o.iters = iters;
	res.smooth = malloc(pr->p.k * 4);
	res.down = malloc((size_t)rank * pr->p.k * 4);
	res.up = malloc((size_t)pr->p.n * rank * 4);
	ret = fx_lowrank_group_cpu(&res, &pr->p, &o, &err);
	if (ret)
		fail_msg("search: %s", err.msg);
	if (out_res)
		*out_res = res;
	if (s_out) {
		*s_out = res.smooth;
		*d_out = res.down;
		*u_out = res.up;
	} else {
		free(res.smooth); free(res.down); free(res.up);
	}
	return res.err_final;
}

static void check_gain(enum fx_qprec prec, bool shift)
{
	struct prob pr;
	struct fx_lowrank_result r32, r64;
	float *s, *d, *u;
	double e, e128;
	struct fx_err err = {0};

	prob_init(&pr, 384, 256, 256, prec, shift, 21);
	run_search(&pr, 32, 20, 2, &r32, &s, &d, &u);
	print_message("# %s%s: rtn %.4e, alpha %.2f beta %.2f, branch %.4e, final %.4e (%d rounds)\n",
		      prec == FX_QPREC_NVFP4 ? "nvfp4" : "int4", shift ? " shifted" : "", r32.err_rtn,
		      r32.alpha, r32.beta, r32.err_branch, r32.err_final, r32.rounds);
	/* the 20 even candidates of 39, then the odd neighbours of the best 5 */
	assert_in_range(r32.candidates, 21, 30);
	assert_true(r32.err_final < r32.err_rtn / 3);
	assert_true(r32.err_final <= r32.err_branch);
	for (int64_t j = 0; j < pr.p.k; j++)
		assert_true(s[j] > 0 && s[j] == bf16(s[j]));
	/* the objective recomputed from the outputs */
	assert_int_equal(fx_lowrank_error_cpu(&e, &pr.p, s, d, u, 32, &err), 0);
	assert_true(fabs(e - r32.err_final) <= 1e-5 * r32.err_final);
	free(s); free(d); free(u);
	run_search(&pr, 64, 20, 2, &r64, NULL, NULL, NULL);
	e128 = run_search(&pr, 128, 20, 2, NULL, NULL, NULL, NULL);
	print_message("#   rank 32 %.4e, rank 64 %.4e, rank 128 %.4e\n", r32.err_final, r64.err_final, e128);
	assert_true(r64.err_final < r32.err_final);
	assert_true(e128 < r64.err_final);
	prob_free(&pr);
}

static void test_search_beats_rtn_nvfp4(void **state)
{
	(void)state;
	check_gain(FX_QPREC_NVFP4, false);
}

static void test_search_beats_rtn_int4(void **state)
{
	(void)state;
	check_gain(FX_QPREC_INT4, false);
	check_gain(FX_QPREC_INT4, true);
}

/* ‖E‖² and ‖Ea‖² + w·‖Ew‖² of a result over all rows, in f64 from the
 * definitions (fx-lowrank.h): E = X·Wᵀ − Xq·Rdqᵀ − X·bf16(down/s)ᵀ·bf16(up)ᵀ,
 * Ea = (X̃ − Xq)·Rdqᵀ, X̃ = bf16(bf16(x + c)/s) − c/s, Ew = E − Ea. */
static void score_of(const struct fx_lowrank_problem *p, const struct fx_lowrank_result *r, int rank,
		     double w, double *e_out, double *score_out)
{
	const int64_t n = p->n, k = p->k, m = p->m;
	const float c = p->shift ? FX_LOWRANK_SHIFT : 0.0f;
	float *xq = malloc(m * k * 4), *rdq = malloc(n * k * 4);
	double *xd = malloc(m * k * 8), *xl = malloc(m * (size_t)rank * 8), e = 0, sc = 0;
	struct fx_err err = {0};

	assert_int_equal(fx_lowrank_actq_cpu(xq, p->x, r->smooth, m, k, p->prec, p->shift, &err), 0);
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = 0; j < k; j++) {
			double acc = (double)p->w[i * k + j] * r->smooth[j];
			for (int q = 0; q < rank; q++)
				acc -= (double)r->up[i * rank + q] * r->down[q * k + j];
			rdq[i * k + j] = (float)acc;
		}
	assert_int_equal(fx_lowrank_resq_cpu(rdq, n, k, p->prec, p->member_rows, p->nmember, &err), 0);
	for (int64_t i = 0; i < m; i++) {
		for (int64_t j = 0; j < k; j++) {
			float xp = bf16(bf16(bf16(p->x[i * k + j]) + c) / r->smooth[j]);
			xd[i * k + j] = (double)xp - c / r->smooth[j] - xq[i * k + j];
		}
		for (int q = 0; q < rank; q++) {
			double acc = 0;
			for (int64_t j = 0; j < k; j++)
				acc += (double)p->x[i * k + j] * bf16(r->down[q * k + j] / r->smooth[j]);
			xl[i * rank + q] = acc;
		}
	}
	for (int64_t i = 0; i < m; i++)
		for (int64_t o = 0; o < n; o++) {
			double y = 0, yq = 0, ea = 0;
			for (int64_t j = 0; j < k; j++) {
				y += (double)p->x[i * k + j] * p->w[o * k + j];
				yq += (double)xq[i * k + j] * rdq[o * k + j];
				ea += xd[i * k + j] * rdq[o * k + j];
			}
			for (int q = 0; q < rank; q++)
				yq += xl[i * rank + q] * bf16(r->up[o * rank + q]);
			e += (y - yq) * (y - yq);
			sc += ea * ea + w * (y - yq - ea) * (y - yq - ea);
		}
	*e_out = e;
	*score_out = sc;
	free(xq); free(rdq); free(xd); free(xl);
}

/* gptq_weight: the search ranks by ‖Ea‖² + w·‖Ew‖² (each search is best at
 * its own objective, recomputed here from the definitions) but reports
 * true RTN errors. */
static void check_gptq_score(enum fx_qprec prec, bool shift)
{
	struct prob pr;
	struct fx_lowrank_opts o;
	struct fx_lowrank_result a = {0}, b = {0};
	struct fx_err err = {0};
	double e, ea, eb, sa, sb;

	prob_init(&pr, 384, 256, 256, prec, shift, 23);
	fx_lowrank_opts_init(&o);
	o.iters = 2;
	o.search_rows = 0;
	a.smooth = malloc(pr.p.k * 4);
	a.down = malloc((size_t)o.rank * pr.p.k * 4);
	a.up = malloc((size_t)pr.p.n * o.rank * 4);
	b.smooth = malloc(pr.p.k * 4);
	b.down = malloc((size_t)o.rank * pr.p.k * 4);
	b.up = malloc((size_t)pr.p.n * o.rank * 4);
	assert_int_equal(fx_lowrank_group_cpu(&a, &pr.p, &o, &err), 0);
	o.gptq_weight = 0.05;
	assert_int_equal(fx_lowrank_group_cpu(&b, &pr.p, &o, &err), 0);
	score_of(&pr.p, &a, o.rank, o.gptq_weight, &ea, &sa);
	score_of(&pr.p, &b, o.rank, o.gptq_weight, &eb, &sb);
	print_message("# %s%s: rtn-judged alpha %.2f beta %.2f error %.4e score %.4e; gptq-judged "
		      "alpha %.2f beta %.2f error %.4e score %.4e\n",
		      prec == FX_QPREC_NVFP4 ? "nvfp4" : "int4", shift ? " shifted" : "", a.alpha, a.beta,
		      ea, sa, b.alpha, b.beta, eb, sb);
	assert_true(a.err_rtn == b.err_rtn);
	assert_int_equal(fx_lowrank_error_cpu(&e, &pr.p, b.smooth, b.down, b.up, o.rank, &err), 0);
	assert_true(fabs(e - b.err_final) <= 1e-5 * b.err_final);
	assert_true(sb <= sa);
	assert_true(ea <= eb);
	if (prec == FX_QPREC_INT4)   /* here the two choices differ */
		assert_true(sb < sa && ea < eb && b.alpha != a.alpha);
	o.gptq_weight = 1.5;
	assert_int_equal(fx_lowrank_group_cpu(&b, &pr.p, &o, &err), FX_E_ARG);
	o.gptq_weight = NAN;
	assert_int_equal(fx_lowrank_group_cpu(&b, &pr.p, &o, &err), FX_E_ARG);
	free(a.smooth); free(a.down); free(a.up);
	free(b.smooth); free(b.down); free(b.up);
	prob_free(&pr);
}

static void test_gptq_score(void **state)
{
	(void)state;
	check_gptq_score(FX_QPREC_NVFP4, false);
	check_gptq_score(FX_QPREC_INT4, false);
	check_gptq_score(FX_QPREC_INT4, true);
}

static void test_svd_method_agrees(void **state)
{
	struct prob pr;
	struct fx_lowrank_opts o;
	struct fx_lowrank_result a = {0}, b = {0};
	struct fx_err err = {0};

	(void)state;
	prob_init(&pr, 256, 256, 128, FX_QPREC_NVFP4, false, 31);
	fx_lowrank_opts_init(&o);
	o.grid = 5;
	a.smooth = malloc(256 * 4); a.down = malloc(32 * 256 * 4); a.up = malloc(256 * 32 * 4);
	b.smooth = malloc(256 * 4); b.down = malloc(32 * 256 * 4); b.up = malloc(256 * 32 * 4);
	assert_int_equal(fx_lowrank_group_cpu(&a, &pr.p, &o, &err), 0);
	o.method = FX_LOWRANK_SVD;
	assert_int_equal(fx_lowrank_group_cpu(&b, &pr.p, &o, &err), 0);
	print_message("# rsvd %.5e (alpha %.2f), svd %.5e (alpha %.2f)\n", a.err_final, a.alpha,
		      b.err_final, b.alpha);
	assert_true(fabs(a.err_final - b.err_final) < 0.03 * b.err_final);
	assert_true(fabs(a.err_rtn - b.err_rtn) == 0);
	free(a.smooth); free(a.down); free(a.up); free(b.smooth); free(b.down); free(b.up);
	prob_free(&pr);
}

/* The objective equals the error of the runtime reference fed with what
 * fx-quant and fx-pack would make of the result. */
static void check_runtime(enum fx_qprec prec, bool shift)
{
	const int r = 32;
	struct prob pr;
	struct fx_lowrank_result res;
	float *s, *d, *u, *R, *rdq, *ld, *y, *yr, *bias = NULL, rs[384];
	uint8_t *codes;
	void *scales;
	struct fx_rt_w4a4 mod = {0};
	struct fx_err err = {0};
	int64_t n = 384, k = 256, m = 128;
	double num = 0, den = 0, rel;

	prob_init(&pr, n, k, m, prec, shift, 41);
	run_search(&pr, r, 6, 1, &res, &s, &d, &u);
	R = malloc(n * k * 4); rdq = malloc(n * k * 4); ld = malloc(k * r * 4);
	y = malloc(m * n * 4); yr = malloc(m * n * 4);
	codes = malloc(n * k / 2); scales = malloc(n * k / 16 * 2);
	/* R from the f32 branch (fx-quant's); the module gets the branch as
	 * the checkpoint stores it (BF16 lora_up, lora_down = down/s) */
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)n, (int)k, r, 1.0f, u, r, d,
		    (int)k, 0.0f, R, (int)k);
	for (int64_t i = 0; i < n; i++)
		for (int64_t j = 0; j < k; j++)
			R[i * k + j] = pr.w[i * k + j] * s[j] - R[i * k + j];
	if (prec == FX_QPREC_NVFP4) {
		assert_int_equal(fx_quant_nvfp4_cpu(codes, scales, rs, R, n, k, pr.rows, 3, NULL, &err), 0);
		assert_int_equal(fx_dequant_nvfp4_cpu(rdq, codes, scales, rs, n, k, &err), 0);
		mod.wcscales = rs;
	} else {
		assert_int_equal(fx_quant_int4_cpu(codes, scales, R, n, k, NULL, &err), 0);
		assert_int_equal(fx_dequant_int4_cpu(rdq, codes, scales, n, k, &err), 0);
	}
	for (int64_t j = 0; j < k; j++)
		for (int i = 0; i < r; i++)
			ld[j * r + i] = bf16(d[i * k + j] / s[j]);
	for (int64_t i = 0; i < n * r; i++)
		u[i] = bf16(u[i]);
	if (shift) {
		bias = malloc(n * 4);
		assert_int_equal(fx_rt_fc2_bias(bias, NULL, rdq, s, n, k, FX_LOWRANK_SHIFT, &err), 0);
	}
	mod.prec = prec;
	mod.n = n; mod.k = k; mod.r = r;
	mod.codes = codes; mod.wscales = scales;
	mod.smooth = s; mod.lora_down = ld; mod.lora_up = u; mod.bias = bias;
	mod.fc2_shift = shift;
	assert_int_equal(fx_rt_w4a4_forward_ref(yr, &mod, pr.x, m, 0, &err), 0);
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)m, (int)n, (int)k, 1.0f, pr.x, (int)k,
		    pr.w, (int)k, 0.0f, y, (int)n);
	for (int64_t i = 0; i < m * n; i++) {
		num += ((double)y[i] - yr[i]) * ((double)y[i] - yr[i]);
		den += (double)y[i] * y[i];
	}
	rel = num / den;
	print_message("# %s%s: search error %.5e, runtime reference %.5e\n",
		      prec == FX_QPREC_NVFP4 ? "nvfp4" : "int4", shift ? " shifted" : "", res.err_final, rel);
	/* the runtime also rounds its outputs to BF16 (~2^-9 relative) */
	assert_true(fabs(rel - res.err_final) < 0.03 * res.err_final);
	free(s); free(d); free(u); free(R); free(rdq); free(ld); free(y); free(yr); free(codes);
	free(scales); free(bias);
	prob_free(&pr);
}

static void test_error_matches_runtime(void **state)
{
	(void)state;
	check_runtime(FX_QPREC_NVFP4, false);
	check_runtime(FX_QPREC_INT4, false);
	check_runtime(FX_QPREC_INT4, true);
}

/* ---- the stage ---------------------------------------------------------- */

static void mk_model(const char *dir, enum fx_layout layout, int hidden, uint64_t seed)
{
	struct fx_synth_opts o;
	struct fx_err err = {0};

	fx_synth_opts_init(&o);
	o.layout = layout;
	o.num_double = 1;
	o.num_single = 1;
	o.hidden = hidden;
	o.seed = seed;
	o.force = true;
	if (fx_synth_model(dir, &o, &err))
		fail_msg("fx_synth_model: %s", err.msg);
}

static uint64_t name_seed(const char *s)
{
	uint64_t h = 1469598103934665603ull;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 1099511628211ull;
	return h;
}

/* A calib file for every group of the model, as fx-calib writes it (the
 * stages check their inputs as fx-verify does): the rows depend only on
 * the group name and shape, so an edited model gets the same rows. */
static void mk_calib(const char *path, const char *model, int64_t m, bool bad_shape)
{
	struct fx_model *md = NULL;
	struct fx_stage *s = NULL;
	struct fx_err err = {0};
	char id[65], name[200];
	size_t i;

	if (fx_model_open(&md, model, &err) || fx_stage_new(&s, "test-lowrank", FX_FMT_CALIB, path, &err) ||
	    fx_input_id(id, model, &err))
		fail_msg("calib: %s", err.msg);
	fx_stage_input_id(s, "model", id);
	fx_stage_param_int(s, "rows", m);
	assert_true(fx_stage_check(s, true, &err) >= 0);
	for (i = 0; i < fx_model_ngroups(md); i++) {
		const struct fx_group *g = fx_model_group(md, i);
		int64_t k = g->k + (bad_shape ? 64 : 0), shp[2] = { m, k };

		snprintf(name, sizeof(name), "%s.absmax", g->name);
		assert_int_equal(fx_stage_add(s, name, FX_F32, 1, &k, &err), 0);
		snprintf(name, sizeof(name), "%s.samples", g->name);
		assert_int_equal(fx_stage_add(s, name, FX_BF16, 2, shp, &err), 0);
	}
	assert_int_equal(fx_stage_begin(s, &err), 0);
	for (i = 0; i < fx_model_ngroups(md); i++) {
		const struct fx_group *g = fx_model_group(md, i);
		int64_t k = g->k + (bad_shape ? 64 : 0);
		float *x = malloc(m * k * 4), *xmax = malloc(k * 4);
		uint16_t *xb = malloc(m * k * 2);

		gen_rows(x, xmax, m, k, g->gelu_input, name_seed(g->name) ^ (uint64_t)k);
		for (int64_t j = 0; j < m * k; j++)
			xb[j] = fx_f32_to_bf16(x[j]);
		snprintf(name, sizeof(name), "%s.absmax", g->name);
		assert_int_equal(fx_stage_write(s, name, xmax, k * 4, &err), 0);
		snprintf(name, sizeof(name), "%s.samples", g->name);
		assert_int_equal(fx_stage_write(s, name, xb, m * k * 2, &err), 0);
		free(x); free(xmax); free(xb);
	}
	if (fx_stage_commit(s, &err))
		fail_msg("calib commit: %s", err.msg);
	fx_stage_free(s);
	fx_model_close(md);
}

/* Runs the stage; returns its status and the computed/reused lists. */
static int run_stage(const char *model, const char *calib, const char *out, int rank,
		     const char *precision, int first, int last, bool *utd, json_t **report,
		     struct fx_err *err)
{
	struct fx_lowrank_stage_opts o;
	struct fx_stage *s = NULL;
	int ret;

	fx_lowrank_stage_opts_init(&o);
	o.model = model;
	o.calib = calib;
	o.output = out;
	o.rank = rank;
	o.precision = precision;
	o.grid = 4;
	o.iters = 1;
	o.first_block = first;
	o.last_block = last;
	ret = fx_lowrank_run(&o, utd, &s, err);
	if (report) {
		*report = NULL;
		if (ret == 0) {
			char *js = fx_stage_report_json(s, *utd);
			*report = json_loads(js, 0, NULL);
			free(js);
		}
	}
	fx_stage_free(s);
	return ret;
}

static size_t count(json_t *rep, const char *key)
{
	return json_array_size(json_object_get(rep, key));
}

static bool listed(json_t *rep, const char *key, const char *name)
{
	json_t *a = json_object_get(rep, key), *v;
	size_t i;

	json_array_foreach(a, i, v)
		if (!strcmp(json_string_value(v), name))
			return true;
	return false;
}

static const char *const dgroups[] = { "qkv_proj", "qkv_proj_context", "out_proj", "out_proj_context",
				       "mlp_fc1", "mlp_fc2", "mlp_context_fc1", "mlp_context_fc2" };
static const char *const sgroups[] = { "qkv_proj", "mlp_fc1", "mlp_fc2", "out_proj" };

static void test_stage_output(void **state)
{
	const char *model = tpath("m"), *calib = tpath("c.safetensors"), *out = tpath("b.safetensors");
	struct fx_err err = {0};
	struct fx_st *st = NULL;
	json_t *rep, *params;
	bool utd;
	int64_t D = 256, F = 1024;

	(void)state;
	mk_model(model, FX_LAYOUT_DIFFUSERS, 256, 1);
	mk_calib(calib, model, 96, false);
	if (run_stage(model, calib, out, 32, "int4", -1, -1, &utd, &rep, &err))
		fail_msg("stage: %s", err.msg);
	assert_false(utd);
	assert_int_equal(count(rep, "computed"), 12);
	json_decref(rep);
	assert_int_equal(fx_st_open(&st, out, &err), 0);
	assert_int_equal(fx_file_expect(st, FX_FMT_BRANCH, "test", &err), 0);
	assert_int_equal(fx_file_check_crc(st, &err), 0);
	assert_string_equal(fx_st_meta(st, "fx.model"),
			    "{\"num_double\":1,\"num_single\":1,\"hidden\":256,\"mlp_hidden\":1024}");
	params = json_loads(fx_st_meta(st, "fx.params"), 0, NULL);
	assert_int_equal(json_integer_value(json_object_get(params, "rank")), 32);
	assert_int_equal(json_integer_value(json_object_get(params, "grid")), 4);
	assert_int_equal(json_integer_value(json_object_get(params, "iters")), 1);
	assert_string_equal(json_string_value(json_object_get(params, "precision")), "int4");
	assert_string_equal(json_string_value(json_object_get(params, "method")), "rsvd");
	assert_string_equal(json_string_value(json_object_get(params, "blocks")), "0-1");
	json_decref(params);
	assert_int_equal(fx_st_count(st), 12 * 5);
	for (int single = 0; single < 2; single++) {
		size_t ng = single ? 4 : 8;
		for (size_t i = 0; i < ng; i++) {
			const char *f = single ? sgroups[i] : dgroups[i];
			const char *pre = single ? "single_transformer_blocks.0" : "transformer_blocks.0";
			int64_t N = strstr(f, "qkv") ? 3 * D : strstr(f, "fc1") ? F : D;
			int64_t K = strstr(f, "fc2") ? F : D;
			const struct fx_tensor *t;
			const float *stats;
			char name[200];

			snprintf(name, sizeof(name), "%s.%s.smooth", pre, f);
			assert_non_null(t = fx_st_find(st, name));
			assert_true(t->dtype == FX_F32 && t->ndim == 1 && t->shape[0] == K);
			snprintf(name, sizeof(name), "%s.%s.down", pre, f);
			assert_non_null(t = fx_st_find(st, name));
			assert_true(t->ndim == 2 && t->shape[0] == 32 && t->shape[1] == K);
			snprintf(name, sizeof(name), "%s.%s.up", pre, f);
			assert_non_null(t = fx_st_find(st, name));
			assert_true(t->ndim == 2 && t->shape[0] == N && t->shape[1] == 32);
			snprintf(name, sizeof(name), "%s.%s.splits", pre, f);
			assert_non_null(t = fx_st_find(st, name));
			assert_true(t->dtype == FX_I64 && t->shape[0] == (strstr(f, "qkv") ? 4 : 2));
			assert_true(((const int64_t *)t->data)[t->shape[0] - 1] == N);
			snprintf(name, sizeof(name), "%s.%s.stats", pre, f);
			assert_non_null(t = fx_st_find(st, name));
			assert_int_equal(t->shape[0], FX_BRANCH_STAT_COUNT);
			stats = t->data;
			assert_true(stats[FX_BRANCH_STAT_ERR_FINAL] < stats[FX_BRANCH_STAT_ERR_RTN] / 2);
		}
	}
	assert_null(fx_st_find(st, "transformer_blocks.0.norm1.linear.smooth"));
	fx_st_close(st);
}

/* Copies a diffusers model, negating two of block 0's tensors. */
static void edit_model(const char *src, const char *dst)
{
	static const char *const edit[] = { "transformer_blocks.0.attn.to_q.weight",
					    "transformer_blocks.0.ff.net.2.weight" };
	char in[600], out[600], *cfg = NULL;
	struct fx_st *st = NULL;
	struct fx_stw *w = NULL;
	struct fx_err err = {0};
	size_t len, i;
	int fd;
	FILE *f;

	mkdir(dst, 0755);
	snprintf(in, sizeof(in), "%s/config.json", src);
	snprintf(out, sizeof(out), "%s/config.json", dst);
	f = fopen(in, "rb");
	assert_non_null(f);
	cfg = malloc(1 << 16);
	len = fread(cfg, 1, 1 << 16, f);
	fclose(f);
	f = fopen(out, "wb");
	fwrite(cfg, 1, len, f);
	fclose(f);
	free(cfg);
	snprintf(in, sizeof(in), "%s/diffusion_pytorch_model.safetensors", src);
	snprintf(out, sizeof(out), "%s/diffusion_pytorch_model.safetensors", dst);
	assert_int_equal(fx_st_open(&st, in, &err), 0);
	assert_int_equal(fx_stw_new(&w, 0, &err), 0);
	for (i = 0; i < fx_st_count(st); i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		assert_int_equal(fx_stw_add(w, t->name, t->dtype, t->ndim, t->shape, &err), 0);
	}
	fd = open(out, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	for (i = 0; i < fx_st_count(st); i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		bool neg = !strcmp(t->name, edit[0]) || !strcmp(t->name, edit[1]);
		uint16_t *b = malloc(t->nbytes);

		memcpy(b, t->data, t->nbytes);
		for (size_t j = 0; neg && j < t->nbytes / 2; j++)
			b[j] ^= 0x8000;
		assert_int_equal(fx_stw_write(w, t->name, b, t->nbytes, &err), 0);
		free(b);
	}
	assert_int_equal(fx_stw_finish(w, &err), 0);
	close(fd);
	fx_stw_free(w);
	fx_st_close(st);
}

static void test_stage_caching(void **state)
{
	const char *model = tpath("m"), *calib = tpath("c.safetensors"), *out = tpath("cache.safetensors");
	const char *model2 = tpath("m2"), *calib2 = tpath("c2.safetensors");
	struct fx_err err = {0};
	json_t *rep;
	bool utd;

	(void)state;
	/* model and calib of test_stage_output */
	assert_int_equal(run_stage(model, calib, out, 32, "fp4", -1, -1, &utd, &rep, &err), 0);
	assert_false(utd);
	assert_int_equal(count(rep, "computed"), 12);
	json_decref(rep);
	/* unchanged: up to date */
	assert_int_equal(run_stage(model, calib, out, 32, "fp4", -1, -1, &utd, &rep, &err), 0);
	assert_true(utd);
	assert_int_equal(count(rep, "computed") + count(rep, "reused"), 0);
	json_decref(rep);
	/* another rank: every layer again */
	assert_int_equal(run_stage(model, calib, out, 48, "fp4", -1, -1, &utd, &rep, &err), 0);
	assert_false(utd);
	assert_int_equal(count(rep, "computed"), 12);
	assert_int_equal(count(rep, "reused"), 0);
	json_decref(rep);
	/* an edited model: only the groups of the edited tensors */
	edit_model(model, model2);
	mk_calib(calib2, model2, 96, false);
	assert_int_equal(run_stage(model2, calib2, out, 48, "fp4", -1, -1, &utd, &rep, &err), 0);
	assert_false(utd);
	assert_int_equal(count(rep, "computed"), 2);
	assert_true(listed(rep, "computed", "transformer_blocks.0.qkv_proj"));
	assert_true(listed(rep, "computed", "transformer_blocks.0.mlp_fc2"));
	assert_int_equal(count(rep, "reused"), 10);
	json_decref(rep);
	/* a block range of the same output path: its layers are reused */
	assert_int_equal(run_stage(model2, calib2, out, 48, "fp4", 1, 1, &utd, &rep, &err), 0);
	assert_int_equal(count(rep, "computed"), 0);
	assert_int_equal(count(rep, "reused"), 4);
	assert_true(listed(rep, "reused", "single_transformer_blocks.0.qkv_proj"));
	json_decref(rep);
	assert_int_equal(run_stage(model2, calib2, out, 48, "fp4", 0, 5, &utd, NULL, &err), FX_E_ARG);
}

static void test_stage_same_in_bfl_layout(void **state)
{
	const char *bfl = tpath("m.bfl.safetensors"), *calib = tpath("cb.safetensors");
	const char *a = tpath("b.safetensors"), *b = tpath("bfl-branch.safetensors");
	struct fx_err err = {0};
	struct fx_st *sa = NULL, *sb = NULL;
	bool utd;

	(void)state;
	mk_model(bfl, FX_LAYOUT_BFL, 256, 1);
	mk_calib(calib, bfl, 96, false);
	assert_int_equal(run_stage(bfl, calib, b, 32, "int4", -1, -1, &utd, NULL, &err), 0);
	assert_int_equal(fx_st_open(&sa, a, &err), 0);   /* written by test_stage_output */
	assert_int_equal(fx_st_open(&sb, b, &err), 0);
	assert_int_equal(fx_st_count(sa), fx_st_count(sb));
	for (size_t i = 0; i < fx_st_count(sa); i++) {
		const struct fx_tensor *t = fx_st_at(sa, i), *u = fx_st_find(sb, t->name);
		assert_non_null(u);
		assert_int_equal(t->nbytes, u->nbytes);
		if (memcmp(t->data, u->data, t->nbytes))
			fail_msg("tensor '%s' differs between the layouts", t->name);
	}
	fx_st_close(sa);
	fx_st_close(sb);
}

static void test_stage_foreign_calib(void **state)
{
	const char *model = tpath("m"), *other = tpath("other"), *c3 = tpath("c3.safetensors");
	const char *c4 = tpath("c4.safetensors"), *out = tpath("f.safetensors");
	struct fx_err err = {0};
	bool utd;

	(void)state;
	mk_model(other, FX_LAYOUT_DIFFUSERS, 384, 5);
	mk_calib(c3, other, 32, false);
	assert_int_equal(run_stage(model, c3, out, 32, "fp4", -1, -1, &utd, NULL, &err), FX_E_HASH);
	assert_non_null(strstr(err.msg, "another model"));
	assert_int_equal(access(out, F_OK), -1);
	/* right model, wrong shapes */
	mk_calib(c4, model, 32, true);
	assert_int_equal(run_stage(model, c4, out, 32, "fp4", -1, -1, &utd, NULL, &err), FX_E_FORMAT);
	assert_non_null(strstr(err.msg, "is F32 [320], the model's"));
	assert_non_null(strstr(err.msg, "wants F32 [256]"));
	/* not a calib file at all */
	assert_int_equal(run_stage(model, tpath("b.safetensors"), out, 32, "fp4", -1, -1, &utd, NULL,
				   &err), FX_E_FORMAT);
	assert_non_null(strstr(err.msg, "expected fx.calib"));
	/* a rank the layers cannot hold */
	assert_int_equal(run_stage(model, tpath("c.safetensors"), out, 512, "fp4", -1, -1, &utd, NULL,
				   &err), FX_E_ARG);
}

/* ---- the audit ------------------------------------------------------- */

static size_t lines_with(const struct fx_audit *a, const char *what)
{
	size_t i, n = 0;

	for (i = 0; i < a->lines_n; i++)
		n += strstr(a->lines[i], what) != NULL;
	return n;
}

static void test_audit_branch(void **state)
{
	const char *good = tpath("b.safetensors"), *bad = tpath("bad.safetensors");
	struct fx_err err = {0};
	struct fx_st *st = NULL, *sb = NULL;
	struct fx_stw *w = NULL;
	struct fx_audit a;
	size_t i;
	int fd;

	(void)state;
	assert_int_equal(fx_st_open(&st, good, &err), 0);
	fx_audit_init(&a);
	fx_audit_branch(&a, st);
	for (i = 0; i < a.lines_n; i++)
		print_message("# %s\n", a.lines[i]);
	assert_int_equal(a.nfind, 0);
	assert_int_equal(lines_with(&a, "[OK] "), 12);
	assert_int_equal(lines_with(&a, "[OK] qkv_proj (block 0): down=[32,256] up=[768,32]"), 1);
	assert_int_equal(lines_with(&a, "[OK] mlp_fc2 (single block 0): down=[32,1024] up=[256,32]"), 1);
	assert_int_equal(lines_with(&a, "12 of 12 layers complete, rank 32"), 1);
	fx_audit_release(&a);

	/* drop qkv_proj_context, zero an up, add a member-named tensor */
	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	for (i = 0; i < fx_st_meta_count(st); i++) {
		const char *k, *v;
		fx_st_meta_at(st, i, &k, &v);
		if (strcmp(k, "fx.crc32"))
			assert_int_equal(fx_stw_meta(w, k, v, &err), 0);
	}
	for (i = 0; i < fx_st_count(st); i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		if (!strstr(t->name, "qkv_proj_context"))
			assert_int_equal(fx_stw_add(w, t->name, t->dtype, t->ndim, t->shape, &err), 0);
	}
	assert_int_equal(fx_stw_add(w, "transformer_blocks.0.attn.to_q.smooth", FX_F32, 1,
				    (int64_t[]){ 256 }, &err), 0);
	fd = open(bad, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	for (i = 0; i < fx_st_count(st); i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		void *b;
		if (strstr(t->name, "qkv_proj_context"))
			continue;
		b = malloc(t->nbytes);
		memcpy(b, t->data, t->nbytes);
		if (!strcmp(t->name, "transformer_blocks.0.mlp_fc1.up"))
			memset(b, 0, t->nbytes);
		if (!strcmp(t->name, "single_transformer_blocks.0.out_proj.smooth"))
			((float *)b)[3] = -1.0f;
		assert_int_equal(fx_stw_write(w, t->name, b, t->nbytes, &err), 0);
		free(b);
	}
	{
		float z[256] = {0};
		assert_int_equal(fx_stw_write(w, "transformer_blocks.0.attn.to_q.smooth", z, sizeof(z), &err), 0);
	}
	assert_int_equal(fx_stw_finish(w, &err), 0);
	close(fd);
	fx_stw_free(w);
	assert_int_equal(fx_st_open(&sb, bad, &err), 0);
	fx_audit_init(&a);
	fx_audit_branch(&a, sb);
	for (i = 0; i < a.lines_n; i++)
		print_message("# %s\n", a.lines[i]);
	for (i = 0; i < a.nfind; i++)
		print_message("# finding %s %s: %s\n", a.find[i].check, a.find[i].where, a.find[i].msg);
	assert_int_equal(lines_with(&a, "[MISSING] qkv_proj_context (block 0): smooth, down, up, splits, stats"), 1);
	assert_int_equal(lines_with(&a, "[BAD] mlp_fc1 (block 0)"), 1);
	assert_int_equal(lines_with(&a, "[BAD] out_proj (single block 0)"), 1);
	assert_int_equal(lines_with(&a, "[OK] "), 9);
	assert_int_equal(lines_with(&a, "9 of 12 layers complete"), 1);
	assert_int_equal(fx_audit_failures(&a, false), 4);
	fx_audit_release(&a);
	fx_st_close(sb);
	fx_st_close(st);
}

int main(void)
{
	fx_log_set_level(FX_LOG_WARN);   /* the stage's per-layer lines */
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_candidates),
		cmocka_unit_test(test_smooth),
		cmocka_unit_test(test_actq_matches_ref),
		cmocka_unit_test(test_resq_matches_quant),
		cmocka_unit_test(test_rsvd_matches_lapack),
		cmocka_unit_test(test_search_beats_rtn_nvfp4),
		cmocka_unit_test(test_search_beats_rtn_int4),
		cmocka_unit_test(test_svd_method_agrees),
		cmocka_unit_test(test_gptq_score),
		cmocka_unit_test(test_error_matches_runtime),
		cmocka_unit_test(test_stage_output),
		cmocka_unit_test(test_stage_caching),
		cmocka_unit_test(test_stage_same_in_bfl_layout),
		cmocka_unit_test(test_stage_foreign_calib),
		cmocka_unit_test(test_audit_branch),
	};

	return cmocka_run_group_tests_name("lowrank", tests, setup, teardown);
}
