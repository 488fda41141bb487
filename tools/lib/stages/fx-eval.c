#include "fx-eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "fx-io.h"
#include "fx-log.h"
#include "fx-file.h"
#include "fx-family.h"
#include "fx-lora.h"
#include "fx-model.h"
#include "fx-packed-module.h"
#include "fx-st.h"

/* A checkpoint's modules, loaded once, indexed like the model's groups;
 * the output error of each against the dense layer, summed. */
struct ckpt {
	struct fx_st *st;
	struct fx_packed_module *pm;
	size_t n;
	struct fx_runner *f;
	const struct fx_runner_ops *run;
	double *num, *den;      /* (n) */
	float *yref;
	size_t cap;
};

static int runtime_linear(void *ctx, const struct fx_group *g, const float *x, int64_t m, float *y,
			  struct fx_err *err)
{
	struct ckpt *c = ctx;
	size_t i, nv = (size_t)m * g->n, j;
	int ret;

	for (i = 0; i < c->n && c->pm[i].g != g; i++)
		;
	if (i == c->n)
		return fx_error(err, FX_E_FORMAT, "'%s': module '%s' missing", fx_st_path(c->st), g->name);
	if (nv > c->cap) {
		free(c->yref);
		if (!(c->yref = malloc(nv * sizeof(float)))) {
			c->cap = 0;
			return fx_error(err, FX_E_NOMEM, "out of memory");
		}
		c->cap = nv;
	}
	if ((ret = fx_packed_module_forward(&c->pm[i], x, m, y, err)) < 0 ||
	    (ret = c->run->linear_dense(c->f, g, x, m, c->yref, err)) < 0)
		return ret;
	for (j = 0; j < nv; j++) {
		double d = (double)y[j] - c->yref[j];

		c->num[i] += d * d;
		c->den[i] += (double)c->yref[j] * c->yref[j];
	}
	return 0;
}

static void ckpt_close(struct ckpt *c)
{
	size_t i;

	for (i = 0; c->pm && i < c->n; i++)
		fx_packed_module_release(&c->pm[i]);
	free(c->pm);
	free(c->num);
	free(c->den);
	free(c->yref);
	fx_st_close(c->st);
	memset(c, 0, sizeof(*c));
}

static int ckpt_open(struct ckpt *c, const char *path, const struct fx_model *m, struct fx_err *err)
{
	bool fp4;
	size_t i;
	int ret;

	memset(c, 0, sizeof(*c));
	if ((ret = fx_st_open(&c->st, path, err)) < 0)
		return ret;
	/* a damaged file must not be scored as a quantization result */
	if (fx_st_meta(c->st, "fx.crc32") && (ret = fx_file_check_crc(c->st, err)) < 0)
		return ret;
	fp4 = fx_packed_is_fp4(c->st);
	c->n = fx_model_ngroups(m);
	c->pm = calloc(c->n, sizeof(*c->pm));
	c->num = calloc(c->n, sizeof(double));
	c->den = calloc(c->n, sizeof(double));
	if (!c->pm || !c->num || !c->den)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	for (i = 0; i < c->n; i++) {
		const struct fx_group *g = fx_model_group(m, i);

		ret = fx_packed_module_load(&c->pm[i], c->st, g, fp4, err);
		if (ret < 0)
			return ret;
		if (ret > 0)
			return fx_error(err, FX_E_FORMAT, "'%s': module '%s' is missing or misshapen "
					"(run fx-verify on it)", path, g->name);
	}
	return 0;
}

static double db(double num, double den)
{
	return num > 0 ? 10 * log10(den / num) : FX_EVAL_EXACT_DB;
}

