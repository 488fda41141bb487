/* Qwen-Image forward, sampler schedule, RoPE and true CFG against diffusers
 * 0.42.1 (transformer_qwenimage.py, pipeline_qwenimage.py,
 * scheduling_flow_match_euler_discrete.py). The constants of the first
 * group were printed by diffusers itself (QwenEmbedRope,
 * FlowMatchEulerDiscreteScheduler with the Qwen-Image scheduler config,
 * the pipeline's bf16 timestep); the second group runs the tiny model
 * tests/fixtures/qwenimage-tiny against qwenimage-tiny-ref.safetensors
 * (tests/fixtures/gen_qwenimage_ref.py: f32 torch on the BF16 weights, the
 * timestep rounded as the BF16 pipeline does).
 *
 * Relative error of a result a against a reference b: max|a − b| / max|b|
 * over all elements. The C path is f32 like the reference, so what is left
 * is summation order and libm (~1e-6); the budget REL_BUDGET = 1e-4 is two
 * orders above that and far below what any convention error gives (the
 * unrounded timestep alone moves the output by 0.2, a missed mask by 1e-1). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-model.h"
#include "fx-qwen-sampler.h"
#include "fx-qwen.h"
#include "fx-sampler.h"
#include "fx-st.h"

#define REL_BUDGET 1e-4

struct fixture {
	struct fx_model *model;
	struct fx_st *ref;
	struct fx_qwen *qwen;
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

/* ---- timestep ------------------------------------------------------------ */

static void test_timestep_rounding(void **state)
{
	/* σ, then the transformer's timestep input: bf16(bf16(1000σ)/1000) */
	static const float tab[][2] = {
		{ 1.0f, 1.0f },
		{ 0.9897009134292603f, 0.98828125f },    /* 990 / 1000 → bf16 */
		{ 0.7434282302856445f, 0.7421875f },
		{ 0.42518579959869385f, 0.42578125f },
		{ 0.019999980926513672f, 0.02001953125f },
		{ 0.0584757924079895f, 0.05859375f },
	};

	(void)state;
	for (size_t i = 0; i < FX_ARRAY_SIZE(tab); i++)
		assert_true(fx_qwen_timestep(tab[i][0]) == tab[i][1]);
	assert_true(fx_qwen_timestep(0.0f) == 0.0f);
}

/* ---- schedule ------------------------------------------------------------ */

static void test_sigmas(void **state)
{
	/* FlowMatchEulerDiscreteScheduler(Qwen-Image config).set_timesteps(
	 * sigmas=np.linspace(1, 1/n, n), mu=calculate_shift(L, 256, 8192, 0.5, 0.9)) */
	static const struct {
		int64_t L;
		int n;
		double mu;
		float head[3], tail[3];   /* sigmas[0..2], sigmas[n-2..n] */
	} cases[] = {
		{ 4096, 50, 0.6935483870967742, { 0x1p+0f, 0x1.faba14p-1f, 0x1.f55896p-1f },
		  { 0x1.df08ap-5f, 0x1.47aep-6f, 0.0f } },
		{ 6032, 50, 0.7911290322580645, { 0x1p+0f, 0x1.fb318p-1f, 0x1.f6477ep-1f },
		  { 0x1.fc9f2p-5f, 0x1.47aep-6f, 0.0f } },
		{ 64, 4, 0.4903225806451613, { 0x1p+0f, 0x1.7ca2ap-1f, 0x1.b363e8p-2f },
		  { 0x1.b363e8p-2f, 0x1.47aep-6f, 0.0f } },
		{ 16, 3, 0.4879032258064516, { 0x1p+0f, 0x1.2a2d1cp-1f, 0x1.47aep-6f },
		  { 0x1.2a2d1cp-1f, 0x1.47aep-6f, 0.0f } },
	};
	float s[64];
	struct fx_err err = { 0 };

	(void)state;
	for (size_t c = 0; c < FX_ARRAY_SIZE(cases); c++) {
		int n = cases[c].n;

		assert_true(fabs(fx_qwen_mu(cases[c].L) - cases[c].mu) < 1e-15);
		assert_int_equal(fx_qwen_sigmas(s, n, cases[c].L, &err), 0);
		for (int i = 0; i < 3; i++) {
			assert_true(s[i] == cases[c].head[i]);
			assert_true(s[n - 2 + i] == cases[c].tail[i]);
		}
		for (int i = 0; i < n; i++)
			assert_true(s[i] > s[i + 1]);
	}
	/* one step: diffusers' terminal stretch divides 0 by 0 (NaN sigmas) */
	assert_int_equal(fx_qwen_sigmas(s, 1, 4096, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "2 steps"));
	assert_int_equal(fx_qwen_sigmas(s, 0, 4096, &err), FX_E_ARG);
	assert_true(fabs(fx_qwen_mu(256) - 0.5) < 1e-15);
	assert_true(fabs(fx_qwen_mu(8192) - 0.9) < 1e-15);
}

