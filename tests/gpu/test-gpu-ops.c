/* CUDA ops (kernels/fx-ops-cuda.h) against the CPU ops (kernels/fx-ops.h),
 * and the whole forward on the GPU against the CPU forward, by NMSE
 *   nmse(ref, got) = Σ(ref − got)² / Σ ref²
 * with per-op budgets (ggml test-backend-ops): elementwise, norm and RoPE
 * ops 1e-10; GEMM, attention and the forward 1e-8 (with BF16 GEMMs 1e-3). TAP on stdout; without
 * a CUDA device (or in a build without CUDA) prints "# skip: no CUDA
 * device" and exits 0. Build and run: tests/gpu/README.md.
 *
 * Environment: FX_CUDA_DEVICE (ordinal, default 0); FX_TESTS_SRC (the
 * tests/ directory, default "tests") for the forward's fixture. */
#include "fx-device.h"
#include "fx-flux.h"
#include "fx-lowrank.h"
#include "fx-model.h"
#include "fx-ops-cuda.h"
#include "fx-ops.h"
#include "fx-st.h"
#include "fx-tensor.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define B_ELEM 1e-10
#define B_GEMM 1e-8
#define B_BF16_FWD 1e-3   /* BF16-rounded GEMM inputs through the whole forward */

static int ntest, nfail;
static struct fx_cuda_ctx *cx;

static void tap(bool ok, const char *name, double nmse, double budget, const char *why)
{
	ntest++;
	if (!ok)
		nfail++;
	if (why)
		printf("%s %d - %s # %s\n", ok ? "ok" : "not ok", ntest, name, why);
	else
		printf("%s %d - %s # nmse %.3g, budget %.0e\n", ok ? "ok" : "not ok", ntest, name,
		       nmse, budget);
	fflush(stdout);
}