static void compare(const float *ref, const float *x, size_t n, double *psnr, double *cosine)
{
	double mse = 0, peak = 0, dot = 0, na = 0, nb = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		double d = (double)x[i] - ref[i];

		mse += d * d;
		peak = fabs(ref[i]) > peak ? fabs(ref[i]) : peak;
		dot += (double)x[i] * ref[i];
		na += (double)ref[i] * ref[i];
		nb += (double)x[i] * x[i];
	}
	mse /= n ? n : 1;
	*psnr = db(mse, peak * peak);
	*cosine = na > 0 && nb > 0 ? dot / sqrt(na * nb) : 0;
}

/* Latents after each step, seen at the start of the next one: stored by
 * the source run, compared by a checkpoint's. */
struct steps {
	const float *lat;       /* the sampler's output buffer */
	float *ref;             /* (nsteps, nv) */
	size_t nv;
	bool record;
	double *psnr, *cosine;  /* (nsteps) of this checkpoint and prompt */
	struct ckpt *ck;        /* the checkpoint run, for its linear hook */
};

static int step_begin(void *ctx, int step, float sigma, int pass, struct fx_err *err)
{
	struct steps *s = ctx;

	(void)sigma;
	(void)err;
	if (step == 0 || pass)
		return 0;
	if (s->record)
		memcpy(s->ref + (size_t)(step - 1) * s->nv, s->lat, s->nv * sizeof(float));
	else
		compare(s->ref + (size_t)(step - 1) * s->nv, s->lat, s->nv, &s->psnr[step - 1],
			&s->cosine[step - 1]);
	return 0;
}

static int ck_linear(void *ctx, const struct fx_group *g, const float *x, int64_t m, float *y,
		     struct fx_err *err)
{
	return runtime_linear(((struct steps *)ctx)->ck, g, x, m, y, err);
}

static int result_alloc(struct fx_eval_result *r, const struct fx_model *m, int P, int nckpt, int S)
{
	size_t i, np = (size_t)P * nckpt, L = fx_model_ngroups(m);

	r->nprompts = P;
	r->nckpt = nckpt;
	r->nsteps = S;
	r->nlayers = (int)L;
	r->psnr = calloc(np + 1, sizeof(double));
	r->cosine = calloc(np + 1, sizeof(double));
	r->step_psnr = calloc(np * S + 1, sizeof(double));
	r->step_cosine = calloc(np * S + 1, sizeof(double));
	r->mean_step_psnr = calloc((size_t)nckpt * S + 1, sizeof(double));
	r->layer = calloc(L + 1, sizeof(*r->layer));
	r->layer_snr = calloc((size_t)nckpt * L + 1, sizeof(double));
	if (!r->psnr || !r->cosine || !r->step_psnr || !r->step_cosine || !r->mean_step_psnr ||
	    !r->layer || !r->layer_snr)
		return -1;
	for (i = 0; i < L; i++) {
		const struct fx_group *g = fx_model_group(m, i);

		snprintf(r->layer[i], sizeof(r->layer[i]), "%s (%sblock %d)", g->fused,
			 g->single ? "single " : "", g->block);
	}
	return 0;
}

