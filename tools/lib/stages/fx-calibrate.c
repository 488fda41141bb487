#include "fx-calibrate.h"

#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fx-log.h"
#include "fx-tensor.h"
#include "fx-device.h"
#include "fx-ops.h"
#include "fx-blocks.h"
#include "fx-file.h"
#include "fx-family.h"
#include "fx-dit-sampler.h"   /* fx_rng */
#include "fx-lora.h"
#include "fx-model.h"
#include "fx-stage.h"
#include "fx-st.h"

/* Running statistics of one fused group's input. absmax is taken for every
 * layer in the first pass (which also counts the rows and checks them for
 * NaN/Inf); the rest only in the layer's own pass. */
struct gstat {
	const struct fx_group *g;
	int64_t k;
	int pass;               /* the sampling pass that records its rows */
	float *absmax;          /* (k), from pass 0 */
	float *recheck;         /* (k) absmax again in its own pass when > 0 */
	uint64_t total;         /* rows offered in pass 0 */
	uint16_t *rows;         /* (cap, k) BF16 reservoir */
	int64_t kept;           /* rows in the reservoir */
	uint64_t seen;          /* rows offered in its own pass */
	double *xtx;            /* (k, k) with --hessian: upper triangle summed, mirrored at the end */
	double *xsum;           /* (k) with --hessian: column sums */
	struct fx_rng rng;
};

struct cal {
	const struct fx_model *m;
	struct gstat *st;       /* indexed like the model's groups; g NULL when out of range */
	size_t n;
	int64_t cap;
	bool hessian;
	int pass;
	double *xd;             /* (XTX_ROWS, largest k) rows widened to f64 */
	int step, prompt;
	float sigma;
};

/* absmax[j] = max(absmax[j], |x[t,j]|) over m rows of k, in column blocks
 * (rows read contiguously) with the finiteness check in the same pass.
 * Returns false when x holds NaN/Inf. */
static bool absmax_rows(float *absmax, const float *x, int64_t m, int64_t k)
{
	const int64_t B = 512;
	uint32_t bad = 0;

#pragma omp parallel for schedule(static) reduction(|:bad) if (m * k > 65536)
	for (int64_t j0 = 0; j0 < k; j0 += B) {
		int64_t nb = k - j0 < B ? k - j0 : B;
		float mx[512];

		memcpy(mx, absmax + j0, (size_t)nb * sizeof(float));
		for (int64_t t = 0; t < m; t++) {
			const float *xr = x + t * k + j0;
			uint32_t b = 0;

#pragma omp simd reduction(|:b)
			for (int64_t j = 0; j < nb; j++) {
				float v = fabsf(xr[j]);
				uint32_t u;

				memcpy(&u, &xr[j], 4);
				b |= (u & 0x7f800000u) + 0x00800000u;   /* sign bit set: NaN/Inf */
				mx[j] = v > mx[j] ? v : mx[j];
			}
			bad |= b;
		}
		memcpy(absmax + j0, mx, (size_t)nb * sizeof(float));
	}
	return !(bad & 0x80000000u);
}

/* Column panels of the XᵀX update, fixed whatever the thread count. */
#define XTX_PANEL 256

/* Upper triangle of xtx (k,k) += xdᵀ·xd over m rows, a column panel per
 * task spread over the OpenMP threads, each panel single-threaded calls
 * (the rows above its diagonal block with dgemm, the block with dsyrk).
 * One dsyrk on OpenBLAS's own threads was split by the thread count, and
 * its rounding follows the split: --threads changed the bytes. */
static void xtx_update(double *xtx, const double *xd, int64_t m, int64_t k)
{
	const int64_t np = (k + XTX_PANEL - 1) / XTX_PANEL;
	int blas = fx_ops_blas_single();

	/* the panels on the right have the most rows above them: first */
#pragma omp parallel for schedule(dynamic, 1)
	for (int64_t p = np - 1; p >= 0; p--) {
		int64_t j0 = p * XTX_PANEL, w = k - j0 < XTX_PANEL ? k - j0 : XTX_PANEL;

		if (j0 > 0)
			cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)j0, (int)w, (int)m, 1.0,
				    xd, (int)k, xd + j0, (int)k, 1.0, xtx + j0, (int)k);
		cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)w, (int)m, 1.0, xd + j0, (int)k,
			    1.0, xtx + j0 * k + j0, (int)k);
	}
	fx_ops_blas_restore(blas);
}

