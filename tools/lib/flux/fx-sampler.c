/* FLUX sampler: schedule, image ids, Euler trajectory (spec §4). */
#include "fx-sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

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

	if (steps < 1 || steps > 100000)
		return fx_error(err, FX_E_ARG, "bad step count %d", steps);
	if (!dynamic && !(shift > 0.0f))
		return fx_error(err, FX_E_ARG, "bad sigma shift %g", (double)shift);
	fx_sampler_linspace(sigmas, steps);
	for (int i = 0; i < steps; i++) {
		float s = sigmas[i];

		if (dynamic)
			s = e / (e + (1.0f / s - 1.0f));
		else
			s = shift * s / (1.0f + (shift - 1.0f) * s);
		sigmas[i] = s;
	}
	sigmas[steps] = 0.0f;
	return 0;
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

void fx_sample_params_init(struct fx_sample_params *p, const struct fx_model_config *c)
{
	memset(p, 0, sizeof(*p));
	p->width = p->height = 1024;
	p->guidance = 3.5f;
	p->dynamic_shift = c->guidance;
	p->steps = c->guidance ? 50 : 4;
	p->shift = 1.0f;
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
	fx_sampler_start(out, p->init, nv, c->in_channels / 4, p->height / 8, p->width / 8,
			 p->seed);

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
		fx_sampler_euler(out, v, dt, nv);
	}
out:
	free(v);
	free(ids);
	free(sig);
	return ret;
}