int fx_eval_run(const struct fx_eval_opts *o, struct fx_eval_result *r, struct fx_err *err)
{
	struct fx_model *m = NULL;
	struct fx_st *cs = NULL;
	struct fx_runner *f = NULL;
	const struct fx_runner_ops *run = NULL;
	struct ckpt ck[FX_EVAL_MAX_CKPT] = {0};
	const struct fx_model_config *c;
	struct fx_run_params sp;
	struct fx_run_hooks rh = {0};
	struct steps st = {0};
	float *ref = NULL, *lat = NULL;
	int64_t ni, P, p, held;
	size_t nv, l;
	int i, s, S, ret;

	memset(r, 0, sizeof(*r));
	if (o->nckpt < 1 || o->nckpt > FX_EVAL_MAX_CKPT) {
		ret = fx_error(err, FX_E_ARG, "1 to %d checkpoints wanted, not %d", FX_EVAL_MAX_CKPT,
			       o->nckpt);
		goto out;
	}
	if ((ret = fx_model_open_loras(&m, o->model, o->loras, err)) < 0 ||
	    (ret = fx_st_open(&cs, o->cond, err)) < 0)
		goto out;
	c = fx_model_config(m);
	run = c->family->run;
	if ((ret = run->open(&f, m, cs, o->cond, &held, err)) < 0)
		goto out;
	if (held < 1) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': no prompts", o->cond);
		goto out;
	}
	P = o->prompts > 0 && o->prompts < held ? o->prompts : held;
	run->defaults(c, &sp);
	sp.steps = S = o->steps > 0 ? o->steps : 4;
	sp.width = o->width > 0 ? o->width : 256;
	sp.height = o->height > 0 ? o->height : 256;
	if (o->guidance >= 0)
		sp.guidance = o->guidance;
	if ((ret = run->tokens(c, sp.width, sp.height, &ni, err)) < 0)
		goto out;
	for (i = 0; i < o->nckpt; i++) {
		if ((ret = ckpt_open(&ck[i], o->ckpt[i], m, err)) < 0)
			goto out;
		ck[i].f = f;
		ck[i].run = run;
	}
	nv = (size_t)ni * c->in_channels;
	ref = malloc(nv * 4);
	lat = malloc(nv * 4);
	st.ref = malloc((size_t)S * nv * 4);
	if (result_alloc(r, m, (int)P, o->nckpt, S) < 0 || !ref || !lat || !st.ref) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	st.nv = nv;
	rh.step_begin = step_begin;
	rh.ctx = &st;
	for (p = 0; p < P; p++) {
		sp.seed = o->seed + (uint64_t)p;
		run->set_hooks(f, &rh);
		st.lat = ref;
		st.record = true;
		if ((ret = run->sample(f, p, &sp, ref, err)) < 0)
			goto out;
		memcpy(st.ref + (size_t)(S - 1) * nv, ref, nv * 4);
		for (i = 0; i < o->nckpt; i++) {
			struct fx_run_hooks h = { .ctx = &st, .linear = ck_linear,
						  .step_begin = step_begin };
			size_t at = (size_t)i * P + p;

			st.ck = &ck[i];
			run->set_hooks(f, &h);
			st.lat = lat;
			st.record = false;
			st.psnr = &r->step_psnr[at * S];
			st.cosine = &r->step_cosine[at * S];
			if ((ret = run->sample(f, p, &sp, lat, err)) < 0)
				goto out;
			compare(ref, lat, nv, &r->psnr[at], &r->cosine[at]);
			r->step_psnr[at * S + S - 1] = r->psnr[at];
			r->step_cosine[at * S + S - 1] = r->cosine[at];
			r->mean_psnr[i] += r->psnr[at] / P;
			r->mean_cosine[i] += r->cosine[at] / P;
			for (s = 0; s < S; s++)
				r->mean_step_psnr[i * S + s] += r->step_psnr[at * S + s] / P;
			fx_log_debug("prompt %lld, %s: PSNR %.2f dB", (long long)p, o->ckpt[i], r->psnr[at]);
		}
	}
	for (i = 0; i < o->nckpt; i++)
		for (l = 0; l < ck[i].n; l++)
			r->layer_snr[(size_t)i * r->nlayers + l] = db(ck[i].num[l], ck[i].den[l]);
out:
	free(ref);
	free(lat);
	free(st.ref);
	for (i = 0; i < FX_EVAL_MAX_CKPT; i++)
		ckpt_close(&ck[i]);
	if (run)
		run->free(f);
	fx_st_close(cs);
	fx_model_close(m);
	if (ret < 0)
		fx_eval_result_release(r);
	return ret;
}

void fx_eval_result_release(struct fx_eval_result *r)
{
	free(r->psnr);
	free(r->cosine);
	free(r->step_psnr);
	free(r->step_cosine);
	free(r->mean_step_psnr);
	free(r->layer);
	free(r->layer_snr);
	memset(r, 0, sizeof(*r));
}