/* Rows widened to f64 per XTX_ROWS, so the scratch stays small whatever
 * the token count; the split is fixed, so the sums are too. */
#define XTX_ROWS 256

/* xtx (upper triangle) += xᵀx and xsum += Σ rows over m rows of x, in f64. */
static void hessian_rows(struct gstat *s, double *xd, const float *x, int64_t m)
{
	const int64_t k = s->k;

	for (int64_t r0 = 0; r0 < m; r0 += XTX_ROWS) {
		int64_t nr = m - r0 < XTX_ROWS ? m - r0 : XTX_ROWS;

		for (int64_t i = 0; i < nr * k; i++)
			xd[i] = x[r0 * k + i];
		/* each column summed in row order */
		for (int64_t r = 0; r < nr; r++) {
			const double *xr = xd + r * k;

#pragma omp simd
			for (int64_t j = 0; j < k; j++)
				s->xsum[j] += xr[j];
		}
		xtx_update(s->xtx, xd, nr, k);
	}
}

static int capture(void *ctx, const struct fx_group *g, const float *x, int64_t m, struct fx_err *err)
{
	struct cal *c = ctx;
	struct gstat *s = NULL;
	size_t i;
	int64_t r, k;

	for (i = 0; i < c->n; i++)
		if (c->st[i].g == g) {
			s = &c->st[i];
			break;
		}
	if (!s)
		return 0;
	k = s->k;
	if (c->pass == 0) {
		if (!absmax_rows(s->absmax, x, m, k)) {
			for (r = 0; r < m * k && isfinite(x[r]); r++)
				;
			return fx_error(err, FX_E_VALUE,
					"non-finite activation %g entering %s (%sblock %d) at step %d of prompt %d, token %lld, channel %lld",
					x[r], g->fused, g->single ? "single " : "", g->block, c->step, c->prompt,
					(long long)(r / k), (long long)(r % k));
		}
		s->total += (uint64_t)m;
	}
	if (s->pass != c->pass)
		return 0;
	/* a later pass must see what the first saw (compared when it ends) */
	if (c->pass > 0)
		absmax_rows(s->recheck, x, m, k);
	/* reservoir: every row seen so far is kept with probability cap/seen */
	for (r = 0; r < m; r++) {
		int64_t slot = -1;

		if (s->kept < c->cap) {
			slot = s->kept++;
		} else {
			uint64_t j = fx_rng_u64(&s->rng) % (s->seen + 1);

			if (j < (uint64_t)c->cap)
				slot = (int64_t)j;
		}
		s->seen++;
		if (slot >= 0)
			for (int64_t j = 0; j < k; j++)
				s->rows[slot * k + j] = fx_f32_to_bf16(x[r * k + j]);
	}
	if (s->xtx)
		hessian_rows(s, c->xd, x, m);
	return 0;
}

static int step_begin(void *ctx, int step, float sigma, int pass, struct fx_err *err)
{
	struct cal *c = ctx;

	(void)err;
	(void)pass;   /* both passes of true CFG are what the layers see */
	c->step = step;
	c->sigma = sigma;
	return 0;
}

static uint64_t name_hash(const char *s)
{
	uint64_t h = 1469598103934665603ull;

	while (*s)
		h = (h ^ (unsigned char)*s++) * 1099511628211ull;
	return h;
}

/* Bytes of statistics a layer holds during its own pass: the reservoir,
 * and with --hessian XᵀX and Σx in f64. */
static double pass_need(const struct fx_group *g, int64_t cap, bool hessian)
{
	double k = (double)g->k;

	return (double)cap * k * 2.0 + k * 4.0 + (hessian ? k * k * 8.0 + k * 8.0 : 0.0);
}

static const char *size_str(char *buf, size_t cap, double bytes)
{
	if (bytes >= 1073741824.0)
		snprintf(buf, cap, "%.2f GiB", bytes / 1073741824.0);
	else if (bytes >= 1048576.0)
		snprintf(buf, cap, "%.1f MiB", bytes / 1048576.0);
	else
		snprintf(buf, cap, "%.0f KiB", bytes / 1024.0);
	return buf;
}