/* ---- RoPE ---------------------------------------------------------------- */

struct rope_pick {
	int64_t t;
	int k;
	float c, s;
};

static void check_rope(const int axes[3], int h, int w, int64_t nt, const struct rope_pick *p,
		       size_t np)
{
	int64_t n = nt + (int64_t)h * w;
	int half = (axes[0] + axes[1] + axes[2]) / 2;
	float *cs = malloc((size_t)(n * half) * sizeof(float));
	float *sn = malloc((size_t)(n * half) * sizeof(float));

	assert_true(cs && sn);
	fx_qwen_rope_table(cs, sn, nt, h, w, axes);
	for (size_t i = 0; i < np; i++) {
		float c = cs[p[i].t * half + p[i].k], s = sn[p[i].t * half + p[i].k];

		if (c != p[i].c || s != p[i].s)
			fail_msg("rope token %lld pair %d: (%.9g, %.9g), diffusers (%.9g, %.9g)",
				 (long long)p[i].t, p[i].k, c, s, p[i].c, p[i].s);
	}
	free(cs);
	free(sn);
}

static void test_rope(void **state)
{
	/* QwenEmbedRope(10000, axes, scale_rope=True)([(1, h, w)], nt): the
	 * rows of cat([txt_freqs, vid_freqs]), pair k, (real, imag) */
	static const int ax1[3] = { 8, 12, 12 }, ax2[3] = { 16, 56, 56 };
	static const struct rope_pick p1[] = {
		{ 0, 0, -0.416146844625473f, 0.9092974066734314f },     /* text 0: p = 2 */
		{ 0, 3, 0.9999979734420776f, 0.0019999986980110407f },
		{ 3, 15, 0.9999973177909851f, 0.0023207927588373423f },
		{ 4, 0, 1.0f, 0.0f },                                     /* image (0,0): (0,-2,-3) */
		{ 4, 4, -0.416146844625473f, -0.9092974066734314f },
		{ 4, 9, 0.9999995827674866f, -0.0009283177787438035f },
		{ 4, 15, 0.9999990463256836f, -0.0013924763770774007f },
		{ 18, 5, 1.0f, 0.0f },                                    /* image (2,4): (0,0,1) */
		{ 18, 10, 0.5403022766113281f, 0.8414709568023682f },
		{ 5, 11, 0.9085956811904907f, -0.41767680644989014f },
	};
	static const struct rope_pick p2[] = {
		{ 0, 0, -0.9873392581939697f, -0.15862266719341278f },
		{ 6, 7, 0.9998895525932312f, 0.014862158335745335f },
		{ 6, 8, -0.9923354983329773f, 0.12357312440872192f },
		{ 6, 35, 0.9999786615371704f, 0.006530581507831812f },
		{ 7, 8, -0.39998531341552734f, 0.9165215492248535f },
		{ 7, 36, -0.7480575442314148f, 0.6636338829994202f },
		{ 4820, 8, -0.666938066482544f, 0.7451131343841553f },
		{ 4820, 36, -0.962605893611908f, 0.2709057927131653f },
		{ 2347, 20, 0.999254584312439f, -0.03860435634851456f },
		{ 2347, 50, 0.9959527254104614f, -0.08987854421138763f },
	};

	(void)state;
	check_rope(ax1, 3, 5, 4, p1, FX_ARRAY_SIZE(p1));
	check_rope(ax2, 83, 58, 7, p2, FX_ARRAY_SIZE(p2));
}

/* ---- true CFG ------------------------------------------------------------ */

