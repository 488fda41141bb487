#include "fx-eval.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "../common/fx-io.h"
#include "../common/fx-log.h"
#include "fx-flux.h"
#include "fx-model.h"
#include "fx-packed-module.h"
#include "fx-sampler.h"
#include "fx-st.h"

/* A checkpoint's modules, loaded once, indexed like the model's groups. */
struct ckpt {
	struct fx_st *st;
	struct fx_packed_module *pm;
	size_t n;
};

static int runtime_linear(void *ctx, const struct fx_group *g, const float *x, int64_t m, float *y,
			  struct fx_err *err)
{
	const struct ckpt *c = ctx;
	size_t i;

	for (i = 0; i < c->n; i++)
		if (c->pm[i].g == g)
			return fx_packed_module_forward(&c->pm[i], x, m, y, err);
	return fx_error(err, FX_E_FORMAT, "'%s': module '%s' missing", fx_st_path(c->st), g->name);
}

static void ckpt_close(struct ckpt *c)
{
	size_t i;

	for (i = 0; c->pm && i < c->n; i++)
		fx_packed_module_release(&c->pm[i]);
	free(c->pm);
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
	fp4 = fx_packed_is_fp4(c->st);
	c->n = fx_model_ngroups(m);
	c->pm = calloc(c->n, sizeof(*c->pm));
	if (!c->pm)
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
	*psnr = mse > 0 ? 10 * log10(peak * peak / mse) : 999;
	*cosine = na > 0 && nb > 0 ? dot / sqrt(na * nb) : 0;
}

int fx_eval_run(const struct fx_eval_opts *o, struct fx_eval_result *r, struct fx_err *err)
{
	struct fx_model *m = NULL;
	struct fx_st *cs = NULL;
	struct fx_flux *f = NULL;
	struct ckpt ck[FX_EVAL_MAX_CKPT] = {0};
	const struct fx_model_config *c;
	const struct fx_tensor *pe, *pp;
	struct fx_sample_params sp;
	float *txt = NULL, *pooled = NULL, *ref = NULL, *lat = NULL;
	int64_t ni, nt, P, p;
	int i, ret;

	memset(r, 0, sizeof(*r));
	if ((ret = fx_model_open(&m, o->model, err)) < 0 || (ret = fx_st_open(&cs, o->cond, err)) < 0)
		goto out;
	c = fx_model_config(m);
	pe = fx_st_find(cs, "prompt_embeds");
	pp = fx_st_find(cs, "pooled_prompt_embeds");
	if (!pe || !pp || pe->ndim != 3 || pp->ndim != 2 || pe->shape[2] != c->joint_dim ||
	    pp->shape[1] != c->pooled_dim || pe->shape[0] != pp->shape[0]) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': conditioning does not fit the model "
			       "(prompt_embeds [P,L,%d] and pooled_prompt_embeds [P,%d] wanted)",
			       o->cond, c->joint_dim, c->pooled_dim);
		goto out;
	}
	P = o->prompts > 0 && o->prompts < pe->shape[0] ? o->prompts : pe->shape[0];
	nt = pe->shape[1];
	for (i = 0; i < o->nckpt; i++)
		if ((ret = ckpt_open(&ck[i], o->ckpt[i], m, err)) < 0)
			goto out;
	fx_sample_params_init(&sp, c);
	sp.steps = o->steps > 0 ? o->steps : 4;
	sp.width = o->width > 0 ? o->width : 256;
	sp.height = o->height > 0 ? o->height : 256;
	if (o->guidance >= 0)
		sp.guidance = o->guidance;
	if ((ret = fx_sampler_tokens(sp.width, sp.height, &ni, err)) < 0 ||
	    (ret = fx_flux_new(&f, m, err)) < 0)
		goto out;
	r->nprompts = (int)P;
	r->nckpt = o->nckpt;
	r->psnr = calloc((size_t)P * (o->nckpt ? o->nckpt : 1), sizeof(double));
	r->cosine = calloc((size_t)P * (o->nckpt ? o->nckpt : 1), sizeof(double));
	txt = malloc((size_t)nt * c->joint_dim * 4);
	pooled = malloc((size_t)c->pooled_dim * 4);
	ref = malloc((size_t)ni * c->in_channels * 4);
	lat = malloc((size_t)ni * c->in_channels * 4);
	if (!r->psnr || !r->cosine || !txt || !pooled || !ref || !lat) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (p = 0; p < P; p++) {
		fx_to_f32(txt, (const char *)pe->data + (size_t)p * nt * c->joint_dim * fx_dtype_size(pe->dtype),
			  pe->dtype, (size_t)nt * c->joint_dim);
		fx_to_f32(pooled, (const char *)pp->data + (size_t)p * c->pooled_dim * fx_dtype_size(pp->dtype),
			  pp->dtype, (size_t)c->pooled_dim);
		sp.seed = o->seed + (uint64_t)p;
		fx_flux_set_hooks(f, NULL);
		if ((ret = fx_sampler_run(f, &sp, txt, nt, pooled, ref, err)) < 0)
			goto out;
		for (i = 0; i < o->nckpt; i++) {
			struct fx_flux_hooks h = { .ctx = &ck[i], .linear = runtime_linear };

			fx_flux_set_hooks(f, &h);
			if ((ret = fx_sampler_run(f, &sp, txt, nt, pooled, lat, err)) < 0)
				goto out;
			compare(ref, lat, (size_t)ni * c->in_channels, &r->psnr[i * P + p], &r->cosine[i * P + p]);
			r->mean_psnr[i] += r->psnr[i * P + p] / P;
			r->mean_cosine[i] += r->cosine[i * P + p] / P;
			fx_log_debug("prompt %lld, %s: PSNR %.2f dB", (long long)p, o->ckpt[i], r->psnr[i * P + p]);
		}
	}