/* Splits the layers in range into sampling passes, in model order, each
 * holding at most budget bytes of statistics (without --hessian: one pass).
 * A layer that alone needs more than the budget is refused, named. */
static int plan_passes(struct cal *cal, uint64_t budget, int *npass, double *max_need,
		       struct fx_err *err)
{
	double used = 0.0;
	int p = 0;
	bool any = false;

	*max_need = 0.0;
	for (size_t gi = 0; gi < cal->n; gi++) {
		struct gstat *st = &cal->st[gi];
		double need;

		if (!st->g)
			continue;
		need = pass_need(st->g, cal->cap, cal->hessian);
		if (cal->hessian && need > (double)budget) {
			char a[32], b[32];

			return fx_error(err, FX_E_ARG, "--hessian-mem %s is less than layer '%s' needs: %s "
					"(its XᵀX of K=%lld in f64, Σx and %lld sample rows); give at least that",
					size_str(a, sizeof(a), (double)budget), st->g->name,
					size_str(b, sizeof(b), need), (long long)st->g->k, (long long)cal->cap);
		}
		if (cal->hessian && any && used + need > (double)budget) {
			p++;
			used = 0.0;
		}
		used += need;
		any = true;
		st->pass = p;
		*max_need = used > *max_need ? used : *max_need;
	}
	*npass = p + 1;
	return 0;
}

/* calloc would overcommit and the run be killed hours in, so statistics
 * that cannot fit are refused now: the largest pass's, and every layer's
 * absmax, which stays for the whole run. */
static int check_memory(const struct cal *cal, double max_need, int first, int last,
			struct fx_err *err)
{
	long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGE_SIZE);
	double need = max_need, have = pages > 0 && psz > 0 ? (double)pages * (double)psz : 0.0;
	const char *fake = getenv("FX_MEM_BYTES");   /* tests: another machine's size */
	char a[32], b[32];

	if (fake && *fake)
		have = strtod(fake, NULL);
	for (size_t gi = 0; gi < cal->n; gi++)
		if (cal->st[gi].g)
			need += (double)cal->st[gi].k * 4.0;
	fx_log_debug("statistics: %s of %s memory", size_str(a, sizeof(a), need),
		     size_str(b, sizeof(b), have));
	if (have > 0.0 && need > 0.8 * have)
		return fx_error(err, FX_E_NOMEM,
				"the statistics of blocks %d-%d need %s a sampling pass%s, more than 80%% of "
				"this machine's %s: %srecord block ranges in separate runs (--blocks A-B)",
				first, last, size_str(a, sizeof(a), need),
				cal->hessian ? " (XᵀX in f64 per layer)" : "", size_str(b, sizeof(b), have),
				cal->hessian ? "lower --hessian-mem or " : "");
	return 0;
}

static void pass_release(struct gstat *st)
{
	free(st->recheck);
	free(st->rows);
	free(st->xtx);
	free(st->xsum);
	st->recheck = NULL;
	st->rows = NULL;
	st->xtx = st->xsum = NULL;
}

/* The statistics of the layers of pass p, from zero. */
static int pass_open(struct cal *cal, int p, uint64_t seed, struct fx_err *err)
{
	for (size_t gi = 0; gi < cal->n; gi++) {
		struct gstat *st = &cal->st[gi];
		int64_t k = st->k;

		if (!st->g || st->pass != p)
			continue;
		st->kept = 0;
		st->seen = 0;
		st->rows = malloc((size_t)cal->cap * k * 2);
		if (p > 0)
			st->recheck = calloc(k, sizeof(float));
		if (cal->hessian) {
			st->xtx = calloc((size_t)k * k, sizeof(double));
			st->xsum = calloc(k, sizeof(double));
		}
		fx_rng_init(&st->rng, seed ^ name_hash(st->g->name));
		if (!st->rows || (p > 0 && !st->recheck) || (cal->hessian && (!st->xtx || !st->xsum)))
			return fx_error(err, FX_E_NOMEM, "out of memory for the statistics of '%s'",
					st->g->name);
	}
	return 0;
}

