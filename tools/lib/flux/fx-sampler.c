/* FLUX sampler: schedule, noise, packing, Euler trajectory (spec §4). */
#include "fx-sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

void fx_rng_init(struct fx_rng *r, uint64_t seed)
{
	r->s = seed;
	r->spare = 0.0;
	r->has_spare = false;
}

uint64_t fx_rng_u64(struct fx_rng *r)
{
	uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

double fx_rng_uniform(struct fx_rng *r)
{
	return ((double)(fx_rng_u64(r) >> 11) + 0.5) * 0x1.0p-53;
}

double fx_rng_normal(struct fx_rng *r)
{
	double u1, u2, rad, a;

	if (r->has_spare) {
		r->has_spare = false;
		return r->spare;
	}
	u1 = fx_rng_uniform(r);
	u2 = fx_rng_uniform(r);
	rad = sqrt(-2.0 * log(u1));
	a = 2.0 * M_PI * u2;
	r->spare = rad * sin(a);
	r->has_spare = true;
	return rad * cos(a);
}

void fx_rng_normal_f32(struct fx_rng *r, float *dst, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = (float)fx_rng_normal(r);
}

double fx_sampler_mu(int64_t image_seq_len)
{
	double m = (1.15 - 0.5) / (4096.0 - 256.0);
	double b = 0.5 - m * 256.0;

	return (double)image_seq_len * m + b;
}

int fx_sampler_sigmas(float *sigmas, int steps, int64_t image_seq_len, bool dynamic,
		      float shift, struct fx_err *err)
{
	float e = (float)exp(fx_sampler_mu(image_seq_len));
	double step;

	if (steps < 1 || steps > 100000)
		return fx_error(err, FX_E_ARG, "bad step count %d", steps);
	if (!dynamic && !(shift > 0.0f))
		return fx_error(err, FX_E_ARG, "bad sigma shift %g", (double)shift);
	/* numpy linspace(1, 1/n, n): i·step + 1, the last one exactly 1/n */
	step = steps > 1 ? (1.0 / steps - 1.0) / (double)(steps - 1) : 0.0;
	for (int i = 0; i < steps; i++) {
		float s = (float)(i == steps - 1 ? 1.0 / steps : (double)i * step + 1.0);

		if (dynamic)
			s = e / (e + (1.0f / s - 1.0f));
		else
			s = shift * s / (1.0f + (shift - 1.0f) * s);
		sigmas[i] = s;
	}
	sigmas[steps] = 0.0f;
	return 0;
}

void fx_latent_pack(float *packed, const float *z, int c, int h, int w)
{
	int hp = h / 2, wp = w / 2;

	for (int r = 0; r < hp; r++)
		for (int col = 0; col < wp; col++) {
			float *dst = packed + ((size_t)r * wp + col) * 4 * c;

			for (int ch = 0; ch < c; ch++)
				for (int dy = 0; dy < 2; dy++)
					for (int dx = 0; dx < 2; dx++)
						dst[ch * 4 + dy * 2 + dx] =
							z[((size_t)ch * h + 2 * r + dy) * w + 2 * col + dx];
		}
}

void fx_latent_unpack(float *z, const float *packed, int c, int h, int w)
{
	int hp = h / 2, wp = w / 2;

	for (int r = 0; r < hp; r++)
		for (int col = 0; col < wp; col++) {
			const float *src = packed + ((size_t)r * wp + col) * 4 * c;

			for (int ch = 0; ch < c; ch++)
				for (int dy = 0; dy < 2; dy++)
					for (int dx = 0; dx < 2; dx++)
						z[((size_t)ch * h + 2 * r + dy) * w + 2 * col + dx] =
							src[ch * 4 + dy * 2 + dx];
		}
}

void fx_sampler_img_ids(float *ids, int hp, int wp)
{
	for (int r = 0; r < hp; r++)
		for (int col = 0; col < wp; col++) {
			float *p = ids + ((size_t)r * wp + col) * 3;

			p[0] = 0.0f;
			p[1] = (float)r;
			p[2] = (float)col;
		}
}

void fx_sampler_noise(float *packed, int c, int h, int w, uint64_t seed)
{
	struct fx_rng r;

	/* drawn in (ch, y, x) order, stored straight at the packed position */
	fx_rng_init(&r, seed);
	for (int ch = 0; ch < c; ch++)
		for (int y = 0; y < h; y++)
			for (int x = 0; x < w; x++)
				packed[((size_t)(y / 2) * (w / 2) + x / 2) * 4 * c + ch * 4 +
				       (y % 2) * 2 + x % 2] = (float)fx_rng_normal(&r);
}

void fx_sample_params_init(struct fx_sample_params *p, const struct fx_model_config *c)
{
	memset(p, 0, sizeof(*p));
	p->width = p->height = 1024;
	p->guidance = 3.5f;
	p->dynamic_shift = c->guidance;
	p->steps = c->guidance ? 50 : 4;
	p->shift = 1.0f;
}

int fx_sampler_tokens(int width, int height, int64_t *ni, struct fx_err *err)
{
	if (width <= 0 || height <= 0 || width % 16 || height % 16 || width > 65536 ||
	    height > 65536)
		return fx_error(err, FX_E_ARG,
				"bad resolution %dx%d (positive multiples of 16 expected)", width,
				height);
	*ni = (int64_t)(width / 16) * (height / 16);
	return 0;
}

int fx_sampler_run(struct fx_flux *f, const struct fx_sample_params *p, const float *txt,
		   int64_t nt, const float *pooled, float *out, struct fx_err *err)
{
	const struct fx_model_config *c = fx_model_config(fx_flux_model(f));
	struct fx_flux_input in;
	float *v = NULL, *ids = NULL, *sig = NULL;
	int64_t ni = 0, nv;
	int ret;

	if ((ret = fx_sampler_tokens(p->width, p->height, &ni, err)) < 0)
		return ret;
	if (!p->init && (c->in_channels <= 0 || c->in_channels % 4))
		return fx_error(err, FX_E_UNSUPPORTED,
				"cannot draw noise for %d input channels (not 4 x latent channels)",
				c->in_channels);
	if (c->out_channels != c->in_channels)
		return fx_error(err, FX_E_UNSUPPORTED,
				"cannot sample with %d input and %d output channels",
				c->in_channels, c->out_channels);
	nv = ni * c->in_channels;
	v = malloc((size_t)nv * sizeof(float));
	ids = malloc((size_t)ni * 3 * sizeof(float));
	sig = malloc((size_t)(p->steps > 0 ? p->steps + 1 : 1) * sizeof(float));
	if (!v || !ids || !sig) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = fx_sampler_sigmas(sig, p->steps, ni, p->dynamic_shift, p->shift, err)) < 0)
		goto out;
	fx_sampler_img_ids(ids, p->height / 16, p->width / 16);
	if (p->init)
		memcpy(out, p->init, (size_t)nv * sizeof(float));
	else
		fx_sampler_noise(out, c->in_channels / 4, p->height / 8, p->width / 8, p->seed);

	memset(&in, 0, sizeof(in));
	in.ni = ni;
	in.nt = nt;
	in.img = out;
	in.txt = txt;
	in.pooled = pooled;
	in.img_ids = ids;
	in.guidance = p->guidance;
	for (int i = 0; i < p->steps; i++) {
		float dt = sig[i + 1] - sig[i];

		if (p->step_begin && (ret = p->step_begin(p->step_ctx, i, sig[i], err)) < 0)
			goto out;
		in.sigma = sig[i];
		if ((ret = fx_flux_forward(f, &in, v, err)) < 0) {
			fx_error_prefix(err, "step %d of %d", i, p->steps);
			goto out;
		}
		for (int64_t j = 0; j < nv; j++)
			out[j] = out[j] + dt * v[j];
	}
out:
	free(v);
	free(ids);
	free(sig);
	return ret;
}