static void test_cfg(void **state)
{
	enum { N = 5, C = 64 };
	float pos[N * C], neg[N * C], got[N * C];
	struct fx_rng g;

	(void)state;
	fx_rng_init(&g, 3);
	fx_rng_normal_f32(&g, pos, N * C);
	fx_rng_normal_f32(&g, neg, N * C);
	memcpy(got, pos, sizeof(pos));
	fx_qwen_cfg(got, neg, N, C, 4.0f);
	for (int t = 0; t < N; t++) {
		double sp = 0, sc = 0, comb[C], sg = 0;

		for (int j = 0; j < C; j++) {
			comb[j] = neg[t * C + j] + 4.0 * ((double)pos[t * C + j] - neg[t * C + j]);
			sp += (double)pos[t * C + j] * pos[t * C + j];
			sc += comb[j] * comb[j];
			sg += (double)got[t * C + j] * got[t * C + j];
		}
		/* the result has the norm of the positive prediction ... */
		assert_true(fabs(sqrt(sg) - sqrt(sp)) < 1e-5 * sqrt(sp));
		/* ... and the direction of the combination */
		for (int j = 0; j < C; j++)
			assert_true(fabs(got[t * C + j] - comb[j] * sqrt(sp / sc)) < 1e-5);
	}
	/* scale 1: the positive prediction (to rounding) */
	memcpy(got, pos, sizeof(pos));
	fx_qwen_cfg(got, neg, N, C, 1.0f);
	for (int i = 0; i < N * C; i++)
		assert_true(fabsf(got[i] - pos[i]) <= 1e-6f * fmaxf(1.0f, fabsf(pos[i])));
	/* a small exact case: pos (3, 4), neg (0, 0) → comb (12, 16) rescaled to norm 5 */
	{
		float p[2] = { 3.0f, 4.0f }, q[2] = { 0.0f, 0.0f };

		fx_qwen_cfg(p, q, 1, 2, 4.0f);
		assert_true(p[0] == 3.0f && p[1] == 4.0f);
		p[0] = 3.0f;
		p[1] = 4.0f;
		q[0] = 1.0f;   /* comb = (1 + 4·2, 16) = (9, 16), norm √337 */
		fx_qwen_cfg(p, q, 1, 2, 4.0f);
		assert_true(fabsf(p[0] - (float)(9.0 * 5.0 / sqrt(337.0))) < 1e-6f);
		assert_true(fabsf(p[1] - (float)(16.0 * 5.0 / sqrt(337.0))) < 1e-6f);
	}
}

/* ---- the tiny model against diffusers ------------------------------------ */