/* Declares every layer's tensors once the first pass has counted the rows. */
static int declare(struct fx_stage *s, const struct cal *cal, struct fx_err *err)
{
	for (size_t gi = 0; gi < cal->n; gi++) {
		const struct gstat *st = &cal->st[gi];
		char name[160];
		int64_t shp[2];
		int ret;

		if (!st->g)
			continue;
		snprintf(name, sizeof(name), "%s.absmax", st->g->name);
		shp[0] = st->k;
		if ((ret = fx_stage_add(s, name, FX_F32, 1, shp, err)) < 0)
			return ret;
		snprintf(name, sizeof(name), "%s.samples", st->g->name);
		shp[0] = st->total < (uint64_t)cal->cap ? (int64_t)st->total : cal->cap;
		shp[1] = st->k;
		if ((ret = fx_stage_add(s, name, FX_BF16, 2, shp, err)) < 0)
			return ret;
		if (!cal->hessian)
			continue;
		snprintf(name, sizeof(name), "%s.xtx", st->g->name);
		shp[0] = shp[1] = st->k;
		if ((ret = fx_stage_add(s, name, FX_F64, 2, shp, err)) < 0)
			return ret;
		snprintf(name, sizeof(name), "%s.xsum", st->g->name);
		if ((ret = fx_stage_add(s, name, FX_F64, 1, shp, err)) < 0)
			return ret;
		snprintf(name, sizeof(name), "%s.nrows", st->g->name);
		shp[0] = 1;
		if ((ret = fx_stage_add(s, name, FX_I64, 1, shp, err)) < 0)
			return ret;
	}
	return 0;
}

/* The lower triangle from the upper, in tiles (both sides stay in cache). */
static void mirror(double *a, int64_t k)
{
	const int64_t T = 64;

#pragma omp parallel for schedule(dynamic, 1) if (k > 256)
	for (int64_t i0 = 0; i0 < k; i0 += T)
		for (int64_t j0 = 0; j0 <= i0; j0 += T)
			for (int64_t i = i0; i < i0 + T && i < k; i++)
				for (int64_t j = j0; j < j0 + T && j < i; j++)
					a[i * k + j] = a[j * k + i];
}

static int write_tensor(struct fx_stage *s, struct fx_layer_hash *h, const char *layer,
			const char *role, const void *data, size_t n, struct fx_err *err)
{
	char name[160];

	snprintf(name, sizeof(name), "%s.%s", layer, role);
	fx_layer_hash_update(h, data, n);
	return fx_stage_write(s, name, data, n, err);
}

/* Writes the layers of pass p, checking first that a rerun pass saw the
 * rows of the first, and frees their statistics. */
static int pass_write(struct fx_stage *s, struct cal *cal, int p, int npass, struct fx_err *err)
{
	for (size_t gi = 0; gi < cal->n; gi++) {
		struct gstat *st = &cal->st[gi];
		struct fx_layer_hash *h;
		const char *nm;
		char lr[65];
		int ret = 0;

		if (!st->g || st->pass != p)
			continue;
		nm = st->g->name;
		if (p > 0 && (st->seen != st->total ||
			      memcmp(st->recheck, st->absmax, (size_t)st->k * sizeof(float))))
			return fx_error(err, FX_E_VALUE, "sampling pass %d of %d did not reproduce the first "
					"(layer '%s' saw %s): the forward is not deterministic here; give "
					"--hessian-mem room for one pass, or run block ranges with --blocks",
					p + 1, npass, nm, st->seen != st->total ? "another number of rows"
					: "other values");
		h = fx_layer_hash_new();
		ret = write_tensor(s, h, nm, "absmax", st->absmax, (size_t)st->k * 4, err);
		if (ret == 0)
			ret = write_tensor(s, h, nm, "samples", st->rows, (size_t)st->kept * st->k * 2, err);
		if (ret == 0 && st->xtx) {
			int64_t n = (int64_t)st->total;

			mirror(st->xtx, st->k);
			ret = write_tensor(s, h, nm, "xtx", st->xtx, (size_t)st->k * st->k * 8, err);
			if (ret == 0)
				ret = write_tensor(s, h, nm, "xsum", st->xsum, (size_t)st->k * 8, err);
			if (ret == 0)
				ret = write_tensor(s, h, nm, "nrows", &n, 8, err);
		}
		fx_layer_hash_final(h, lr);
		if (ret < 0)
			return ret;
		/* the forward always runs; a layer whose statistics came out the
		 * same as before is reported as reused, so later stages see it so */
		fx_stage_layer(s, nm, lr, fx_stage_reusable(s, nm, lr));
		pass_release(st);
	}
	return 0;
}