/* ---- PNG -------------------------------------------------------------- */

static void be32(uint8_t *p, uint32_t v)
{
	p[0] = v >> 24; p[1] = v >> 16; p[2] = v >> 8; p[3] = v;
}

static int chunk(int fd, const char *type, const uint8_t *data, uint32_t n, const char *path,
		 struct fx_err *err)
{
	uint8_t hdr[8], crc[4];
	uint32_t c;
	int ret;

	be32(hdr, n);
	memcpy(hdr + 4, type, 4);
	c = crc32(0, hdr + 4, 4);
	if (n)
		c = crc32(c, data, n);   /* crc32(c, NULL, 0) would restart at 0 */
	be32(crc, c);
	if ((ret = fx_write_all(fd, hdr, 8, path, err)) < 0 ||
	    (n && (ret = fx_write_all(fd, data, n, path, err)) < 0))
		return ret;
	return fx_write_all(fd, crc, 4, path, err);
}

/* ---- a small raster: rectangles, lines, a 5x7 font ---------------------- */

struct canvas {
	int w, h;
	size_t stride;
	uint8_t *raw;           /* PNG scanlines: filter byte, then RGB */
};

static const uint8_t black[3] = { 0, 0, 0 }, grey[3] = { 220, 220, 220 };

static void px(struct canvas *cv, int x, int y, const uint8_t *rgb)
{
	if (x >= 0 && y >= 0 && x < cv->w && y < cv->h)
		memcpy(cv->raw + (size_t)y * cv->stride + 1 + (size_t)x * 3, rgb, 3);
}

static void rect(struct canvas *cv, int x0, int y0, int x1, int y1, const uint8_t *rgb)
{
	int x, y;

	for (y = y0; y < y1; y++)
		for (x = x0; x < x1; x++)
			px(cv, x, y, rgb);
}

/* Two pixels thick. */
static void line(struct canvas *cv, int x0, int y0, int x1, int y1, const uint8_t *rgb)
{
	int dx = abs(x1 - x0), dy = -abs(y1 - y0), sx = x0 < x1 ? 1 : -1, sy = y0 < y1 ? 1 : -1;
	int e = dx + dy;

	for (;;) {
		int e2 = 2 * e;

		rect(cv, x0, y0, x0 + 2, y0 + 2, rgb);
		if (x0 == x1 && y0 == y1)
			break;
		if (e2 >= dy) {
			e += dy;
			x0 += sx;
		}
		if (e2 <= dx) {
			e += dx;
			y0 += sy;
		}
	}
}

static const char glyph_chars[] = "0123456789.-ABDEILMNOPRSTY";
static const uint8_t glyphs[][7] = {
	{ 14, 17, 19, 21, 25, 17, 14 }, { 4, 12, 4, 4, 4, 4, 14 }, { 14, 17, 1, 2, 4, 8, 31 },
	{ 31, 2, 4, 2, 1, 17, 14 }, { 2, 6, 10, 18, 31, 2, 2 }, { 31, 16, 30, 1, 1, 17, 14 },
	{ 6, 8, 16, 30, 17, 17, 14 }, { 31, 1, 2, 4, 8, 8, 8 }, { 14, 17, 17, 14, 17, 17, 14 },
	{ 14, 17, 17, 15, 1, 2, 12 }, { 0, 0, 0, 0, 0, 12, 12 }, { 0, 0, 0, 31, 0, 0, 0 },
	{ 14, 17, 17, 31, 17, 17, 17 }, { 30, 17, 17, 30, 17, 17, 30 }, { 28, 18, 17, 17, 17, 18, 28 },
	{ 31, 16, 16, 30, 16, 16, 31 }, { 14, 4, 4, 4, 4, 4, 14 }, { 16, 16, 16, 16, 16, 16, 31 },
	{ 17, 27, 21, 21, 17, 17, 17 }, { 17, 17, 25, 21, 19, 17, 17 }, { 14, 17, 17, 17, 17, 17, 14 },
	{ 30, 17, 17, 30, 16, 16, 16 }, { 30, 17, 17, 30, 20, 18, 17 }, { 15, 16, 16, 14, 1, 1, 30 },
	{ 31, 4, 4, 4, 4, 4, 4 }, { 17, 17, 10, 4, 4, 4, 4 },
};