static int setup_group(void **state)
{
	char mp[1024], rp[1024];
	struct fx_err err = { 0 };

	(void)state;
	snprintf(mp, sizeof(mp), "%s/fixtures/qwenimage-tiny", src_dir());
	snprintf(rp, sizeof(rp), "%s/fixtures/qwenimage-tiny-ref.safetensors", src_dir());
	if (fx_model_open(&fix.model, mp, &err) < 0 || fx_st_open(&fix.ref, rp, &err) < 0 ||
	    fx_qwen_new(&fix.qwen, fix.model, &err) < 0) {
		fprintf(stderr, "setup: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int teardown_group(void **state)
{
	(void)state;
	fx_qwen_free(fix.qwen);
	fx_st_close(fix.ref);
	fx_model_close(fix.model);
	return 0;
}

struct fwd_ref {
	struct fx_qwen_input in;
	float *img, *txt, *mask, *out;
	uint64_t nout;
};

static void fwd_load(struct fwd_ref *r)
{
	uint64_t n;
	float *s, *shp;

	memset(r, 0, sizeof(*r));
	r->img = ref_f32("fwd.hidden_states", &n);
	r->in.ni = (int64_t)(n / 64);
	r->txt = ref_f32("fwd.encoder_hidden_states", &n);
	r->in.nt = (int64_t)(n / (uint64_t)fx_model_config(fix.model)->joint_dim);
	r->mask = ref_f32("fwd.encoder_hidden_states_mask", &n);
	assert_int_equal(n, r->in.nt);
	shp = ref_f32("fwd.img_shapes", NULL);
	r->in.img_h = (int)shp[1];
	r->in.img_w = (int)shp[2];
	free(shp);
	r->in.img = r->img;
	r->in.txt = r->txt;
	r->in.txt_mask = r->mask;
	s = ref_f32("fwd.sigma", NULL);
	r->in.sigma = s[0];
	free(s);
	r->out = ref_f32("fwd.output", &r->nout);
	assert_int_equal(r->nout, (uint64_t)r->in.ni * 64);
}

static void fwd_free(struct fwd_ref *r)
{
	free(r->img);
	free(r->txt);
	free(r->mask);
	free(r->out);
}

static void run_forward(struct fx_qwen *f, const struct fx_qwen_input *in, float *out)
{
	struct fx_err err = { 0 };

	if (fx_qwen_forward(f, in, out, &err) < 0)
		fail_msg("forward: %s", err.msg);
}

static void test_model_config(void **state)
{
	const struct fx_model_config *c = fx_model_config(fix.model);
	float *t = ref_f32("fwd.timestep", NULL), *s = ref_f32("fwd.sigma", NULL);

	(void)state;
	assert_int_equal(c->hidden, 64);
	assert_int_equal(c->num_double, 2);
	assert_int_equal(c->num_single, 0);
	assert_int_equal(c->axes[0], 8);
	assert_int_equal(c->axes[1], 12);
	/* the fixture's timestep input is our rounding of its sigma */
	assert_true(fx_qwen_timestep(s[0]) == t[0]);
	free(t);
	free(s);
}

static void test_forward_reference(void **state)
{
	struct fwd_ref r;
	struct fx_qwen_input in;
	float *out, *alt;
	double e;
	int64_t valid = 0;

	(void)state;
	fwd_load(&r);
	out = malloc((size_t)r.nout * sizeof(float));
	alt = malloc((size_t)r.nout * sizeof(float));
	assert_true(out && alt);
	run_forward(fix.qwen, &r.in, out);
	e = rel_err(out, r.out, (size_t)r.nout);
	printf("# forward: relative error %.3g vs diffusers (%lld image, %lld text tokens)\n", e,
	       (long long)r.in.ni, (long long)r.in.nt);
	assert_true(e <= REL_BUDGET);
	/* a second call reuses the buffers and gives the same bits */
	run_forward(fix.qwen, &r.in, alt);
	assert_memory_equal(out, alt, (size_t)r.nout * sizeof(float));

	/* the masked rows are not keys: other padding content, same bits */
	for (int64_t j = 0; j < r.in.nt; j++)
		if (r.mask[j] == 0.0f)
			for (int64_t k = 0; k < 64; k++)
				r.txt[j * 64 + k] = 7.0f - r.txt[j * 64 + k];
		else
			valid = j + 1;
	assert_true(valid > 0 && valid < r.in.nt);
	run_forward(fix.qwen, &r.in, alt);
	assert_memory_equal(out, alt, (size_t)r.nout * sizeof(float));
	/* ... so cutting the padding off (no mask: the unmasked attention)
	 * gives the same image output to rounding */
	in = r.in;
	in.nt = valid;
	in.txt_mask = NULL;
	run_forward(fix.qwen, &in, alt);
	e = rel_err(alt, r.out, (size_t)r.nout);
	printf("# forward, padding cut off: relative error %.3g\n", e);
	assert_true(e <= REL_BUDGET);
	/* and ignoring the mask does change it */
	in = r.in;
	in.txt_mask = NULL;
	run_forward(fix.qwen, &in, alt);
	e = rel_err(alt, r.out, (size_t)r.nout);
	printf("# forward, mask ignored: relative error %.3g (must be large)\n", e);
	assert_true(e > 100 * REL_BUDGET);
	/* the embedder sees the rounded timestep: a σ with the same rounding
	 * gives the same bits, the next bf16 timestep a different output */
	in = r.in;
	in.sigma = r.in.sigma + 1e-4f;
	assert_true(fx_qwen_timestep(in.sigma) == fx_qwen_timestep(r.in.sigma));
	run_forward(fix.qwen, &in, alt);
	assert_memory_equal(out, alt, (size_t)r.nout * sizeof(float));
	in.sigma = r.in.sigma + 4e-3f;
	assert_true(fx_qwen_timestep(in.sigma) != fx_qwen_timestep(r.in.sigma));
	run_forward(fix.qwen, &in, alt);
	assert_true(rel_err(alt, r.out, (size_t)r.nout) > 100 * REL_BUDGET);
	free(out);
	free(alt);
	fwd_free(&r);
}

/* The masked attention in more than one block of queries (its tiles hold
 * 4M scores: 2314 tokens are 2 blocks) against the unmasked one on the
 * padding cut off. */
static void test_masked_tiles(void **state)
{
	const struct fx_model_config *c = fx_model_config(fix.model);
	const int h = 48, w = 48;
	const int64_t ni = h * w, nt = 10, valid = 7;
	float *img = malloc((size_t)(ni * c->in_channels) * sizeof(float));
	float *txt = malloc((size_t)(nt * c->joint_dim) * sizeof(float));
	float *a = malloc((size_t)(ni * 64) * sizeof(float)), *b = malloc((size_t)(ni * 64) * sizeof(float));
	float mask[10];
	struct fx_qwen_input in = { .ni = ni, .nt = nt, .img_h = h, .img_w = w, .sigma = 0.4f };
	struct fx_rng g;
	double e;

	(void)state;
	assert_true(img && txt && a && b);
	fx_rng_init(&g, 17);
	fx_rng_normal_f32(&g, img, (size_t)(ni * c->in_channels));
	fx_rng_normal_f32(&g, txt, (size_t)(nt * c->joint_dim));
	for (int64_t j = 0; j < nt; j++)
		mask[j] = j < valid ? 1.0f : 0.0f;
	in.img = img;
	in.txt = txt;
	in.txt_mask = mask;
	run_forward(fix.qwen, &in, a);
	in.nt = valid;
	in.txt_mask = NULL;
	run_forward(fix.qwen, &in, b);
	e = rel_err(a, b, (size_t)(ni * 64));
	printf("# masked attention over 2 query blocks vs unmasked: relative error %.3g\n", e);
	assert_true(e <= REL_BUDGET);
	free(img);
	free(txt);
	free(a);
	free(b);
}

/* ---- hooks ---------------------------------------------------------------- */

struct cap_ctx {
	size_t ncap, nlin;
	const struct fx_group *seen[64];
	int seen_count[64];
	size_t nseen;
	float *got[64];
	int64_t got_m[64];
};

static int cap_fn(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		  struct fx_err *err)
{
	struct cap_ctx *c = ctx;
	size_t i;

	c->ncap++;
	for (i = 0; i < c->nseen && c->seen[i] != g; i++)
		;
	if (i == FX_ARRAY_SIZE(c->seen))
		return fx_error(err, FX_E_ARG, "too many groups");
	if (i == c->nseen)
		c->seen[c->nseen++] = g;
	c->seen_count[i]++;
	free(c->got[i]);
	if (!(c->got[i] = malloc((size_t)(m * g->k) * sizeof(float))))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	memcpy(c->got[i], x, (size_t)(m * g->k) * sizeof(float));
	c->got_m[i] = m;
	return 0;
}

static int lin_fn(void *ctx, const struct fx_group *g, const float *x, int64_t m, float *y,
		  struct fx_err *err)
{
	struct cap_ctx *c = ctx;

	c->nlin++;
	return fx_qwen_linear_dense(fix.qwen, g, x, m, y, err);
}

static void test_capture_reference(void **state)
{
	struct cap_ctx c;
	struct fx_qwen_hooks h = { .ctx = &c, .capture = cap_fn, .linear = lin_fn };
	size_t ng = fx_model_ngroups(fix.model);
	struct fwd_ref r;
	float *out, *plain;
	double worst = 0.0;

	(void)state;
	memset(&c, 0, sizeof(c));
	fwd_load(&r);
	out = malloc((size_t)r.nout * sizeof(float));
	plain = malloc((size_t)r.nout * sizeof(float));
	assert_true(out && plain);
	run_forward(fix.qwen, &r.in, plain);
	fx_qwen_set_hooks(fix.qwen, &h);
	run_forward(fix.qwen, &r.in, out);
	fx_qwen_set_hooks(fix.qwen, NULL);

	/* a pass-through linear hook changes nothing */
	assert_memory_equal(out, plain, (size_t)r.nout * sizeof(float));
	/* every fused group of the model is seen exactly once: 10 a block */
	assert_int_equal(ng, 10 * (size_t)fx_model_config(fix.model)->num_double);
	assert_int_equal(c.nseen, ng);
	assert_int_equal(c.ncap, ng);
	assert_int_equal(c.nlin, ng);
	for (size_t i = 0; i < c.nseen; i++) {
		char rn[160];
		uint64_t n;
		float *ref;
		double e;

		assert_int_equal(c.seen_count[i], 1);
		assert_ptr_equal(fx_model_find_group(fix.model, c.seen[i]->name), c.seen[i]);
		snprintf(rn, sizeof(rn), "capture.%s", c.seen[i]->name);
		ref = ref_f32(rn, &n);
		assert_int_equal((uint64_t)c.got_m[i] * (uint64_t)c.seen[i]->k, n);
		if (c.seen[i]->kind == FX_GROUP_ADALN)
			assert_int_equal(c.got_m[i], 1);
		e = rel_err(c.got[i], ref, (size_t)n);
		worst = e > worst ? e : worst;
		if (!(e <= REL_BUDGET))
			fail_msg("capture '%s': relative error %g", c.seen[i]->name, e);
		free(ref);
		free(c.got[i]);
	}
	printf("# captures: worst relative error %.3g over %zu fused-group inputs\n", worst, c.nseen);
	free(out);
	free(plain);
	fwd_free(&r);
}

static int fail_lin(void *ctx, const struct fx_group *g, const float *x, int64_t m, float *y,
		    struct fx_err *err)
{
	(void)ctx;
	if (!strcmp(g->name, "transformer_blocks.1.txt_mlp.net.2"))
		return fx_error(err, FX_E_UNSUPPORTED, "no kernel for '%s'", g->name);
	return fx_qwen_linear_dense(fix.qwen, g, x, m, y, err);
}

static void test_hook_error(void **state)
{
	struct fx_qwen_hooks h = { .linear = fail_lin };
	struct fx_err err = { 0 };
	struct fwd_ref r;
	float *out;

	(void)state;
	fwd_load(&r);
	out = malloc((size_t)r.nout * sizeof(float));
	assert_non_null(out);
	fx_qwen_set_hooks(fix.qwen, &h);
	assert_int_equal(fx_qwen_forward(fix.qwen, &r.in, out, &err), FX_E_UNSUPPORTED);
	fx_qwen_set_hooks(fix.qwen, NULL);
	assert_non_null(strstr(err.msg, "transformer_blocks.1.txt_mlp.net.2"));
	/* bad inputs */
	r.in.img_w++;
	assert_int_equal(fx_qwen_forward(fix.qwen, &r.in, out, &err), FX_E_ARG);
	r.in.img_w--;
	/* no text at all: the image attends to itself */
	r.in.nt = 0;
	r.in.txt = NULL;
	r.in.txt_mask = NULL;
	assert_int_equal(fx_qwen_forward(fix.qwen, &r.in, out, &err), 0);
	for (uint64_t i = 0; i < r.nout; i++)
		assert_true(isfinite(out[i]));
	assert_true(rel_err(out, r.out, (size_t)r.nout) > 100 * REL_BUDGET);
	r.in.ni = 0;
	assert_int_equal(fx_qwen_forward(fix.qwen, &r.in, out, &err), FX_E_ARG);
	free(out);
	fwd_free(&r);
}

/* ---- the sampler ------------------------------------------------------------ */

struct step_log {
	int n, steps[16], passes[16];
	float sigmas[16];
};

static int on_step(void *ctx, int step, float sigma, int pass, struct fx_err *err)
{
	struct step_log *l = ctx;

	(void)err;
	if (l->n < 16) {
		l->steps[l->n] = step;
		l->sigmas[l->n] = sigma;
		l->passes[l->n] = pass;
	}
	l->n++;
	return 0;
}

static int stop_step(void *ctx, int step, float sigma, int pass, struct fx_err *err)
{
	(void)ctx; (void)sigma;
	if (step == 1 && pass == 1)
		return fx_error(err, FX_E_INTERRUPTED, "stopped");
	return 0;
}

static void test_sampler_reference(void **state)
{
	uint64_t nz, nl, ns, npos, nneg;
	float *noise = ref_f32("smp.noise", &nz), *packed = ref_f32("smp.noise_packed", &nl);
	float *sig = ref_f32("smp.sigmas", &ns), *mu = ref_f32("smp.mu", NULL);
	float *tin = ref_f32("smp.timestep_in", NULL), *lat = ref_f32("smp.latents", NULL);
	float *unp = ref_f32("smp.latents_unpacked", NULL);
	float *pos = ref_f32("smp.prompt_embeds", &npos), *pmask = ref_f32("smp.prompt_embeds_mask", NULL);
	float *neg = ref_f32("smp.negative_prompt_embeds", &nneg);
	float *nmask = ref_f32("smp.negative_prompt_embeds_mask", NULL);
	float *slat = ref_f32("smp.step_latents", NULL), *scond = ref_f32("smp.step_cond", NULL);
	float *sunc = ref_f32("smp.step_uncond", NULL), *spred = ref_f32("smp.step_pred", NULL);
	float *shp = ref_f32("smp.img_shapes", NULL);
	float mysig[8], *buf, *out;
	struct fx_qwen_sample_params p;
	struct step_log log = { 0 };
	struct fx_err err = { 0 };
	struct fx_qwen_input in;
	const int steps = 3;
	int64_t ni = (int64_t)(nl / 64), jd = fx_model_config(fix.model)->joint_dim;
	double e, worst = 0.0;

	(void)state;
	assert_int_equal(ns, steps + 1);
	assert_int_equal(ni, 35);
	assert_true(shp[1] == 5.0f && shp[2] == 7.0f);
	/* schedule and timesteps: bit-equal to diffusers */
	assert_true(fabs(fx_qwen_mu(ni) - mu[0]) <= 1e-7 * fabs(mu[0]));
	assert_int_equal(fx_qwen_sigmas(mysig, steps, ni, &err), 0);
	for (int i = 0; i <= steps; i++)
		assert_true(mysig[i] == sig[i]);
	for (int i = 0; i < steps; i++)
		assert_true(fx_qwen_timestep(mysig[i]) == tin[i]);
	/* QwenImagePipeline._pack_latents is fx_latent_pack, and back */
	buf = malloc((size_t)nz * sizeof(float));
	out = malloc((size_t)nl * sizeof(float));
	assert_true(buf && out && nz == nl);
	fx_latent_pack(buf, noise, 16, 10, 14);
	assert_memory_equal(buf, packed, (size_t)nl * sizeof(float));
	fx_latent_unpack(buf, lat, 16, 10, 14);
	assert_memory_equal(buf, unp, (size_t)nz * sizeof(float));

	/* each step's two forwards and their combination, from the reference's
	 * own latents (errors do not accumulate here) */
	memset(&in, 0, sizeof(in));
	in.ni = ni;
	in.img_h = 5;
	in.img_w = 7;
	for (int i = 0; i < steps; i++) {
		float *v = malloc((size_t)nl * sizeof(float)), *vn = malloc((size_t)nl * sizeof(float));

		assert_true(v && vn);
		in.img = slat + (size_t)i * nl;
		in.sigma = sig[i];
		in.txt = pos;
		in.txt_mask = pmask;
		in.nt = (int64_t)(npos / (uint64_t)jd);
		run_forward(fix.qwen, &in, v);
		worst = fmax(worst, rel_err(v, scond + (size_t)i * nl, (size_t)nl));
		in.txt = neg;
		in.txt_mask = nmask;
		in.nt = (int64_t)(nneg / (uint64_t)jd);
		run_forward(fix.qwen, &in, vn);
		worst = fmax(worst, rel_err(vn, sunc + (size_t)i * nl, (size_t)nl));
		/* the combination alone, on the reference's two predictions */
		memcpy(v, scond + (size_t)i * nl, (size_t)nl * sizeof(float));
		fx_qwen_cfg(v, sunc + (size_t)i * nl, ni, 64, 4.0f);
		e = rel_err(v, spred + (size_t)i * nl, (size_t)nl);
		assert_true(e <= 1e-6);
		free(v);
		free(vn);
	}
	printf("# sampler: per-step forwards, worst relative error %.3g\n", worst);
	assert_true(worst <= REL_BUDGET);

	/* the whole trajectory from the reference noise */
	fx_qwen_sample_params_init(&p);
	assert_true(p.true_cfg == 4.0f && p.steps == 50 && p.width == 1024);
	p.width = 112;
	p.height = 80;
	p.steps = steps;
	p.true_cfg = 4.0f;
	p.init = packed;
	p.step_begin = on_step;
	p.step_ctx = &log;
	if (fx_qwen_sample_run(fix.qwen, &p, pos, pmask, (int64_t)(npos / (uint64_t)jd), neg, nmask,
			       (int64_t)(nneg / (uint64_t)jd), out, &err) < 0)
		fail_msg("sampler: %s", err.msg);
	assert_int_equal(log.n, 2 * steps);
	for (int i = 0; i < 2 * steps; i++) {
		assert_int_equal(log.steps[i], i / 2);
		assert_int_equal(log.passes[i], i % 2);
		assert_true(log.sigmas[i] == sig[i / 2]);
	}
	e = rel_err(out, lat, (size_t)nl);
	printf("# sampler: %d true-CFG steps at 112x80, relative error %.3g vs diffusers\n", steps, e);
	assert_true(e <= REL_BUDGET);

	/* without a negative prompt: one pass a step, another trajectory */
	log.n = 0;
	if (fx_qwen_sample_run(fix.qwen, &p, pos, pmask, (int64_t)(npos / (uint64_t)jd), NULL, NULL, 0,
			       buf, &err) < 0)
		fail_msg("sampler: %s", err.msg);
	assert_int_equal(log.n, steps);
	assert_true(rel_err(buf, lat, (size_t)nl) > 100 * REL_BUDGET);
	/* seeded noise: the FLUX generator, 16 channels at the latent size */
	p.init = NULL;
	p.seed = 5;
	p.steps = 2;
	p.step_begin = NULL;
	{
		float *z = malloc((size_t)nz * sizeof(float)), *pk = malloc((size_t)nz * sizeof(float));
		struct fx_rng g;

		assert_true(z && pk);
		fx_rng_init(&g, 5);
		fx_rng_normal_f32(&g, z, (size_t)nz);
		fx_latent_pack(pk, z, 16, 10, 14);
		/* 2 steps from that noise == 2 steps from it as init */
		assert_int_equal(fx_qwen_sample_run(fix.qwen, &p, pos, NULL, (int64_t)(npos / (uint64_t)jd),
						    neg, NULL, (int64_t)(nneg / (uint64_t)jd), buf, &err), 0);
		p.init = pk;
		assert_int_equal(fx_qwen_sample_run(fix.qwen, &p, pos, NULL, (int64_t)(npos / (uint64_t)jd),
						    neg, NULL, (int64_t)(nneg / (uint64_t)jd), out, &err), 0);
		assert_memory_equal(buf, out, (size_t)nl * sizeof(float));
		free(z);
		free(pk);
	}
	/* a failing step callback stops the run with its status */
	p.init = packed;
	p.steps = steps;
	p.step_begin = stop_step;
	assert_int_equal(fx_qwen_sample_run(fix.qwen, &p, pos, pmask, (int64_t)(npos / (uint64_t)jd),
					    neg, nmask, (int64_t)(nneg / (uint64_t)jd), out, &err),
			 FX_E_INTERRUPTED);
	p.steps = 1;
	assert_int_equal(fx_qwen_sample_run(fix.qwen, &p, pos, pmask, (int64_t)(npos / (uint64_t)jd),
					    neg, nmask, (int64_t)(nneg / (uint64_t)jd), out, &err),
			 FX_E_ARG);
	free(buf);
	free(out);
	free(noise);
	free(packed);
	free(sig);
	free(mu);
	free(tin);
	free(lat);
	free(unp);
	free(pos);
	free(pmask);
	free(neg);
	free(nmask);
	free(slat);
	free(scond);
	free(sunc);
	free(spred);
	free(shp);
}

int main(void)
{
	const struct CMUnitTest pure[] = {
		cmocka_unit_test(test_timestep_rounding),
		cmocka_unit_test(test_sigmas),
		cmocka_unit_test(test_rope),
		cmocka_unit_test(test_cfg),
	};
	const struct CMUnitTest model[] = {
		cmocka_unit_test(test_model_config),
		cmocka_unit_test(test_forward_reference),
		cmocka_unit_test(test_masked_tiles),
		cmocka_unit_test(test_capture_reference),
		cmocka_unit_test(test_hook_error),
		cmocka_unit_test(test_sampler_reference),
	};
	int fails = cmocka_run_group_tests_name("qwenimage", pure, NULL, NULL);

	return fails + cmocka_run_group_tests_name("qwenimage-tiny", model, setup_group,
						   teardown_group);
}