int fx_calibrate_run(const struct fx_calibrate_opts *o, bool *up_to_date,
		     struct fx_stage **stage_out, struct fx_err *err)
{
	struct fx_model *m = NULL;
	struct fx_st *cs = NULL;
	struct fx_runner *f = NULL;
	const struct fx_runner_ops *run = NULL;
	struct fx_stage *s = NULL;
	const struct fx_model_config *c;
	struct fx_run_params sp;
	struct fx_run_hooks hooks = {0};
	struct cal cal = {0};
	struct fx_progress prog;
	struct fx_device dev;
	char id[65], blocks[32], res[32], note[256], label[64], *modeljs = NULL;
	float *lat = NULL;
	int64_t ni, P, held, i, kmax = 0;
	int first, last, ret, npass = 1;
	double max_need;
	bool bf16;
	size_t gi;

	*up_to_date = false;
	if (stage_out)
		*stage_out = NULL;
	if ((ret = fx_model_open_loras(&m, o->model, o->loras, err)) < 0 ||
	    (ret = fx_st_open(&cs, o->cond, err)) < 0)
		goto out;
	c = fx_model_config(m);
	run = c->family->run;
	if ((ret = run->open(&f, m, cs, o->cond, &held, err)) < 0)
		goto out;
	P = o->prompts > 0 ? o->prompts : held;
	if (P > held) {
		ret = fx_error(err, FX_E_ARG, "--prompts %lld but '%s' holds %lld", (long long)P, o->cond,
			       (long long)held);
		goto out;
	}
	if ((ret = fx_blocks_resolve(c, o->first_block, o->last_block, &first, &last, blocks,
				     sizeof(blocks), err)) < 0)
		goto out;
	run->defaults(c, &sp);
	if (o->steps > 0)
		sp.steps = o->steps;
	if (o->width > 0) {
		sp.width = o->width;
		sp.height = o->height;
	}
	if (o->guidance >= 0)
		sp.guidance = o->guidance;
	if ((ret = run->tokens(c, sp.width, sp.height, &ni, err)) < 0)
		goto out;

	if ((ret = fx_stage_new(&s, "fx-calib", FX_FMT_CALIB, o->output, err)) < 0 ||
	    (ret = fx_lora_stage_model(s, o->model, o->loras, id, err)) < 0)
		goto out;
	if ((ret = fx_stage_input(s, "cond", o->cond, err)) < 0)
		goto out;
	snprintf(res, sizeof(res), "%dx%d", sp.width, sp.height);
	fx_stage_param_int(s, "prompts", P);
	fx_stage_param_int(s, "steps", sp.steps);
	fx_stage_param_str(s, "res", res);
	/* FLUX: the guidance embedder's scale (0 without one); Qwen-Image:
	 * the true-CFG scale, under its own name */
	if (c->family->run == run && !strcmp(c->family->name, "qwenimage"))
		fx_stage_param_real(s, "true_cfg", sp.guidance);
	else
		fx_stage_param_real(s, "guidance", c->guidance ? sp.guidance : 0);
	fx_stage_param_int(s, "seed", (long long)o->seed);
	fx_stage_param_int(s, "samples", o->samples);
	fx_stage_param_int(s, "hessian", o->hessian);
	/* the XᵀX layout (F64 sums with Σx and the row count; F32 before): an
	 * earlier output is not up to date. The passes are not recorded: they
	 * do not change a byte */
	if (o->hessian)
		fx_stage_param_str(s, "xtx", "F64");
	fx_stage_param_str(s, "blocks", blocks);
	/* the arithmetic is part of the recipe, the device is not: f32 on a GPU
	 * matches the CPU to rounding, BF16 GEMMs do not */
	if ((ret = fx_device_select(&dev, o->device, note, sizeof(note), err)) < 0)
		goto out;
	if (note[0])
		fx_log_info("%s", note);
	bf16 = dev.kind == FX_DEV_CUDA && !(o->gemm && strcmp(o->gemm, "f32") == 0);
	if (bf16)
		fx_stage_param_str(s, "gemm", "bf16");
	ret = fx_stage_check(s, o->force, err);
	if (ret < 0)
		goto out;
	if (ret == 1) {
		*up_to_date = true;
		ret = 0;
		goto out;
	}