static double nmse(const float *ref, const float *got, size_t n)
{
	double num = 0.0, den = 0.0;

	for (size_t i = 0; i < n; i++) {
		double d = (double)ref[i] - (double)got[i];

		num += d * d;
		den += (double)ref[i] * (double)ref[i];
	}
	if (!(num == num))
		return INFINITY;
	return den > 0.0 ? num / den : num;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static float urand(float lo, float hi)
{
	uint64_t x = rng_state;

	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	rng_state = x;
	return lo + (hi - lo) * (float)((x >> 40) * (1.0 / 16777216.0));
}

static float *rnd(size_t n, float lo, float hi)
{
	float *v = malloc((n ? n : 1) * sizeof(float));

	if (!v) {
		fprintf(stderr, "out of memory\n");
		exit(1);
	}
	for (size_t i = 0; i < n; i++)
		v[i] = urand(lo, hi);
	return v;
}

static float *dup(const float *a, size_t n)
{
	float *v = rnd(n, 0, 0);

	memcpy(v, a, n * sizeof(float));
	return v;
}

/* Device copy of n host floats (n may be 0); exits on failure. */
struct dbuf {
	struct fx_dev_buf b;
	size_t n;
};

static float *dptr(struct dbuf *d)
{
	return d->b.data_dev;
}

static void up(struct dbuf *d, const float *h, size_t n)
{
	struct fx_err err = { 0 };

	memset(d, 0, sizeof(*d));
	d->n = n;
	if (fx_cuda_buf_reserve(cx, &d->b, (n ? n : 1) * sizeof(float), &err) < 0 ||
	    (h && fx_cuda_upload(cx, d->b.data_dev, h, n * sizeof(float), &err) < 0)) {
		printf("Bail out! %s\n", err.msg);
		exit(1);
	}
}

/* Downloads d into a new host array and releases d. */
static float *down(struct dbuf *d)
{
	struct fx_err err = { 0 };
	float *h = rnd(d->n, 0, 0);

	if (fx_cuda_download(cx, h, d->b.data_dev, d->n * sizeof(float), &err) < 0) {
		printf("Bail out! %s\n", err.msg);
		exit(1);
	}
	fx_cuda_buf_release(&d->b);
	return h;
}

static void check(const char *name, int ret, const struct fx_err *err, const float *ref,
		  const float *got, size_t n, double budget)
{
	double e;

	if (ret < 0) {
		tap(false, name, 0, budget, err->msg);
		return;
	}
	e = nmse(ref, got, n);
	tap(e <= budget, name, e, budget, NULL);
}

/* ---- ops ----------------------------------------------------------------- */

static void t_linear(int64_t m, int64_t n, int64_t k, bool bias)
{
	struct fx_err err = { 0 };
	float *x = rnd((size_t)(m * k), -1, 1), *w = rnd((size_t)(n * k), -0.1f, 0.1f);
	float *b = bias ? rnd((size_t)n, -1, 1) : NULL, *y = rnd((size_t)(m * n), 0, 0), *g;
	struct dbuf dx, dw, db = { 0 }, dy;
	char name[96];
	int ret;

	fx_ops_linear(y, x, w, b, m, n, k);
	up(&dx, x, (size_t)(m * k));
	up(&dw, w, (size_t)(n * k));
	if (bias)
		up(&db, b, (size_t)n);
	up(&dy, NULL, (size_t)(m * n));
	ret = fx_ops_linear_cuda(cx, dptr(&dy), dptr(&dx), dptr(&dw), bias ? dptr(&db) : NULL, m, n,
				 k, &err);
	g = down(&dy);
	snprintf(name, sizeof(name), "linear %lldx%lldx%lld%s", (long long)m, (long long)n,
		 (long long)k, bias ? " + bias" : "");
	check(name, ret, &err, y, g, (size_t)(m * n), B_GEMM);
	fx_cuda_buf_release(&dx.b);
	fx_cuda_buf_release(&dw.b);
	fx_cuda_buf_release(&db.b);
	free(x); free(w); free(b); free(y); free(g);
}

/* BF16 GEMM: against the CPU linear on the BF16-rounded x and w, whose
 * products are exact in f32, so only the summation order differs. */
static void t_linear_bf16(int64_t m, int64_t n, int64_t k, bool bias)
{
	struct fx_err err = { 0 };
	float *x = rnd((size_t)(m * k), -1, 1), *w = rnd((size_t)(n * k), -0.1f, 0.1f);
	float *b = bias ? rnd((size_t)n, -1, 1) : NULL, *y = rnd((size_t)(m * n), 0, 0), *g;
	float *xr = rnd((size_t)(m * k), 0, 0);
	uint16_t *wh = malloc((size_t)(n * k) * sizeof(uint16_t));
	struct dbuf dx, db = { 0 }, dy;
	struct fx_dev_buf dw = { 0 };
	char name[96];
	int ret;

	if (!wh) {
		printf("Bail out! out of memory\n");
		exit(1);
	}
	for (int64_t i = 0; i < n * k; i++) {
		wh[i] = fx_f32_to_bf16(w[i]);
		w[i] = fx_bf16_to_f32(wh[i]);
	}
	for (int64_t i = 0; i < m * k; i++)
		xr[i] = fx_bf16_to_f32(fx_f32_to_bf16(x[i]));
	fx_ops_linear(y, xr, w, b, m, n, k);
	up(&dx, x, (size_t)(m * k));
	if (bias)
		up(&db, b, (size_t)n);
	up(&dy, NULL, (size_t)(m * n));
	ret = fx_cuda_buf_reserve(cx, &dw, (size_t)(n * k) * sizeof(uint16_t), &err);
	if (ret >= 0)
		ret = fx_cuda_upload(cx, dw.data_dev, wh, (size_t)(n * k) * sizeof(uint16_t), &err);
	if (ret >= 0)
		ret = fx_ops_linear_bf16_cuda(cx, dptr(&dy), dptr(&dx), dw.data_dev,
					      bias ? dptr(&db) : NULL, m, n, k, &err);
	g = down(&dy);
	snprintf(name, sizeof(name), "BF16 linear %lldx%lldx%lld%s", (long long)m, (long long)n,
		 (long long)k, bias ? " + bias" : "");
	check(name, ret, &err, y, g, (size_t)(m * n), B_GEMM);
	fx_cuda_buf_release(&dx.b);
	fx_cuda_buf_release(&dw);
	fx_cuda_buf_release(&db.b);
	free(x); free(xr); free(w); free(wh); free(b); free(y); free(g);
}

static void t_layernorm(int64_t m, int64_t d, bool mod)
{
	struct fx_err err = { 0 };
	float *x = rnd((size_t)(m * d), -3, 5), *y = rnd((size_t)(m * d), 0, 0), *g;
	float *sh = rnd((size_t)d, -1, 1), *sc = rnd((size_t)d, -1, 1);
	struct dbuf dx, dy, dsh, dsc;
	int ret;

	if (mod)
		fx_ops_layernorm_mod(y, x, m, d, sh, sc, 1e-6f);
	else
		fx_ops_layernorm(y, x, m, d, 1e-6f);
	up(&dx, x, (size_t)(m * d));
	up(&dy, NULL, (size_t)(m * d));
	up(&dsh, sh, (size_t)d);
	up(&dsc, sc, (size_t)d);
	if (mod)
		ret = fx_ops_layernorm_mod_cuda(cx, dptr(&dy), dptr(&dx), m, d, dptr(&dsh), dptr(&dsc),
						1e-6f, &err);
	else
		ret = fx_ops_layernorm_cuda(cx, dptr(&dy), dptr(&dx), m, d, 1e-6f, &err);
	g = down(&dy);
	check(mod ? "layernorm_mod" : "layernorm", ret, &err, y, g, (size_t)(m * d), B_ELEM);
	/* in place (y == x) */
	if (ret >= 0) {
		ret = fx_ops_layernorm_cuda(cx, dptr(&dx), dptr(&dx), m, d, 1e-6f, &err);
		fx_ops_layernorm(x, x, m, d, 1e-6f);
		free(g);
		g = down(&dx);
		check("layernorm in place", ret, &err, x, g, (size_t)(m * d), B_ELEM);
	}
	fx_cuda_buf_release(&dx.b);
	fx_cuda_buf_release(&dsh.b);
	fx_cuda_buf_release(&dsc.b);
	free(x); free(y); free(g); free(sh); free(sc);
}

static void t_rmsnorm(void)
{
	const int64_t m = 50, heads = 3, hd = 64, ld = 3 * heads * hd;
	struct fx_err err = { 0 };
	float *x = rnd((size_t)(m * ld), -2, 2), *gm = rnd((size_t)hd, 0.5f, 1.5f), *g;
	struct dbuf dx, dg;
	int ret;

	up(&dx, x, (size_t)(m * ld));
	up(&dg, gm, (size_t)hd);
	/* the k part of a qkv buffer: columns [D, 2D) */
	fx_ops_rmsnorm_heads(x + heads * hd, ld, m, (int)heads, (int)hd, gm, 1e-6f);
	ret = fx_ops_rmsnorm_heads_cuda(cx, dptr(&dx) + heads * hd, ld, m, (int)heads, (int)hd,
					dptr(&dg), 1e-6f, &err);
	g = down(&dx);
	check("rmsnorm_heads (strided)", ret, &err, x, g, (size_t)(m * ld), B_ELEM);
	fx_cuda_buf_release(&dg.b);
	free(x); free(gm); free(g);
}

static void t_rope(void)
{
	const int axes[3] = { 16, 56, 56 }, heads = 3, hd = 128, half = 64;
	const int64_t n = 300, ld = 3 * heads * hd;
	struct fx_err err = { 0 };
	float *ids = rnd((size_t)(n * 3), 0, 0), *cs = rnd((size_t)(n * half), 0, 0);
	float *sn = rnd((size_t)(n * half), 0, 0), *x = rnd((size_t)(n * ld), -1, 1), *gc, *gs, *g;
	struct dbuf dids, dcs, dsn, dx;
	int ret;

	for (int64_t t = 0; t < n; t++) {   /* 44 text tokens at 0, then a 16-wide grid */
		ids[t * 3] = 0;
		ids[t * 3 + 1] = t < 44 ? 0 : (float)((t - 44) / 16);
		ids[t * 3 + 2] = t < 44 ? 0 : (float)((t - 44) % 16);
	}
	fx_ops_rope_table(cs, sn, ids, n, axes, 10000.0);
	up(&dids, ids, (size_t)(n * 3));
	up(&dcs, NULL, (size_t)(n * half));
	up(&dsn, NULL, (size_t)(n * half));
	ret = fx_ops_rope_table_cuda(cx, dptr(&dcs), dptr(&dsn), dptr(&dids), n, axes, 10000.0, &err);
	gc = down(&dcs);
	gs = down(&dsn);
	check("rope_table cos", ret, &err, cs, gc, (size_t)(n * half), B_ELEM);
	check("rope_table sin", ret, &err, sn, gs, (size_t)(n * half), B_ELEM);
	/* apply on the q part of a qkv buffer, from the CPU table */
	up(&dcs, cs, (size_t)(n * half));
	up(&dsn, sn, (size_t)(n * half));
	up(&dx, x, (size_t)(n * ld));
	fx_ops_rope_apply(x, ld, n, heads, hd, cs, sn);
	ret = fx_ops_rope_apply_cuda(cx, dptr(&dx), ld, n, heads, hd, dptr(&dcs), dptr(&dsn), &err);
	g = down(&dx);
	check("rope_apply (strided)", ret, &err, x, g, (size_t)(n * ld), B_ELEM);
	fx_cuda_buf_release(&dids.b);
	fx_cuda_buf_release(&dcs.b);
	fx_cuda_buf_release(&dsn.b);
	free(ids); free(cs); free(sn); free(x); free(gc); free(gs); free(g);
}

static void t_attention(int64_t n, int heads, int hd)
{
	int64_t D = (int64_t)heads * hd, ld = 3 * D, ldo = D;
	struct fx_err err = { 0 };
	float *qkv = rnd((size_t)(n * ld), -2, 2), *o = rnd((size_t)(n * ldo), 0, 0), *g;
	struct dbuf dq, dout;
	char name[96];
	int ret;

	if ((ret = fx_ops_attention(o, ldo, qkv, qkv + D, qkv + 2 * D, ld, n, heads, hd, NULL, &err)) < 0) {
		tap(false, "attention (cpu)", 0, 0, err.msg);
		goto out;
	}
	up(&dq, qkv, (size_t)(n * ld));
	up(&dout, NULL, (size_t)(n * ldo));
	ret = fx_ops_attention_cuda(cx, dptr(&dout), ldo, dptr(&dq), dptr(&dq) + D, dptr(&dq) + 2 * D,
				    ld, n, heads, hd, &err);
	g = down(&dout);
	snprintf(name, sizeof(name), "attention n %lld, %d heads of %d", (long long)n, heads, hd);
	check(name, ret, &err, o, g, (size_t)(n * ldo), B_GEMM);
	fx_cuda_buf_release(&dq.b);
	free(g);
out:
	free(qkv);
	free(o);
}

static void t_elementwise(void)
{
	const size_t n = 100003;
	const int64_t m = 97, d = 1031;
	struct fx_err err = { 0 };
	float *x = rnd(n, -8, 8), *y = dup(x, n), *z = rnd(n, 0, 0), *g;
	float *a = rnd((size_t)(m * d), -1, 1), *b = rnd((size_t)(m * d), -1, 1);
	float *gate = rnd((size_t)d, -2, 2), *e = rnd(256, 0, 0);
	struct dbuf dx, dy, da, db, dg, de;
	int ret;

	up(&dx, x, n);
	fx_ops_gelu_tanh(y, n);
	ret = fx_ops_gelu_tanh_cuda(cx, dptr(&dx), n, &err);
	g = down(&dx);
	check("gelu_tanh", ret, &err, y, g, n, B_ELEM);
	free(g);

	up(&dx, x, n);
	up(&dy, NULL, n);
	fx_ops_silu(z, x, n);
	ret = fx_ops_silu_cuda(cx, dptr(&dy), dptr(&dx), n, &err);
	g = down(&dy);
	check("silu", ret, &err, z, g, n, B_ELEM);
	free(g);
	fx_ops_silu(x, x, n);   /* in place */
	ret = fx_ops_silu_cuda(cx, dptr(&dx), dptr(&dx), n, &err);
	g = down(&dx);
	check("silu in place", ret, &err, x, g, n, B_ELEM);
	free(g);

	up(&da, a, (size_t)(m * d));
	up(&db, b, (size_t)(m * d));
	up(&dg, gate, (size_t)d);
	fx_ops_gated_add(a, b, gate, m, d);
	ret = fx_ops_gated_add_cuda(cx, dptr(&da), dptr(&db), dptr(&dg), m, d, &err);
	if (ret >= 0) {
		fx_ops_add(a, b, (size_t)(m * d));
		ret = fx_ops_add_cuda(cx, dptr(&da), dptr(&db), (size_t)(m * d), &err);
	}
	g = down(&da);
	check("gated_add + add", ret, &err, a, g, (size_t)(m * d), B_ELEM);
	free(g);

	for (int i = 0; i < 3; i++) {
		static const float ts[3] = { 1000.0f, 3504.0f, 0.5f };
		char name[64];

		up(&de, NULL, 256);
		fx_ops_timestep_embed(e, ts[i], 256);
		ret = fx_ops_timestep_embed_cuda(cx, dptr(&de), ts[i], 256, &err);
		g = down(&de);
		snprintf(name, sizeof(name), "timestep_embed t %g", ts[i]);
		check(name, ret, &err, e, g, 256, B_ELEM);
		free(g);
	}
	fx_cuda_buf_release(&db.b);
	fx_cuda_buf_release(&dg.b);
	free(x); free(y); free(z); free(a); free(b); free(gate); free(e);
}

/* ---- the forward ------------------------------------------------------- */

/* Captured group inputs of one forward, in call order. */
struct caps {
	int n;
	float *x[256];
	size_t len[256];
};

static int capture(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		   struct fx_err *err)
{
	struct caps *c = ctx;
	size_t len = (size_t)(m * g->k);

	if (c->n >= (int)FX_ARRAY_SIZE(c->x))
		return 0;
	if (!(c->x[c->n] = malloc(len * sizeof(float))))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	memcpy(c->x[c->n], x, len * sizeof(float));
	c->len[c->n++] = len;
	return 0;
}

static void caps_free(struct caps *c)
{
	for (int i = 0; i < c->n; i++)
		free(c->x[i]);
	c->n = 0;
}

static float *ref_f32(const struct fx_st *st, const char *name, uint64_t *numel)
{
	const struct fx_tensor *t = fx_st_find(st, name);
	float *v;

	if (!t)
		return NULL;
	v = rnd((size_t)fx_tensor_numel(t), 0, 0);
	if (fx_to_f32(v, t->data, t->dtype, (size_t)fx_tensor_numel(t)) < 0) {
		free(v);
		return NULL;
	}
	if (numel)
		*numel = fx_tensor_numel(t);
	return v;
}

static void t_forward(int device)
{
	const char *src = getenv("FX_TESTS_SRC");
	char mp[1024], rp[1024], spec[32], note[256];
	struct fx_err err = { 0 };
	struct fx_model *m = NULL;
	struct fx_st *ref = NULL;
	struct fx_flux *fc = NULL, *fg = NULL;
	struct fx_flux_input in = { 0 };
	struct fx_flux_hooks h = { 0 };
	struct fx_device dev;
	struct caps cc = { 0 }, cg = { 0 };
	float *bufs[5] = { 0 }, *s = NULL, *gd = NULL, *oc = NULL, *og = NULL;
	uint64_t n, nout = 0;
	double worst = 0.0;
	int ret;

	if (!src || !*src)
		src = "tests";
	snprintf(mp, sizeof(mp), "%s/fixtures/flux-tiny", src);
	snprintf(rp, sizeof(rp), "%s/fixtures/flux-tiny-ref.safetensors", src);
	if (fx_model_open(&m, mp, &err) < 0 || fx_st_open(&ref, rp, &err) < 0) {
		tap(true, "forward on the GPU", 0, 0, "SKIP no fixture (set FX_TESTS_SRC)");
		goto out;
	}
	bufs[0] = ref_f32(ref, "fwd.hidden_states", &n);
	in.ni = (int64_t)(n / (uint64_t)fx_model_config(m)->in_channels);
	bufs[1] = ref_f32(ref, "fwd.encoder_hidden_states", &n);
	in.nt = (int64_t)(n / (uint64_t)fx_model_config(m)->joint_dim);
	bufs[2] = ref_f32(ref, "fwd.pooled_projections", NULL);
	bufs[3] = ref_f32(ref, "fwd.img_ids", NULL);
	bufs[4] = ref_f32(ref, "fwd.txt_ids", NULL);
	s = ref_f32(ref, "fwd.sigma", NULL);
	gd = ref_f32(ref, "fwd.guidance", NULL);
	if (!bufs[0] || !bufs[1] || !bufs[2] || !bufs[3] || !bufs[4] || !s || !gd) {
		tap(false, "forward on the GPU", 0, 0, "fixture tensors missing");
		goto out;
	}
	in.img = bufs[0];
	in.txt = bufs[1];
	in.pooled = bufs[2];
	in.img_ids = bufs[3];
	in.txt_ids = bufs[4];
	in.sigma = s[0];
	in.guidance = gd[0];
	nout = (uint64_t)in.ni * (uint64_t)fx_model_config(m)->out_channels;
	oc = rnd((size_t)nout, 0, 0);
	og = rnd((size_t)nout, 0, 0);

	snprintf(spec, sizeof(spec), "cuda:%d", device);
	if ((ret = fx_device_select(&dev, spec, note, sizeof(note), &err)) < 0 ||
	    (ret = fx_flux_new(&fc, m, &err)) < 0 || (ret = fx_flux_new(&fg, m, &err)) < 0 ||
	    (ret = fx_flux_set_device(fg, &dev, &err)) < 0) {
		tap(false, "forward on the GPU", 0, 0, err.msg);
		goto out;
	}
	if (dev.kind != FX_DEV_CUDA) {
		tap(false, "forward on the GPU", 0, 0, note);
		goto out;
	}
	h.capture = capture;
	h.ctx = &cc;
	fx_flux_set_hooks(fc, &h);
	h.ctx = &cg;
	fx_flux_set_hooks(fg, &h);
	ret = fx_flux_forward(fc, &in, oc, &err);
	if (ret >= 0)
		ret = fx_flux_forward(fg, &in, og, &err);
	check("forward output, GPU vs CPU", ret, &err, oc, og, (size_t)nout, B_GEMM);
	if (ret < 0)
		goto out;
	for (int i = 0; i < cc.n && i < cg.n; i++) {
		double e = cc.len[i] == cg.len[i] ? nmse(cc.x[i], cg.x[i], cc.len[i]) : INFINITY;

		worst = e > worst ? e : worst;
	}
	if (cc.n != cg.n || cc.n == 0)
		tap(false, "captured group inputs, GPU vs CPU", 0, 0, "capture counts differ");
	else
		tap(worst <= B_GEMM, "captured group inputs, GPU vs CPU (worst group)", worst, B_GEMM,
		    NULL);
	/* no hooks: the all-device path; and a second call reuses the buffers */
	fx_flux_set_hooks(fg, NULL);
	ret = fx_flux_forward(fg, &in, og, &err);
	check("forward output without hooks", ret, &err, oc, og, (size_t)nout, B_GEMM);
	/* BF16 GEMMs: inputs rounded to BF16 per linear, so only near the CPU
	 * (a layout or operand mistake gives an NMSE near 1) */
	if (fx_flux_set_bf16_gemm(fg, true)) {
		ret = fx_flux_forward(fg, &in, og, &err);
		check("forward output with BF16 GEMMs, GPU vs CPU", ret, &err, oc, og, (size_t)nout,
		      B_BF16_FWD);
		fx_flux_set_bf16_gemm(fg, false);
	} else {
		tap(false, "forward output with BF16 GEMMs", 0, 0, "BF16 GEMMs not in effect on CUDA");
	}
	/* back to the CPU gives the CPU bits */
	if ((ret = fx_flux_set_device(fg, NULL, &err)) >= 0)
		ret = fx_flux_forward(fg, &in, og, &err);
	tap(ret >= 0 && !memcmp(oc, og, (size_t)nout * sizeof(float)),
	    "set_device(NULL) restores the CPU path", 0, 0, ret < 0 ? err.msg : "bit-exact");
out:
	caps_free(&cc);
	caps_free(&cg);
	fx_flux_free(fc);
	fx_flux_free(fg);
	fx_st_close(ref);
	fx_model_close(m);
	for (size_t i = 0; i < FX_ARRAY_SIZE(bufs); i++)
		free(bufs[i]);
	free(s); free(gd); free(oc); free(og);
}

#if defined(FX_CUDA) && FX_CUDA
/* The low-rank search on the GPU against the CPU's: same problem, both
 * scores (RTN, and for GPTQ). cuBLAS sums differ, so a near tie may pick
 * another candidate: then its true error must be within 1 %. */
static void t_lowrank(int device, enum fx_qprec prec, bool shift, double gw)
{
	const int64_t n = 384, k = 256, m = 256;
	float *w = rnd(n * k, -0.1f, 0.1f), *x = rnd(m * k, -1.0f, 1.0f), *xmax = rnd(k, 0, 0);
	struct fx_lowrank_problem p = { 0 };
	struct fx_lowrank_opts o;
	struct fx_lowrank_result rc = { 0 }, rg = { 0 };
	struct fx_err err = { 0 };
	char name[96];
	int ret;

	for (int64_t j = 0; j < k; j++)   /* a few outlier channels, as calibration has */
		if (j % 37 == 0)
			for (int64_t i = 0; i < m; i++)
				x[i * k + j] *= 30.0f;
	for (int64_t i = 0; i < m; i++)
		for (int64_t j = 0; j < k; j++) {
			if (shift && x[i * k + j] < -0.17f)
				x[i * k + j] = -0.17f;
			xmax[j] = fmaxf(xmax[j], fabsf(x[i * k + j]));
		}
	p.prec = prec;
	p.n = n;
	p.k = k;
	p.w = w;
	p.m = m;
	p.x = x;
	p.xmax = xmax;
	p.shift = shift;
	fx_lowrank_opts_init(&o);
	o.iters = 3;
	o.gptq_weight = gw;
	rc.smooth = rnd(k, 0, 0); rc.down = rnd(o.rank * k, 0, 0); rc.up = rnd(n * o.rank, 0, 0);
	rg.smooth = rnd(k, 0, 0); rg.down = rnd(o.rank * k, 0, 0); rg.up = rnd(n * o.rank, 0, 0);
	snprintf(name, sizeof(name), "lowrank search %s%s, gptq_weight %g",
		 prec == FX_QPREC_NVFP4 ? "nvfp4" : "int4", shift ? " shifted" : "", gw);
	ret = fx_lowrank_group_cpu(&rc, &p, &o, &err);
	if (ret >= 0)
		ret = fx_lowrank_group_cuda(device, &rg, &p, &o, &err);
	if (ret < 0) {
		tap(false, name, 0, 0, err.msg);
	} else {
		bool same = rc.alpha == rg.alpha && rc.beta == rg.beta;
		double d = fabs(rc.err_final - rg.err_final) / rc.err_final;
		char why[200];

		snprintf(why, sizeof(why), "cpu alpha %.2f beta %.2f error %.4e, gpu alpha %.2f beta %.2f "
			 "error %.4e, rtn %.4e / %.4e", rc.alpha, rc.beta, rc.err_final, rg.alpha, rg.beta,
			 rg.err_final, rc.err_rtn, rg.err_rtn);
		tap(fabs(rc.err_rtn - rg.err_rtn) <= 1e-4 * rc.err_rtn && (same ? d < 0.05 : d < 0.01),
		    name, 0, 0, why);
	}
	free(w); free(x); free(xmax);
	free(rc.smooth); free(rc.down); free(rc.up); free(rg.smooth); free(rg.down); free(rg.up);
}
#endif

int main(void)
{
	const char *ev = getenv("FX_CUDA_DEVICE");
	int device = ev && *ev ? (int)strtol(ev, NULL, 10) : 0, count = fx_cuda_device_count();
	char desc[256];
	struct fx_err err = { 0 };

	if (count == 0) {
		printf("# skip: no CUDA device\n1..0 # SKIP no CUDA device\n");
		return 0;
	}
	if (device < 0 || device >= count) {
		printf("Bail out! FX_CUDA_DEVICE=%d but %d device(s)\n", device, count);
		return 1;
	}
	if (fx_cuda_describe(device, desc, sizeof(desc)) == 0)
		printf("# %s\n", desc);
	if (fx_cuda_ctx_new(&cx, device, &err) < 0) {
		printf("Bail out! %s\n", err.msg);
		return 1;
	}
	t_linear(77, 300, 256, true);
	t_linear(1, 3072, 512, true);
	t_linear(130, 64, 3072, false);
	t_linear_bf16(77, 300, 256, true);
	t_linear_bf16(130, 64, 3072, false);
	t_layernorm(33, 3072, false);
	t_layernorm(40, 1000, true);
	t_rmsnorm();
	t_rope();
	t_elementwise();
	t_attention(300, 3, 64);
	t_attention(1100, 2, 32);   /* two query tiles */
	t_attention(5, 24, 128);
	fx_cuda_ctx_free(cx);
	t_forward(device);
#if defined(FX_CUDA) && FX_CUDA
	t_lowrank(device, FX_QPREC_NVFP4, false, 0.0);
	t_lowrank(device, FX_QPREC_NVFP4, false, 0.05);
	t_lowrank(device, FX_QPREC_INT4, true, 0.0);
	t_lowrank(device, FX_QPREC_INT4, true, 0.05);
#endif
	printf("1..%d\n", ntest);
	return nfail ? 1 : 0;
}