/* Upper-case text, 6·scale pixels a character; unknown characters blank. */
static void text(struct canvas *cv, int x, int y, const char *s, int scale, const uint8_t *rgb)
{
	int row, col;

	for (; *s; s++, x += 6 * scale) {
		const char *at = strchr(glyph_chars, *s);

		if (!at)
			continue;
		for (row = 0; row < 7; row++)
			for (col = 0; col < 5; col++)
				if (glyphs[at - glyph_chars][row] & (16 >> col))
					rect(cv, x + col * scale, y + row * scale, x + (col + 1) * scale,
					     y + (row + 1) * scale, rgb);
	}
}

/* A panel: frame, title, y axis from 0 to top dB with labelled ticks. */
struct panel {
	int x0, y0, x1, y1;     /* plot area */
	double top;
};

static double nice_top(const double *v, size_t n)
{
	double top = 10;
	size_t i;

	for (i = 0; i < n; i++)
		if (v[i] < FX_EVAL_EXACT_DB && v[i] > top)
			top = v[i];
	return ceil(top / 10) * 10;
}

static void panel_init(struct canvas *cv, struct panel *pn, int x, int y, int w, int h,
		       const char *title, double top)
{
	char lab[16];
	int t, ty;

	pn->x0 = x + 40;
	pn->y0 = y + 24;
	pn->x1 = x + w - 10;
	pn->y1 = y + h - 14;
	pn->top = top;
	text(cv, pn->x0, y + 6, title, 2, black);
	for (t = 0; t <= 5; t++) {
		ty = pn->y1 - (int)((double)t / 5 * (pn->y1 - pn->y0));
		rect(cv, pn->x0, ty, pn->x1, ty + 1, grey);
		snprintf(lab, sizeof(lab), "%d", (int)(top * t / 5));
		text(cv, pn->x0 - 6 - 6 * (int)strlen(lab), ty - 3, lab, 1, black);
	}
	rect(cv, pn->x0, pn->y0, pn->x0 + 1, pn->y1 + 1, black);
	rect(cv, pn->x0, pn->y1, pn->x1, pn->y1 + 1, black);
}

static int panel_y(const struct panel *pn, double v)
{
	if (!(v >= 0))
		v = 0;
	if (v > pn->top)
		v = pn->top;
	return pn->y1 - (int)(v / pn->top * (pn->y1 - pn->y0));
}

/* n values as a line across the panel (one point in the middle when n = 1). */
static void series(struct canvas *cv, const struct panel *pn, const double *v, int n,
		   const uint8_t *rgb)
{
	int i, w = pn->x1 - pn->x0 - 8;

	for (i = 0; i < n; i++) {
		int x = pn->x0 + 4 + (n > 1 ? (int)((double)i / (n - 1) * w) : w / 2);
		int y = panel_y(pn, v[i]);

		rect(cv, x - 2, y - 2, x + 3, y + 3, rgb);
		if (i > 0)
			line(cv, pn->x0 + 4 + (int)((double)(i - 1) / (n - 1) * w), panel_y(pn, v[i - 1]),
			     x, y, rgb);
	}
}

