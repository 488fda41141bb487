/* FLUX forward, sampler and ops against the PyTorch/diffusers reference in
 * tests/fixtures (made by tests/fixtures/gen_flux_ref.py; flux-tiny-bfl.safetensors,
 * the same weights in the BFL single-file layout, by gen_flux_bfl.py).
 *
 * Relative error of a result a against a reference b: max|a − b| / max|b|
 * over all elements (one number per tensor). The C path is f32 like the
 * reference (which runs f32 on the same BF16-rounded weights), so the
 * budget 1e-3 leaves a wide margin over the f32 rounding noise (~1e-6). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fx-calibrate.h"
#include "fx-flux.h"
#include "fx-model.h"
#include "fx-ops.h"
#include "fx-sampler.h"
#include "fx-st.h"
#include "fx-synth.h"

#define REL_BUDGET 1e-3

struct fixture {
	struct fx_model *model;
	struct fx_st *ref;
	struct fx_flux *flux;
};

static struct fixture fix;

static const char *src_dir(void)
{
	const char *d = getenv("FX_TESTS_SRC");

	return d && *d ? d : "tests";
}

/* F32 copy of a reference tensor; fails the test when missing. */
static float *ref_f32(const char *name, uint64_t *numel)
{
	const struct fx_tensor *t = fx_st_find(fix.ref, name);
	float *v;
	uint64_t n;

	if (!t)
		fail_msg("reference tensor '%s' missing", name);
	n = fx_tensor_numel(t);
	v = malloc((size_t)n * sizeof(float));
	assert_non_null(v);
	assert_int_equal(fx_to_f32(v, t->data, t->dtype, (size_t)n), 0);
	if (numel)
		*numel = n;
	return v;
}

static double rel_err(const float *a, const float *b, size_t n)
{
	double d = 0.0, m = 0.0;

	for (size_t i = 0; i < n; i++) {
		double e = fabs((double)a[i] - (double)b[i]);

		if (!(e <= d))   /* NaN-sticky max */
			d = e;
		if (fabs((double)b[i]) > m)
			m = fabs((double)b[i]);
	}
	return m > 0.0 ? d / m : d;
}