out:
	free(txt);
	free(pooled);
	free(ref);
	free(lat);
	for (i = 0; i < FX_EVAL_MAX_CKPT; i++)
		ckpt_close(&ck[i]);
	fx_flux_free(f);
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
	c = crc32(c, data, n);
	be32(crc, c);
	if ((ret = fx_write_all(fd, hdr, 8, path, err)) < 0 ||
	    (n && (ret = fx_write_all(fd, data, n, path, err)) < 0))
		return ret;
	return fx_write_all(fd, crc, 4, path, err);
}

int fx_eval_plot(const char *path, const struct fx_eval_result *r, struct fx_err *err)
{
	static const uint8_t colour[FX_EVAL_MAX_CKPT][3] = {
		{ 31, 119, 180 }, { 255, 127, 14 }, { 44, 160, 44 }, { 214, 39, 40 },
		{ 148, 103, 189 }, { 140, 86, 75 }, { 227, 119, 194 }, { 127, 127, 127 },
	};
	const int W = 640, H = 360, margin = 20;
	size_t stride = (size_t)W * 3 + 1, raw_n = stride * H;
	uint8_t *raw = malloc(raw_n), ihdr[13];
	uLongf zn = compressBound(raw_n);
	uint8_t *z = malloc(zn);
	double top = 1;
	struct fx_out *out = NULL;
	int ret, p, i, x, y;

	if (!raw || !z) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto done;
	}
	memset(raw, 255, raw_n);
	for (y = 0; y < H; y++)
		raw[y * stride] = 0;   /* filter: none */
	for (i = 0; i < r->nckpt * r->nprompts; i++)
		top = r->psnr[i] > top && r->psnr[i] < 900 ? r->psnr[i] : top;
	/* axis, then one group of bars per prompt, one bar per checkpoint */
	for (x = margin; x < W - margin; x++)
		memset(raw + (H - margin) * stride + 1 + x * 3, 0, 3);
	for (p = 0; p < r->nprompts; p++) {
		int gw = (W - 2 * margin) / (r->nprompts ? r->nprompts : 1);
		int bw = (gw - 8) / (r->nckpt ? r->nckpt : 1);

		for (i = 0; i < r->nckpt; i++) {
			double v = r->psnr[i * r->nprompts + p];
			int h = (int)((v > 900 ? top : v) / top * (H - 2 * margin));

			for (y = H - margin - h; y < H - margin; y++)
				for (x = margin + p * gw + 4 + i * bw; x < margin + p * gw + 4 + (i + 1) * bw - 1; x++)
					memcpy(raw + y * stride + 1 + x * 3, colour[i % FX_EVAL_MAX_CKPT], 3);
		}
	}
	if (compress2(z, &zn, raw, raw_n, 6) != Z_OK) {
		ret = fx_error(err, FX_E_NOMEM, "png: compression failed");
		goto done;
	}
	be32(ihdr, W);
	be32(ihdr + 4, H);
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
	free(raw);
	free(z);
	return ret;
}