int fx_eval_plot(const char *path, const struct fx_eval_result *r, struct fx_err *err)
{
	static const uint8_t colour[FX_EVAL_MAX_CKPT][3] = {
		{ 31, 119, 180 }, { 255, 127, 14 }, { 44, 160, 44 }, { 214, 39, 40 },
		{ 148, 103, 189 }, { 140, 86, 75 }, { 227, 119, 194 }, { 127, 127, 127 },
	};
	struct canvas cv = { .w = 960, .h = 600 };
	struct panel pn;
	size_t raw_n;
	uLongf zn;
	uint8_t *z = NULL, ihdr[13];
	struct fx_out *out = NULL;
	int ret, p, i, y, P = r->nprompts, C = r->nckpt;

	cv.stride = (size_t)cv.w * 3 + 1;
	raw_n = cv.stride * cv.h;
	zn = compressBound(raw_n);
	cv.raw = malloc(raw_n);
	z = malloc(zn);
	if (!cv.raw || !z) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto done;
	}
	memset(cv.raw, 255, raw_n);
	for (y = 0; y < cv.h; y++)
		cv.raw[y * cv.stride] = 0;   /* filter: none */
	/* per-prompt PSNR: one group of bars per prompt, one bar per checkpoint */
	panel_init(&cv, &pn, 0, 0, cv.w / 2, cv.h / 2, "PSNR DB PER PROMPT",
		   nice_top(r->psnr, (size_t)P * C));
	for (p = 0; p < P; p++) {
		int gw = (pn.x1 - pn.x0) / (P ? P : 1), bw = (gw - 8) / (C ? C : 1);

		for (i = 0; i < C; i++) {
			int x = pn.x0 + p * gw + 4 + i * bw;

			rect(&cv, x, panel_y(&pn, r->psnr[i * P + p]), x + bw - 1, pn.y1, colour[i]);
		}
	}
	/* mean PSNR after each step */
	panel_init(&cv, &pn, cv.w / 2, 0, cv.w / 2, cv.h / 2, "PSNR DB PER STEP",
		   nice_top(r->mean_step_psnr, (size_t)C * r->nsteps));
	for (i = 0; i < C; i++)
		series(&cv, &pn, &r->mean_step_psnr[i * r->nsteps], r->nsteps, colour[i]);
	/* every layer's output SNR, model order */
	panel_init(&cv, &pn, 0, cv.h / 2, cv.w, cv.h / 2, "SNR DB PER LAYER",
		   nice_top(r->layer_snr, (size_t)C * r->nlayers));
	for (i = 0; i < C; i++)
		series(&cv, &pn, &r->layer_snr[i * r->nlayers], r->nlayers, colour[i]);
	/* legend: the checkpoints' numbers in their colours */
	for (i = 0; i < C; i++) {
		char lab[12];

		snprintf(lab, sizeof(lab), "%d", i + 1);
		rect(&cv, cv.w - 40 - (C - i) * 40, cv.h / 2 + 6, cv.w - 28 - (C - i) * 40, cv.h / 2 + 18,
		     colour[i]);
		text(&cv, cv.w - 24 - (C - i) * 40, cv.h / 2 + 5, lab, 2, black);
	}
	if (compress2(z, &zn, cv.raw, raw_n, 6) != Z_OK) {
		ret = fx_error(err, FX_E_NOMEM, "png: compression failed");
		goto done;
	}
	be32(ihdr, (uint32_t)cv.w);
	be32(ihdr + 4, (uint32_t)cv.h);
	ihdr[8] = 8; ihdr[9] = 2; ihdr[10] = 0; ihdr[11] = 0; ihdr[12] = 0;
	if ((ret = fx_out_open(&out, path, true, err)) < 0 ||
	    (ret = fx_write_all(fx_out_fd(out), "\x89PNG\r\n\x1a\n", 8, path, err)) < 0 ||
	    (ret = chunk(fx_out_fd(out), "IHDR", ihdr, 13, path, err)) < 0 ||
	    (ret = chunk(fx_out_fd(out), "IDAT", z, (uint32_t)zn, path, err)) < 0 ||
	    (ret = chunk(fx_out_fd(out), "IEND", NULL, 0, path, err)) < 0)
		goto done;
	ret = fx_out_commit(out, err);
	out = NULL;
done:
	fx_out_abort(out);
	free(cv.raw);
	free(z);
	return ret;
}