static int setup_group(void **state)
{
	char mp[1024], rp[1024];
	struct fx_err err = { 0 };

	(void)state;
	snprintf(mp, sizeof(mp), "%s/fixtures/flux-tiny", src_dir());
	snprintf(rp, sizeof(rp), "%s/fixtures/flux-tiny-ref.safetensors", src_dir());
	if (fx_model_open(&fix.model, mp, &err) < 0 || fx_st_open(&fix.ref, rp, &err) < 0 ||
	    fx_flux_new(&fix.flux, fix.model, &err) < 0) {
		fprintf(stderr, "setup: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int teardown_group(void **state)
{
	(void)state;
	fx_flux_free(fix.flux);
	fx_st_close(fix.ref);
	fx_model_close(fix.model);
	return 0;
}

/* ---- the reference forward --------------------------------------------- */

struct fwd_ref {
	struct fx_flux_input in;
	float *bufs[5];
	float *out;
	uint64_t nout;
};

static void fwd_load(struct fwd_ref *r)
{
	uint64_t n;
	float *s, *g;

	memset(r, 0, sizeof(*r));
	r->bufs[0] = ref_f32("fwd.hidden_states", &n);
	r->in.ni = (int64_t)(n / 64);
	r->bufs[1] = ref_f32("fwd.encoder_hidden_states", &n);
	r->in.nt = (int64_t)(n / (uint64_t)fx_model_config(fix.model)->joint_dim);
	r->bufs[2] = ref_f32("fwd.pooled_projections", NULL);
	r->bufs[3] = ref_f32("fwd.img_ids", NULL);
	r->bufs[4] = ref_f32("fwd.txt_ids", NULL);
	r->in.img = r->bufs[0];
	r->in.txt = r->bufs[1];
	r->in.pooled = r->bufs[2];
	r->in.img_ids = r->bufs[3];
	r->in.txt_ids = r->bufs[4];
	s = ref_f32("fwd.sigma", NULL);
	g = ref_f32("fwd.guidance", NULL);
	r->in.sigma = s[0];
	r->in.guidance = g[0];
	free(s);
	free(g);
	r->out = ref_f32("fwd.output", &r->nout);
}

static void fwd_free(struct fwd_ref *r)
{
	for (size_t i = 0; i < FX_ARRAY_SIZE(r->bufs); i++)
		free(r->bufs[i]);
	free(r->out);
}

static void run_forward(struct fx_flux *f, const struct fwd_ref *r, float *out)
{
	struct fx_err err = { 0 };
	int ret = fx_flux_forward(f, &r->in, out, &err);

	if (ret < 0)
		fail_msg("forward: %s", err.msg);
}

static void test_timestep_rounding(void **state)
{
	float *t = ref_f32("fwd.timestep_eff", NULL), *g = ref_f32("fwd.guidance_eff", NULL);

	(void)state;
	assert_true(fx_flux_timestep(0.75f) == t[0]);
	assert_true(fx_flux_guidance(3.5f) == g[0]);
	assert_true(fx_flux_guidance(3.5f) == 3504.0f);
	/* spec §3.5: 1024², 50 steps */
	assert_true(fx_flux_timestep(1.0f) == 1000.0f);
	assert_true(fx_flux_timestep(0.99358f) == 992.0f);
	assert_true(fx_flux_timestep(0.986979f) == 988.0f);
	assert_true(fx_flux_timestep(0.98019f) == 980.0f);
	free(t);
	free(g);
}

static void test_forward_reference(void **state)
{
	struct fwd_ref r;
	float *out;
	double e;

	(void)state;
	fwd_load(&r);
	out = malloc((size_t)r.nout * sizeof(float));
	assert_non_null(out);
	run_forward(fix.flux, &r, out);
	e = rel_err(out, r.out, (size_t)r.nout);
	printf("# forward: relative error %.3g vs diffusers\n", e);
	assert_true(e <= REL_BUDGET);
	/* a second call reuses the buffers and gives the same bits */
	{
		float *again = malloc((size_t)r.nout * sizeof(float));

		assert_non_null(again);
		run_forward(fix.flux, &r, again);
		assert_memory_equal(out, again, (size_t)r.nout * sizeof(float));
		free(again);
	}
	free(out);
	fwd_free(&r);
}

/* ---- hooks -------------------------------------------------------------- */

struct cap_ctx {
	struct fx_flux *flux;
	size_t ncap, nlin;
	const struct fx_group *seen[256];
	int seen_count[256];
	size_t nseen;
	/* wanted captures */
	const char *want[16];
	float *got[16];
	int64_t got_m[16];
	size_t nwant;
};

static int cap_fn(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		  struct fx_err *err)
{
	struct cap_ctx *c = ctx;
	size_t i;

	(void)err;
	c->ncap++;
	for (i = 0; i < c->nseen && c->seen[i] != g; i++)
		;
	if (i == c->nseen && c->nseen < FX_ARRAY_SIZE(c->seen))
		c->seen[c->nseen++] = g;
	if (i < FX_ARRAY_SIZE(c->seen))
		c->seen_count[i]++;
	for (i = 0; i < c->nwant; i++) {
		if (strcmp(c->want[i], g->name))
			continue;
		free(c->got[i]);
		c->got[i] = malloc((size_t)(m * g->k) * sizeof(float));
		if (!c->got[i])
			return fx_error(err, FX_E_NOMEM, "out of memory");
		memcpy(c->got[i], x, (size_t)(m * g->k) * sizeof(float));
		c->got_m[i] = m;
	}
	return 0;
}

static int lin_fn(void *ctx, const struct fx_group *g, const float *x, int64_t m, float *y,
		  struct fx_err *err)
{
	struct cap_ctx *c = ctx;

	c->nlin++;
	return fx_flux_linear_dense(c->flux, g, x, m, y, err);
}

static void test_capture_reference(void **state)
{
	static const char *const names[] = {
		"transformer_blocks.0.norm1.linear",
		"transformer_blocks.0.qkv_proj",
		"transformer_blocks.1.qkv_proj_context",
		"transformer_blocks.0.out_proj",
		"transformer_blocks.0.mlp_fc2",
		"transformer_blocks.1.mlp_context_fc2",
		"single_transformer_blocks.0.out_proj",
		"single_transformer_blocks.0.mlp_fc2",
		"single_transformer_blocks.1.qkv_proj",
		"single_transformer_blocks.1.norm.linear",
	};
	struct cap_ctx c;
	struct fx_flux_hooks h = { .ctx = &c, .capture = cap_fn, .linear = lin_fn };
	struct fwd_ref r;
	float *out, *plain;
	double worst = 0.0;

	(void)state;
	memset(&c, 0, sizeof(c));
	c.flux = fix.flux;
	for (size_t i = 0; i < FX_ARRAY_SIZE(names); i++)
		c.want[c.nwant++] = names[i];
	fwd_load(&r);
	out = malloc((size_t)r.nout * sizeof(float));
	plain = malloc((size_t)r.nout * sizeof(float));
	assert_non_null(out);
	assert_non_null(plain);
	run_forward(fix.flux, &r, plain);
	fx_flux_set_hooks(fix.flux, &h);
	run_forward(fix.flux, &r, out);
	fx_flux_set_hooks(fix.flux, NULL);

	/* a pass-through linear hook changes nothing */
	assert_memory_equal(out, plain, (size_t)r.nout * sizeof(float));
	/* every fused group is seen exactly once, in the model's order */
	assert_int_equal(c.nseen, fx_model_ngroups(fix.model));
	assert_int_equal(c.ncap, fx_model_ngroups(fix.model));
	assert_int_equal(c.nlin, fx_model_ngroups(fix.model));
	for (size_t i = 0; i < c.nseen; i++) {
		assert_int_equal(c.seen_count[i], 1);
		assert_ptr_equal(c.seen[i], fx_model_group(fix.model, i));
	}
	for (size_t i = 0; i < c.nwant; i++) {
		char rn[160];
		uint64_t n;
		float *ref;
		double e;

		snprintf(rn, sizeof(rn), "capture.%s", c.want[i]);
		ref = ref_f32(rn, &n);
		assert_non_null(c.got[i]);
		assert_int_equal((uint64_t)c.got_m[i] * (uint64_t)fx_model_find_group(fix.model, c.want[i])->k, n);
		e = rel_err(c.got[i], ref, (size_t)n);
		if (e > worst)
			worst = e;
		if (e > REL_BUDGET)
			fail_msg("capture '%s': relative error %g", c.want[i], e);
		free(ref);
		free(c.got[i]);
	}
	printf("# captures: worst relative error %.3g over %zu fused-layer inputs\n", worst, c.nwant);
	free(out);
	free(plain);
	fwd_free(&r);
}

static int fail_lin(void *ctx, const struct fx_group *g, const float *x, int64_t m, float *y,
		    struct fx_err *err)
{
	(void)ctx; (void)x; (void)m; (void)y;
	if (strstr(g->name, "single_transformer_blocks.1.mlp_fc2"))
		return fx_error(err, FX_E_UNSUPPORTED, "no kernel for '%s'", g->name);
	return fx_flux_linear_dense(fix.flux, g, x, m, y, err);
}

static void test_hook_error(void **state)
{
	struct fx_flux_hooks h = { .linear = fail_lin };
	struct fx_err err = { 0 };
	struct fwd_ref r;
	float *out;

	(void)state;
	fwd_load(&r);
	out = malloc((size_t)r.nout * sizeof(float));
	assert_non_null(out);
	fx_flux_set_hooks(fix.flux, &h);
	assert_int_equal(fx_flux_forward(fix.flux, &r.in, out, &err), FX_E_UNSUPPORTED);
	fx_flux_set_hooks(fix.flux, NULL);
	assert_non_null(strstr(err.msg, "single_transformer_blocks.1.mlp_fc2"));
	/* bad inputs */
	r.in.ni = 0;
	assert_int_equal(fx_flux_forward(fix.flux, &r.in, out, &err), FX_E_ARG);
	free(out);
	fwd_free(&r);
}

/* ---- BFL layout gives the same bits (fx-synth writes both layouts) ----- */

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb; (void)flag; (void)ftw;
	return remove(p);
}

static void forward_synth(const char *path, const struct fwd_ref *r, float *out, int64_t *nout)
{
	struct fx_model *m = NULL;
	struct fx_flux *f = NULL;
	struct fx_err err = { 0 };
	const struct fx_model_config *c;
	struct fx_flux_input in = r->in;
	float *img, *txt, *pooled;
	int ret;

	if ((ret = fx_model_open(&m, path, &err)) < 0 || (ret = fx_flux_new(&f, m, &err)) < 0)
		fail_msg("%s: %s", path, err.msg);
	c = fx_model_config(m);
	/* deterministic inputs of the synth model's widths */
	img = malloc((size_t)(in.ni * c->in_channels) * sizeof(float));
	txt = malloc((size_t)(in.nt * c->joint_dim) * sizeof(float));
	pooled = malloc((size_t)c->pooled_dim * sizeof(float));
	assert_true(img && txt && pooled);
	{
		struct fx_rng g;

		fx_rng_init(&g, 7);
		fx_rng_normal_f32(&g, img, (size_t)(in.ni * c->in_channels));
		fx_rng_normal_f32(&g, txt, (size_t)(in.nt * c->joint_dim));
		fx_rng_normal_f32(&g, pooled, (size_t)c->pooled_dim);
	}
	in.img = img;
	in.txt = txt;
	in.pooled = pooled;
	if (fx_flux_forward(f, &in, out, &err) < 0)
		fail_msg("%s: forward: %s", path, err.msg);
	*nout = in.ni * c->out_channels;
	free(img);
	free(txt);
	free(pooled);
	fx_flux_free(f);
	fx_model_close(m);
}

static void test_bfl_layout(void **state)
{
	char dir[] = "/tmp/fx-test-flux-XXXXXX", dp[512], bp[512];
	struct fx_synth_opts o;
	struct fx_err err = { 0 };
	struct fwd_ref r;
	float *a, *b;
	int64_t na = 0, nb = 0;
	double mx = 0.0;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(dp, sizeof(dp), "%s/diffusers", dir);
	snprintf(bp, sizeof(bp), "%s/flux-bfl.safetensors", dir);
	fx_synth_opts_init(&o);
	o.txt_dim = 256;
	o.seed = 11;
	if (fx_synth_model(dp, &o, &err) < 0)
		fail_msg("synth: %s", err.msg);
	o.layout = FX_LAYOUT_BFL;
	if (fx_synth_model(bp, &o, &err) < 0)
		fail_msg("synth: %s", err.msg);
	fwd_load(&r);
	a = malloc((size_t)r.in.ni * 256 * sizeof(float));
	b = malloc((size_t)r.in.ni * 256 * sizeof(float));
	assert_true(a && b);
	forward_synth(dp, &r, a, &na);
	forward_synth(bp, &r, b, &nb);
	assert_int_equal(na, nb);
	assert_memory_equal(a, b, (size_t)na * sizeof(float));
	for (int64_t i = 0; i < na; i++)
		mx = fmax(mx, fabs(a[i]));
	assert_true(mx > 0.0 && isfinite(mx));
	free(a);
	free(b);
	fwd_free(&r);
	nftw(dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
}

/* ---- BFL single file written from the reference weights ---------------
 * tests/fixtures/flux-tiny-bfl.safetensors is flux-tiny/ converted to the BFL
 * layout by tests/fixtures/gen_flux_bfl.py (numpy, from the spec's mapping,
 * not from fx's own writer): the same forward must match diffusers within
 * the budget and give exactly the bits of the diffusers-layout fixture. */

static void test_bfl_fixture(void **state)
{
	char bp[1024];
	struct fx_model *m = NULL;
	struct fx_flux *f = NULL;
	struct fx_err err = { 0 };
	const struct fx_model_config *cb, *cd = fx_model_config(fix.model);
	struct fwd_ref r;
	float *a, *b;
	double e;

	(void)state;
	snprintf(bp, sizeof(bp), "%s/fixtures/flux-tiny-bfl.safetensors", src_dir());
	if (fx_model_open(&m, bp, &err) < 0 || fx_flux_new(&f, m, &err) < 0)
		fail_msg("%s: %s", bp, err.msg);
	assert_int_equal(fx_model_layout(m), FX_LAYOUT_BFL);
	assert_false(fx_model_config_from_file(m));
	/* the config inferred from the shapes is the diffusers config.json */
	cb = fx_model_config(m);
	assert_int_equal(cb->hidden, cd->hidden);
	assert_int_equal(cb->heads, cd->heads);
	assert_int_equal(cb->head_dim, cd->head_dim);
	assert_int_equal(cb->mlp_hidden, cd->mlp_hidden);
	assert_int_equal(cb->num_double, cd->num_double);
	assert_int_equal(cb->num_single, cd->num_single);
	assert_int_equal(cb->in_channels, cd->in_channels);
	assert_int_equal(cb->out_channels, cd->out_channels);
	assert_int_equal(cb->joint_dim, cd->joint_dim);
	assert_int_equal(cb->pooled_dim, cd->pooled_dim);
	assert_int_equal(cb->guidance, cd->guidance);
	for (int i = 0; i < 3; i++)
		assert_int_equal(cb->axes[i], cd->axes[i]);
	fwd_load(&r);
	a = malloc((size_t)r.nout * sizeof(float));
	b = malloc((size_t)r.nout * sizeof(float));
	assert_true(a && b);
	run_forward(f, &r, b);
	e = rel_err(b, r.out, (size_t)r.nout);
	printf("# BFL fixture forward: relative error %.3g vs diffusers\n", e);
	assert_true(e <= REL_BUDGET);
	run_forward(fix.flux, &r, a);
	assert_memory_equal(a, b, (size_t)r.nout * sizeof(float));
	free(a);
	free(b);
	fwd_free(&r);
	fx_flux_free(f);
	fx_model_close(m);
}

/* ---- fx-calib against the capture hook ----------------------------------- */

/* Every input row of every fused group over a whole sampling run, with the
 * prompt and step each came from. */
struct all_rows {
	const struct fx_model *m;
	size_t n;
	float **x;          /* per group: (rows, k) */
	int **prov;         /* per group, per row: prompt * 1000 + step */
	int64_t *rows;
	int prompt, step;
};

static int all_cap(void *ctx, const struct fx_group *g, const float *x, int64_t m, struct fx_err *err)
{
	struct all_rows *a = ctx;
	size_t i;

	for (i = 0; i < a->n && fx_model_group(a->m, i) != g; i++)
		;
	if (i == a->n)
		return fx_error(err, FX_E_ARG, "unknown group '%s'", g->name);
	a->x[i] = realloc(a->x[i], (size_t)((a->rows[i] + m) * g->k) * sizeof(float));
	a->prov[i] = realloc(a->prov[i], (size_t)(a->rows[i] + m) * sizeof(int));
	if (!a->x[i] || !a->prov[i])
		return fx_error(err, FX_E_NOMEM, "out of memory");
	memcpy(a->x[i] + a->rows[i] * g->k, x, (size_t)(m * g->k) * sizeof(float));
	for (int64_t r = 0; r < m; r++)
		a->prov[i][a->rows[i] + r] = a->prompt * 1000 + a->step;
	a->rows[i] += m;
	return 0;
}

static int all_step(void *ctx, int step, float sigma, struct fx_err *err)
{
	(void)sigma; (void)err;
	((struct all_rows *)ctx)->step = step;
	return 0;
}

/* Runs the sampler as fx-calib does (same defaults, seed + p for prompt p)
 * over the first `prompts` prompts of cond and records every group input. */
static void collect_rows(struct all_rows *a, struct fx_model *m, const char *cond, int prompts,
			 int steps, int res, uint64_t seed)
{
	const struct fx_model_config *c = fx_model_config(m);
	struct fx_flux_hooks h = { .ctx = a, .capture = all_cap };
	struct fx_sample_params sp;
	struct fx_flux *f = NULL;
	struct fx_st *cs = NULL;
	struct fx_err err = { 0 };
	const struct fx_tensor *pe, *pp;
	float *txt, *pooled, *lat;
	int64_t nt;

	memset(a, 0, sizeof(*a));
	a->m = m;
	a->n = fx_model_ngroups(m);
	a->x = calloc(a->n, sizeof(*a->x));
	a->prov = calloc(a->n, sizeof(*a->prov));
	a->rows = calloc(a->n, sizeof(*a->rows));
	assert_true(a->x && a->prov && a->rows);
	if (fx_st_open(&cs, cond, &err) < 0 || fx_flux_new(&f, m, &err) < 0)
		fail_msg("%s", err.msg);
	pe = fx_st_find(cs, "prompt_embeds");
	pp = fx_st_find(cs, "pooled_prompt_embeds");
	assert_true(pe && pp);
	nt = pe->shape[1];
	txt = malloc((size_t)(nt * c->joint_dim) * sizeof(float));
	pooled = malloc((size_t)c->pooled_dim * sizeof(float));
	lat = malloc((size_t)(res / 16) * (res / 16) * c->in_channels * sizeof(float));
	assert_true(txt && pooled && lat);
	fx_flux_set_hooks(f, &h);
	fx_sample_params_init(&sp, c);
	sp.steps = steps;
	sp.width = sp.height = res;
	sp.step_begin = all_step;
	sp.step_ctx = a;
	for (int p = 0; p < prompts; p++) {
		size_t tsz = fx_dtype_size(pe->dtype), psz = fx_dtype_size(pp->dtype);

		assert_int_equal(fx_to_f32(txt, (const char *)pe->data + (size_t)(p * nt * c->joint_dim) * tsz,
					   pe->dtype, (size_t)(nt * c->joint_dim)), 0);
		assert_int_equal(fx_to_f32(pooled, (const char *)pp->data + (size_t)(p * c->pooled_dim) * psz,
					   pp->dtype, (size_t)c->pooled_dim), 0);
		a->prompt = p;
		sp.seed = seed + (uint64_t)p;
		if (fx_sampler_run(f, &sp, txt, nt, pooled, lat, &err) < 0)
			fail_msg("sampler: %s", err.msg);
	}
	free(txt);
	free(pooled);
	free(lat);
	fx_flux_free(f);
	fx_st_close(cs);
}

static void free_rows(struct all_rows *a)
{
	for (size_t i = 0; i < a->n; i++) {
		free(a->x[i]);
		free(a->prov[i]);
	}
	free(a->x);
	free(a->prov);
	free(a->rows);
}

/* A synthetic model (txt_dim 256) and 3 prompts of 16 tokens in a new
 * temporary folder dir. */
static void calib_inputs(char *dir, char *mp, char *cp, size_t n)
{
	struct fx_synth_opts o;
	struct fx_synth_cond_opts co;
	struct fx_err err = { 0 };

	assert_non_null(mkdtemp(dir));
	snprintf(mp, n, "%s/model", dir);
	snprintf(cp, n, "%s/cond.safetensors", dir);
	fx_synth_opts_init(&o);
	o.txt_dim = 256;
	fx_synth_cond_opts_init(&co);
	co.txt_dim = 256;
	co.prompts = 3;
	co.txt_len = 16;
	if (fx_synth_model(mp, &o, &err) < 0 || fx_synth_cond(cp, &co, &err) < 0)
		fail_msg("synth: %s", err.msg);
}

static void run_calib(const struct fx_calibrate_opts *o)
{
	struct fx_err err = { 0 };
	bool utd = true;

	if (fx_calibrate_run(o, &utd, NULL, &err) < 0)
		fail_msg("fx_calibrate_run: %s", err.msg);
	assert_false(utd);
}

/* With one prompt, one step and --samples at least the rows a layer sees,
 * the samples are exactly the layer's input rows (BF16, in order), absmax
 * is max |x| per channel, xtx is XᵀX and xsum Σx, both summed in f64, and
 * nrows the row count. */
static void test_calibrate_exact(void **state)
{
	char dir[] = "/tmp/fx-test-calib-XXXXXX", mp[512], cp[512], op[512];
	struct fx_calibrate_opts o = { .prompts = 1, .steps = 1, .width = 64, .height = 64, .guidance = -1,
				       .seed = 3, .samples = 32, .hessian = true, .first_block = -1,
				       .last_block = -1 };
	struct fx_model *m = NULL;
	struct fx_st *cal = NULL;
	struct fx_err err = { 0 };
	struct all_rows a;
	double worst = 0.0;

	(void)state;
	calib_inputs(dir, mp, cp, sizeof(mp));
	snprintf(op, sizeof(op), "%s/calib.safetensors", dir);
	o.model = mp;
	o.cond = cp;
	o.output = op;
	run_calib(&o);
	if (fx_model_open(&m, mp, &err) < 0 || fx_st_open(&cal, op, &err) < 0)
		fail_msg("%s", err.msg);
	collect_rows(&a, m, cp, 1, 1, 64, 3);
	for (size_t gi = 0; gi < a.n; gi++) {
		const struct fx_group *g = fx_model_group(m, gi);
		const struct fx_tensor *am, *sm, *xt, *xs, *nr;
		const float *x = a.x[gi], *amv;
		const double *xtv, *xsv;
		int64_t nrv;
		const uint16_t *smv;
		int64_t k = g->k, rows = a.rows[gi];
		char nm[160];

		/* 16 image + 16 text tokens: at most 32 rows, all kept */
		assert_true(rows >= 1 && rows <= o.samples);
		snprintf(nm, sizeof(nm), "%s.absmax", g->name);
		am = fx_st_find(cal, nm);
		snprintf(nm, sizeof(nm), "%s.samples", g->name);
		sm = fx_st_find(cal, nm);
		snprintf(nm, sizeof(nm), "%s.xtx", g->name);
		xt = fx_st_find(cal, nm);
		snprintf(nm, sizeof(nm), "%s.xsum", g->name);
		xs = fx_st_find(cal, nm);
		snprintf(nm, sizeof(nm), "%s.nrows", g->name);
		nr = fx_st_find(cal, nm);
		assert_true(am && sm && xt && xs && nr);
		assert_int_equal(am->dtype, FX_F32);
		assert_int_equal(sm->dtype, FX_BF16);
		assert_int_equal(xt->dtype, FX_F64);
		assert_int_equal(xs->dtype, FX_F64);
		assert_int_equal(nr->dtype, FX_I64);
		memcpy(&nrv, nr->data, 8);
		assert_int_equal(nrv, rows);
		assert_int_equal(sm->shape[0], rows);
		assert_int_equal(sm->shape[1], k);
		amv = am->data;
		smv = sm->data;
		xtv = xt->data;
		xsv = xs->data;
		for (int64_t j = 0; j < k; j++) {
			float mx = 0.0f;

			for (int64_t r = 0; r < rows; r++)
				mx = fmaxf(mx, fabsf(x[r * k + j]));
			if (amv[j] != mx)
				fail_msg("%s.absmax[%lld] = %g, max |x| = %g", g->name, (long long)j, amv[j], mx);
		}
		for (int64_t r = 0; r < rows * k; r++)
			if (smv[r] != fx_f32_to_bf16(x[r]))
				fail_msg("%s.samples: row %lld channel %lld is 0x%04x, the input's BF16 is 0x%04x",
					 g->name, (long long)(r / k), (long long)(r % k), smv[r],
					 fx_f32_to_bf16(x[r]));
		for (int64_t j = 0; j < k; j++) {
			double s = 0.0, sa = 0.0;

			for (int64_t r = 0; r < rows; r++) {
				s += x[r * k + j];
				sa += fabs(x[r * k + j]);
			}
			if (!(fabs(xsv[j] - s) <= 1e-12 * sa))
				fail_msg("%s.xsum[%lld] = %.17g, Σx = %.17g", g->name, (long long)j, xsv[j], s);
		}
		for (int64_t i = 0; i < k; i++)
			for (int64_t j = 0; j < k; j++) {
				double s = 0.0, sa = 0.0, e;

				for (int64_t r = 0; r < rows; r++) {
					s += (double)x[r * k + i] * x[r * k + j];
					sa += fabs((double)x[r * k + i] * x[r * k + j]);
				}
				/* f64 sums in another order */
				e = fabs(xtv[i * k + j] - s);
				if (sa > 1e-30)
					worst = fmax(worst, e / sa);
				if (!(e <= 1e-12 * sa))
					fail_msg("%s.xtx[%lld,%lld] = %.9g, XᵀX = %.9g", g->name, (long long)i,
						 (long long)j, xtv[i * k + j], s);
			}
	}
	printf("# calib: samples, absmax and nrows exact, xtx within %.3g of XᵀX (relative to |X|ᵀ|X|)\n", worst);
	free_rows(&a);
	fx_st_close(cal);
	fx_model_close(m);
	nftw(dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
}

/* With several prompts and steps and a small --samples, every sample is one
 * of the layer's input rows, and the reservoir holds rows of every prompt
 * and every step in about equal numbers (not just the first or last rows). */
static void test_calibrate_reservoir_spread(void **state)
{
	char dir[] = "/tmp/fx-test-calib-XXXXXX", mp[512], cp[512], op[512];
	enum { P = 3, S = 3, M = 6 };
	struct fx_calibrate_opts o = { .prompts = P, .steps = S, .width = 64, .height = 64, .guidance = -1,
				       .seed = 0, .samples = M, .first_block = -1, .last_block = -1 };
	struct fx_model *m = NULL;
	struct fx_st *cal = NULL;
	struct fx_err err = { 0 };
	struct all_rows a;
	int per_prompt[P] = { 0 }, per_step[S] = { 0 }, total = 0;

	(void)state;
	calib_inputs(dir, mp, cp, sizeof(mp));
	snprintf(op, sizeof(op), "%s/calib.safetensors", dir);
	o.model = mp;
	o.cond = cp;
	o.output = op;
	run_calib(&o);
	if (fx_model_open(&m, mp, &err) < 0 || fx_st_open(&cal, op, &err) < 0)
		fail_msg("%s", err.msg);
	collect_rows(&a, m, cp, P, S, 64, 0);
	for (size_t gi = 0; gi < a.n; gi++) {
		const struct fx_group *g = fx_model_group(m, gi);
		const struct fx_tensor *sm;
		const uint16_t *smv;
		int64_t k = g->k;
		int gp[P] = { 0 }, gs[S] = { 0 }, np = 0, ns = 0;
		char nm[160];

		assert_true(a.rows[gi] >= P * S);   /* adaLN groups: one row a forward */
		snprintf(nm, sizeof(nm), "%s.samples", g->name);
		sm = fx_st_find(cal, nm);
		assert_non_null(sm);
		assert_int_equal(sm->shape[0], M);
		smv = sm->data;
		for (int s = 0; s < M; s++) {
			int64_t r;

			for (r = 0; r < a.rows[gi]; r++) {
				int64_t j;

				for (j = 0; j < k && smv[s * k + j] == fx_f32_to_bf16(a.x[gi][r * k + j]); j++)
					;
				if (j == k)
					break;
			}
			if (r == a.rows[gi])
				fail_msg("%s.samples row %d is none of the layer's input rows", g->name, s);
			gp[a.prov[gi][r] / 1000]++;
			gs[a.prov[gi][r] % 1000]++;
		}
		for (int i = 0; i < P; i++) {
			np += gp[i] > 0;
			per_prompt[i] += gp[i];
		}
		for (int i = 0; i < S; i++) {
			ns += gs[i] > 0;
			per_step[i] += gs[i];
		}
		/* image and joint rows: 16 or 32 a forward, 144 or 288 in all */
		if (g->kind != FX_GROUP_ADALN && (np < 2 || ns < 2))
			fail_msg("%s: its %d samples come from %d prompt(s) and %d step(s)", g->name, M, np, ns);
		total += M;
	}
	printf("# calib reservoir: samples per prompt %d %d %d, per step %d %d %d\n", per_prompt[0],
	       per_prompt[1], per_prompt[2], per_step[0], per_step[1], per_step[2]);
	/* expected total/3 each; a binomial's 4 standard deviations is < total/6 here */
	for (int i = 0; i < P; i++)
		assert_true(per_prompt[i] > total / 6 && per_prompt[i] < total / 2);
	for (int i = 0; i < S; i++)
		assert_true(per_step[i] > total / 6 && per_step[i] < total / 2);
	free_rows(&a);
	fx_st_close(cal);
	fx_model_close(m);
	nftw(dir, rm_cb, 8, FTW_DEPTH | FTW_PHYS);
}

/* ---- sampler ------------------------------------------------------------ */

struct step_log {
	int n;
	int steps[8];
	float sigmas[8];
};

static int on_step(void *ctx, int step, float sigma, struct fx_err *err)
{
	struct step_log *l = ctx;

	(void)err;
	if (l->n < 8) {
		l->steps[l->n] = step;
		l->sigmas[l->n] = sigma;
	}
	l->n++;
	return 0;
}

static int stop_step(void *ctx, int step, float sigma, struct fx_err *err)
{
	(void)ctx; (void)sigma;
	return step == 2 ? fx_error(err, FX_E_INTERRUPTED, "interrupted") : 0;
}

static void test_sampler_reference(void **state)
{
	const struct fx_model_config *c = fx_model_config(fix.model);
	struct fx_sample_params p;
	struct step_log log = { 0 };
	struct fx_err err = { 0 };
	struct fwd_ref r;
	uint64_t nz, nl, ns;
	float *noise = ref_f32("smp.noise", &nz), *lat = ref_f32("smp.latents", &nl);
	float *sig = ref_f32("smp.sigmas", &ns), *mu = ref_f32("smp.mu", NULL);
	float *init, *out, mysig[8];
	double e;

	(void)state;
	fx_sample_params_init(&p, c);
	assert_true(p.dynamic_shift);
	p.width = p.height = 128;
	p.steps = 4;
	p.guidance = 3.5f;
	assert_int_equal(nz, 16 * 16 * 16);
	assert_int_equal(ns, 5);
	/* schedule: bit-equal to diffusers (1 ulp allowed) */
	assert_true(fabs(fx_sampler_mu(64) - mu[0]) < 1e-7);
	assert_int_equal(fx_sampler_sigmas(mysig, 4, 64, true, 1.0f, &err), 0);
	for (int i = 0; i < 5; i++)
		assert_true(fabsf(mysig[i] - sig[i]) <= 1.2e-7f);

	init = malloc((size_t)nl * sizeof(float));
	out = malloc((size_t)nl * sizeof(float));
	assert_true(init && out);
	fx_latent_pack(init, noise, 16, 16, 16);
	p.init = init;
	p.step_begin = on_step;
	p.step_ctx = &log;
	fwd_load(&r);
	if (fx_sampler_run(fix.flux, &p, r.in.txt, r.in.nt, r.in.pooled, out, &err) < 0)
		fail_msg("sampler: %s", err.msg);
	assert_int_equal(log.n, 4);
	for (int i = 0; i < 4; i++) {
		assert_int_equal(log.steps[i], i);
		assert_true(log.sigmas[i] == mysig[i]);
	}
	e = rel_err(out, lat, (size_t)nl);
	printf("# sampler: 4 steps at 128x128, relative error %.3g vs diffusers\n", e);
	assert_true(e <= REL_BUDGET);

	/* seeded noise is deterministic and is the packed [16,h,w] draw */
	{
		float *z = malloc((size_t)nz * sizeof(float)), *pk = malloc((size_t)nz * sizeof(float));
		struct fx_rng g;

		assert_true(z && pk);
		fx_rng_init(&g, 99);
		fx_rng_normal_f32(&g, z, (size_t)nz);
		fx_latent_pack(init, z, 16, 16, 16);
		fx_sampler_noise(pk, 16, 16, 16, 99);
		assert_memory_equal(init, pk, (size_t)nz * sizeof(float));
		free(z);
		free(pk);
	}
	/* a failing step callback stops the run with its status */
	p.step_begin = stop_step;
	assert_int_equal(fx_sampler_run(fix.flux, &p, r.in.txt, r.in.nt, r.in.pooled, out, &err),
			 FX_E_INTERRUPTED);
	free(init);
	free(out);
	free(noise);
	free(lat);
	free(sig);
	free(mu);
	fwd_free(&r);
}

static void test_sigmas_spec(void **state)
{
	static const float s28[] = { 1.0f, 0.988409f, 0.976222f, 0.963394f, 0.949873f };
	static const float s28t[] = { 0.274828f, 0.195455f, 0.104721f };
	static const float s50[] = { 1.0f, 0.99358f, 0.986979f, 0.98019f, 0.973204f };
	static const float s50t[] = { 0.167767f, 0.116289f, 0.06055f };
	float s[64];
	struct fx_err err = { 0 };

	(void)state;
	assert_int_equal(fx_sampler_sigmas(s, 28, 4096, true, 1.0f, &err), 0);
	for (int i = 0; i < 5; i++)
		assert_true(fabsf(s[i] - s28[i]) < 1.5e-6f);
	for (int i = 0; i < 3; i++)
		assert_true(fabsf(s[25 + i] - s28t[i]) < 1.5e-6f);
	assert_true(s[28] == 0.0f);
	assert_int_equal(fx_sampler_sigmas(s, 50, 4096, true, 1.0f, &err), 0);
	for (int i = 0; i < 5; i++)
		assert_true(fabsf(s[i] - s50[i]) < 1.5e-6f);
	for (int i = 0; i < 3; i++)
		assert_true(fabsf(s[47 + i] - s50t[i]) < 1.5e-6f);
	assert_true(s[50] == 0.0f);
	/* spec §3.5: t = 1000, 992, 988, 980 */
	assert_true(fx_flux_timestep(s[1]) == 992.0f);
	assert_true(fx_flux_timestep(s[2]) == 988.0f);
	assert_true(fx_flux_timestep(s[3]) == 980.0f);
	/* schnell: no shift */
	assert_int_equal(fx_sampler_sigmas(s, 4, 4096, false, 1.0f, &err), 0);
	assert_true(s[0] == 1.0f && s[1] == 0.75f && s[2] == 0.5f && s[3] == 0.25f && s[4] == 0.0f);
	assert_true(fabs(fx_sampler_mu(256) - 0.5) < 1e-12);
	assert_true(fabs(fx_sampler_mu(4096) - 1.15) < 1e-12);
	assert_int_equal(fx_sampler_sigmas(s, 1, 4096, true, 1.0f, &err), 0);
	assert_true(s[0] == 1.0f && s[1] == 0.0f);
	assert_int_equal(fx_sampler_sigmas(s, 0, 4096, true, 1.0f, &err), FX_E_ARG);
}

static void test_rng(void **state)
{
	static const float first0[] = { -0.452757746f, 0.207766041f, 2.65060592f, -0.490422815f,
					-0.988604128f, 1.87210143f };
	static const float first42[] = { 0.41471976f, 0.652681231f, -0.891886234f, 1.32683361f,
					 1.72959304f, -1.88341677f };
	struct fx_rng g;
	float v[6];
	double s1 = 0, s2 = 0, s3 = 0, s4 = 0, umin = 1, umax = 0;
	const int n = 1000000;

	(void)state;
	fx_rng_init(&g, 0);
	assert_true(fx_rng_u64(&g) == 0xe220a8397b1dcdafull);
	assert_true(fx_rng_u64(&g) == 0x6e789e6aa1b965f4ull);
	fx_rng_init(&g, 0);
	fx_rng_normal_f32(&g, v, 6);
	assert_memory_equal(v, first0, sizeof(v));
	fx_rng_init(&g, 42);
	fx_rng_normal_f32(&g, v, 6);
	assert_memory_equal(v, first42, sizeof(v));
	/* moments of 10^6 normals: mean 0, variance 1, E x³ = 0, E x⁴ = 3;
	 * bounds are 5 standard errors (0.001, 0.0014, 0.0039, 0.0098) */
	fx_rng_init(&g, 12345);
	for (int i = 0; i < n; i++) {
		double x = fx_rng_normal(&g), x2 = x * x;

		s1 += x;
		s2 += x2;
		s3 += x2 * x;
		s4 += x2 * x2;
	}
	s1 /= n;
	s2 /= n;
	s3 /= n;
	s4 /= n;
	printf("# rng: mean %.4f var %.4f skew %.4f kurt %.4f\n", s1, s2, s3, s4);
	assert_true(fabs(s1) < 0.005);
	assert_true(fabs(s2 - 1.0) < 0.007);
	assert_true(fabs(s3) < 0.02);
	assert_true(fabs(s4 - 3.0) < 0.05);
	for (int i = 0; i < 100000; i++) {
		double u = fx_rng_uniform(&g);

		umin = fmin(umin, u);
		umax = fmax(umax, u);
	}
	assert_true(umin > 0.0 && umin < 1e-3 && umax < 1.0 && umax > 1.0 - 1e-3);
}

static void test_pack(void **state)
{
	enum { C = 3, H = 6, W = 4 };
	float z[C * H * W], p[C * H * W], back[C * H * W], ids[(H / 2) * (W / 2) * 3];

	(void)state;
	for (int i = 0; i < C * H * W; i++)
		z[i] = (float)i;
	fx_latent_pack(p, z, C, H, W);
	/* token (r=2, c=1), channel 1, dy=1, dx=0 → z[1, 5, 2] */
	assert_true(p[(2 * (W / 2) + 1) * 4 * C + 1 * 4 + 2] == z[(1 * H + 5) * W + 2]);
	fx_latent_unpack(back, p, C, H, W);
	assert_memory_equal(back, z, sizeof(z));
	fx_sampler_img_ids(ids, H / 2, W / 2);
	assert_true(ids[(2 * 2 + 1) * 3] == 0.0f && ids[(2 * 2 + 1) * 3 + 1] == 2.0f &&
		    ids[(2 * 2 + 1) * 3 + 2] == 1.0f);
}

/* ---- ops ---------------------------------------------------------------- */

static void test_ops_attention(void **state)
{
	/* more than one query tile (tiles hold 4M scores: 4100 rows → 1023 a tile) */
	const int64_t n = 4100;
	const int heads = 2, hd = 8;
	const int64_t ld = 3 * heads * hd + 5, ldo = heads * hd + 3;
	float *qkv = malloc((size_t)(n * ld) * sizeof(float));
	float *o = malloc((size_t)(n * ldo) * sizeof(float));
	double *p = malloc((size_t)n * sizeof(double));
	struct fx_rng g;
	struct fx_err err = { 0 };
	double worst = 0.0;

	(void)state;
	assert_true(qkv && o && p);
	fx_rng_init(&g, 3);
	for (int64_t i = 0; i < n * ld; i++)
		qkv[i] = (float)(2.0 * fx_rng_normal(&g));
	assert_int_equal(fx_ops_attention(o, ldo, qkv, qkv + heads * hd, qkv + 2 * heads * hd, ld,
					  n, heads, hd, NULL, &err), 0);
	for (int64_t i = 0; i < n; i += 97) {
		for (int h = 0; h < heads; h++) {
			const float *q = qkv + i * ld + h * hd;
			double mx = -INFINITY, sum = 0.0;

			for (int64_t j = 0; j < n; j++) {
				const float *k = qkv + j * ld + heads * hd + h * hd;
				double s = 0.0;

				for (int e = 0; e < hd; e++)
					s += (double)q[e] * k[e];
				p[j] = s / sqrt((double)hd);
				mx = fmax(mx, p[j]);
			}
			for (int64_t j = 0; j < n; j++)
				sum += (p[j] = exp(p[j] - mx));
			for (int e = 0; e < hd; e++) {
				double ref = 0.0;

				for (int64_t j = 0; j < n; j++)
					ref += p[j] / sum * qkv[j * ld + 2 * heads * hd + h * hd + e];
				worst = fmax(worst, fabs(ref - o[i * ldo + h * hd + e]));
			}
		}
	}
	printf("# attention: max abs error %.3g vs f64 (values ~1)\n", worst);
	assert_true(worst < 1e-5);
	free(qkv);
	free(o);
	free(p);
}

static void test_ops_elementwise(void **state)
{
	float x[9] = { -20.0f, -3.0f, -0.5f, -1e-4f, 0.0f, 1e-4f, 0.7f, 4.0f, 30.0f };
	float y[9], e[256], g[400];
	float ln[2 * 5] = { 1, 2, 3, 4, 5, -1, -1, -1, -1, 7 };
	float w[3 * 6], xx[2 * 3], yy[2 * 6], b[6];

	(void)state;
	memcpy(y, x, sizeof(x));
	fx_ops_gelu_tanh(y, 9);
	for (int i = 0; i < 9; i++) {
		double a = x[i];
		double r = 0.5 * a * (1.0 + tanh(sqrt(2.0 / M_PI) * (a + 0.044715 * a * a * a)));

		assert_true(fabs(y[i] - r) <= 1e-6 * fmax(1.0, fabs(r)));
	}
	/* the negative tail: exact 0 instead of values near FLT_MIN, whose
	 * products with the next layer's weights are subnormal (a 1.5x slower
	 * sgemm); the true value there is below 1e-33 */
	for (int i = 0; i < 400; i++)
		g[i] = -0.05f * (float)i;
	fx_ops_gelu_tanh(g, 400);
	for (int i = 0; i < 400; i++) {
		double a = (double)(-0.05f * (float)i), u = sqrt(2.0 / M_PI) * (a + 0.044715 * a * a * a);
		double r = a / (1.0 + exp(-2.0 * u));

		/* relative error grows with |u| in the tail (f32 rounding of u) */
		assert_true(g[i] == 0.0f || fabsf(g[i]) >= 1e-35f);
		assert_true(fabs(g[i] - r) <= 1e-6 * fmax(1.0, fabs(u)) * fabs(r) + 1e-30);
	}
	fx_ops_silu(y, x, 9);
	for (int i = 0; i < 9; i++) {
		double r = x[i] / (1.0 + exp(-(double)x[i]));

		assert_true(fabs(y[i] - r) <= 1e-6 * fmax(1.0, fabs(r)));
	}
	fx_ops_timestep_embed(e, 0.0f, 256);
	for (int i = 0; i < 128; i++)
		assert_true(e[i] == 1.0f && e[128 + i] == 0.0f);
	fx_ops_timestep_embed(e, 500.0f, 256);
	assert_true(fabsf(e[0] - cosf(500.0f)) < 1e-6f && fabsf(e[128] - sinf(500.0f)) < 1e-6f);
	assert_true(fabs(e[64] - cos(500.0 * exp(-log(10000.0) * 64 / 128))) < 1e-5);
	fx_ops_layernorm(ln, ln, 2, 5, 1e-6f);
	assert_true(fabsf(ln[0] + 1.4142123f) < 1e-5f && fabsf(ln[2]) < 1e-6f);
	assert_true(fabsf(ln[9] - 2.0f) < 1e-5f);
	/* linear, with and without bias, m = 1 and m > 1 */
	for (int i = 0; i < 18; i++)
		w[i] = (float)(i % 5) - 2.0f;
	for (int i = 0; i < 6; i++) {
		xx[i] = (float)i * 0.5f;
		b[i] = (float)i;
	}
	fx_ops_linear(yy, xx, w, b, 2, 3, 3);   /* w as (3,3) */
	for (int r = 0; r < 2; r++)
		for (int o = 0; o < 3; o++) {
			float s = b[o];

			for (int k = 0; k < 3; k++)
				s += xx[r * 3 + k] * w[o * 3 + k];
			assert_true(fabsf(yy[r * 3 + o] - s) < 1e-5f);
		}
	fx_ops_linear(yy, xx, w, NULL, 1, 6, 3);
	for (int o = 0; o < 6; o++) {
		float s = 0;

		for (int k = 0; k < 3; k++)
			s += xx[k] * w[o * 3 + k];
		assert_true(fabsf(yy[o] - s) < 1e-5f);
	}
}

/* The in-place BF16 GEMV of the modulations: rows with a stride, odd k (the
 * tail after 16-wide steps), bias or none, against f64; NaN/Inf reported. */
static void test_ops_gemv_bf16(void **state)
{
	const int64_t n = 300, k = 1037, ld = 1100;
	uint16_t *w = malloc((size_t)(n * ld) * 2);
	float *x = malloc((size_t)k * 4), *b = malloc((size_t)n * 4), *y = malloc((size_t)n * 4);
	struct fx_rng g;

	(void)state;
	assert_true(w && x && b && y);
	fx_rng_init(&g, 5);
	for (int64_t i = 0; i < n * ld; i++)
		w[i] = fx_f32_to_bf16((float)fx_rng_normal(&g));
	for (int64_t i = 0; i < k; i++)
		x[i] = (float)fx_rng_normal(&g);
	for (int64_t i = 0; i < n; i++)
		b[i] = (float)i * 0.5f;
	for (int nb = 0; nb < 2; nb++) {
		assert_true(fx_ops_gemv_bf16(y, x, w, ld, nb ? NULL : b, n, k));
		for (int64_t r = 0; r < n; r++) {
			double s = nb ? 0.0 : b[r];

			for (int64_t c = 0; c < k; c++)
				s += (double)fx_bf16_to_f32(w[r * ld + c]) * x[c];
			assert_true(fabs(s - y[r]) < 1e-3);
		}
	}
	w[77 * ld + 1030] = 0x7fc0;   /* NaN in the tail of a row */
	assert_false(fx_ops_gemv_bf16(y, x, w, ld, b, n, k));
	w[77 * ld + 1030] = 0xff80;   /* -Inf */
	assert_false(fx_ops_gemv_bf16(y, x, w, ld, b, n, k));
	w[77 * ld + 1030] = 0;
	w[12 * ld + 3] = 0x7f80;      /* +Inf in the 16-wide part */
	assert_false(fx_ops_gemv_bf16(y, x, w, ld, b, n, k));
	free(w);
	free(x);
	free(b);
	free(y);
}

/* Products large enough to be split over the threads, panels of n (n >= m)
 * and of m (m > n), with sizes that do not divide: against f64. */
static void test_ops_linear_panels(void **state)
{
	static const int64_t shapes[][3] = { { 300, 517, 129 }, { 701, 100, 80 } };
	struct fx_rng g;

	(void)state;
	fx_rng_init(&g, 11);
	for (size_t si = 0; si < 2; si++) {
		int64_t m = shapes[si][0], n = shapes[si][1], k = shapes[si][2];
		float *x = malloc((size_t)(m * k) * 4), *w = malloc((size_t)(n * k) * 4);
		float *b = malloc((size_t)n * 4), *y = malloc((size_t)(m * n) * 4);
		double worst = 0.0;

		assert_true(x && w && b && y);
		for (int64_t i = 0; i < m * k; i++)
			x[i] = (float)fx_rng_normal(&g);
		for (int64_t i = 0; i < n * k; i++)
			w[i] = (float)fx_rng_normal(&g);
		for (int64_t i = 0; i < n; i++)
			b[i] = (float)i;
		fx_ops_linear(y, x, w, si ? NULL : b, m, n, k);
		for (int64_t r = 0; r < m; r++)
			for (int64_t o = 0; o < n; o++) {
				double s = si ? 0.0 : b[o];

				for (int64_t c = 0; c < k; c++)
					s += (double)x[r * k + c] * w[o * k + c];
				worst = fmax(worst, fabs(s - y[r * n + o]));
			}
		assert_true(worst < 1e-3);
		free(x);
		free(w);
		free(b);
		free(y);
	}
}

static void test_ops_rope_rms(void **state)
{
	const int axes[3] = { 4, 14, 14 };
	float ids[2 * 3] = { 0, 0, 0, 0, 3, 5 }, cs[2 * 16], sn[2 * 16];
	float v[2 * 64], g[32], orig[2 * 64];
	struct fx_rng r;

	(void)state;
	fx_ops_rope_table(cs, sn, ids, 2, axes, 10000.0);
	for (int k = 0; k < 16; k++)
		assert_true(cs[k] == 1.0f && sn[k] == 0.0f);   /* text token: identity */
	/* pairs 0-1: axis 0; 2-8: axis 1 (j = k - 2); 9-15: axis 2 (j = k - 9) */
	assert_true(fabsf(cs[16 + 2] - (float)cos(3.0)) < 1e-7f);
	assert_true(fabsf(sn[16 + 8] - (float)sin(3.0 * pow(10000.0, -12.0 / 14.0))) < 1e-7f);
	assert_true(fabsf(sn[16 + 9] - (float)sin(5.0)) < 1e-7f);
	assert_true(fabsf(sn[16 + 15] - (float)sin(5.0 * pow(10000.0, -12.0 / 14.0))) < 1e-7f);
	fx_rng_init(&r, 5);
	fx_rng_normal_f32(&r, v, 128);
	memcpy(orig, v, sizeof(v));
	fx_ops_rope_apply(v, 64, 2, 2, 32, cs, sn);
	assert_memory_equal(v, orig, 64 * sizeof(float));   /* token 0 unrotated */
	for (int h = 0; h < 2; h++)
		for (int k = 0; k < 16; k++) {
			float a = orig[64 + h * 32 + 2 * k], b = orig[64 + h * 32 + 2 * k + 1];
			float c = cs[16 + k], s = sn[16 + k];

			assert_true(fabsf(v[64 + h * 32 + 2 * k] - (a * c - b * s)) < 1e-6f);
			assert_true(fabsf(v[64 + h * 32 + 2 * k + 1] - (b * c + a * s)) < 1e-6f);
		}
	/* RMSNorm per head with g = 2: every head vector gets rms 2 */
	for (int i = 0; i < 32; i++)
		g[i] = 2.0f;
	fx_ops_rmsnorm_heads(v, 64, 2, 2, 32, g, 1e-6f);
	for (int t = 0; t < 2; t++)
		for (int h = 0; h < 2; h++) {
			double ss = 0;

			for (int j = 0; j < 32; j++)
				ss += (double)v[t * 64 + h * 32 + j] * v[t * 64 + h * 32 + j];
			assert_true(fabs(sqrt(ss / 32) - 2.0) < 1e-4);
		}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_ops_elementwise),
		cmocka_unit_test(test_ops_linear_panels),
		cmocka_unit_test(test_ops_gemv_bf16),
		cmocka_unit_test(test_ops_rope_rms),
		cmocka_unit_test(test_ops_attention),
		cmocka_unit_test(test_rng),
		cmocka_unit_test(test_pack),
		cmocka_unit_test(test_sigmas_spec),
		cmocka_unit_test(test_timestep_rounding),
		cmocka_unit_test(test_forward_reference),
		cmocka_unit_test(test_capture_reference),
		cmocka_unit_test(test_hook_error),
		cmocka_unit_test(test_sampler_reference),
		cmocka_unit_test(test_bfl_layout),
		cmocka_unit_test(test_bfl_fixture),
		cmocka_unit_test(test_calibrate_exact),
		cmocka_unit_test(test_calibrate_reservoir_spread),
	};

	return cmocka_run_group_tests_name("flux", tests, setup_group, teardown_group);
}