	/* statistics for the groups in range, split into passes */
	cal.m = m;
	cal.n = fx_model_ngroups(m);
	cal.cap = o->samples;
	cal.hessian = o->hessian;
	cal.st = calloc(cal.n, sizeof(*cal.st));
	if (!cal.st) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (gi = 0; gi < cal.n; gi++) {
		const struct fx_group *g = fx_model_group(m, gi);

		if (!fx_group_in_range(c, g, first, last))
			continue;
		cal.st[gi].g = g;
		cal.st[gi].k = g->k;
		kmax = g->k > kmax ? g->k : kmax;
	}
	if ((ret = plan_passes(&cal, o->hessian_mem ? o->hessian_mem : FX_CALIB_HESSIAN_MEM, &npass,
			       &max_need, err)) < 0 ||
	    (ret = check_memory(&cal, max_need, first, last, err)) < 0)
		goto out;
	for (gi = 0; gi < cal.n; gi++)
		if (cal.st[gi].g && !(cal.st[gi].absmax = calloc(cal.st[gi].k, sizeof(float)))) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
	if (o->hessian && !(cal.xd = malloc((size_t)XTX_ROWS * kmax * sizeof(double)))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = run->set_device(f, &dev, bf16, err)) < 0)
		goto out;
	fx_log_debug("computing on %s%s", dev.desc, bf16 ? " (BF16 GEMMs)" : "");
	hooks.ctx = &cal;
	hooks.capture = capture;
	hooks.step_begin = step_begin;
	run->set_hooks(f, &hooks);
	lat = malloc((size_t)ni * c->in_channels * sizeof(float));
	if (!lat) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if (!(modeljs = fx_model_brief_json(c))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (cal.pass = 0; cal.pass < npass; cal.pass++) {
		int lo = -1, hi = -1;
		size_t nl = 0;

		for (gi = 0; gi < cal.n; gi++)
			if (cal.st[gi].g && cal.st[gi].pass == cal.pass) {
				const struct fx_group *g = cal.st[gi].g;
				int b = g->single ? c->num_double + g->block : g->block;

				lo = lo < 0 ? b : lo;
				hi = b;
				nl++;
			}
		if (npass > 1)
			fx_log_debug("pass %d/%d: %zu layers of blocks %d-%d", cal.pass + 1, npass, nl, lo, hi);
		if ((ret = pass_open(&cal, cal.pass, o->seed, err)) < 0)
			goto out;
		if (npass > 1)
			snprintf(label, sizeof(label), "fx-calib pass %d/%d (blocks %d-%d)", cal.pass + 1, npass,
				 lo, hi);
		else
			snprintf(label, sizeof(label), "fx-calib");
		fx_progress_start(&prog, label, (uint64_t)P, 0);
		for (i = 0; i < P; i++) {
			cal.prompt = (int)i;
			sp.seed = o->seed + (uint64_t)i;
			if ((ret = run->sample(f, i, &sp, lat, err)) < 0)
				goto out;
			fx_progress_step(&prog, 1, 0);
		}
		fx_progress_end(&prog);
		/* the first pass counted every layer's rows: the layout is known,
		 * and each pass streams its layers to the output as it ends */
		if (cal.pass == 0) {
			if ((ret = declare(s, &cal, err)) < 0)
				goto out;
			fx_stage_meta(s, "fx.model", modeljs);
			if ((ret = fx_stage_begin(s, err)) < 0)
				goto out;
		}
		if ((ret = pass_write(s, &cal, cal.pass, npass, err)) < 0)
			goto out;
	}
	ret = fx_stage_commit(s, err);
out:
	for (gi = 0; cal.st && gi < cal.n; gi++) {
		free(cal.st[gi].absmax);
		pass_release(&cal.st[gi]);
	}
	free(cal.st);
	free(cal.xd);
	free(modeljs);
	free(lat);
	if (run)
		run->free(f);
	fx_st_close(cs);
	fx_model_close(m);
	if (stage_out && ret >= 0)
		*stage_out = s;
	else
		fx_stage_free(s);
	return ret;
}
