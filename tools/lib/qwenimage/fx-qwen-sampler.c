/* Qwen-Image sampler: schedule, true CFG, Euler trajectory. */
#include "fx-qwen-sampler.h"

#include "fx-dit-sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define SHIFT_TERMINAL 0.02

double fx_qwen_mu(int64_t image_seq_len)
{
	double m = (0.9 - 0.5) / (8192.0 - 256.0);
	double b = 0.5 - m * 256.0;

	return (double)image_seq_len * m + b;
}

int fx_qwen_sigmas(float *sigmas, int steps, int64_t image_seq_len, struct fx_err *err)
{
	float e = (float)exp(fx_qwen_mu(image_seq_len)), s;

	if (steps < 1 || steps > 100000)
		return fx_error(err, FX_E_ARG, "bad step count %d", steps);
	if (steps == 1)   /* z[0] = 0: diffusers' stretch gives 1 − 0/0 = NaN */
		return fx_error(err, FX_E_ARG,
				"Qwen-Image's schedule needs at least 2 steps (the terminal stretch is 0/0 at 1)");
	fx_sampler_linspace(sigmas, steps);
	for (int i = 0; i < steps; i++)
		sigmas[i] = e / (e + (1.0f / sigmas[i] - 1.0f));
	/* stretch_shift_to_terminal */
	s = (1.0f - sigmas[steps - 1]) / (float)(1.0 - SHIFT_TERMINAL);
	for (int i = 0; i < steps; i++)
		sigmas[i] = 1.0f - (1.0f - sigmas[i]) / s;
	sigmas[steps] = 0.0f;
	return 0;
}

void fx_qwen_cfg(float *pos, const float *neg, int64_t n, int64_t c, float scale)
{
	#pragma omp parallel for if (n * c > 65536) schedule(static)
	for (int64_t t = 0; t < n; t++) {
		float *p = pos + t * c;
		const float *q = neg + t * c;
		double sp = 0.0, sc = 0.0;
		float r;

		for (int64_t j = 0; j < c; j++) {
			float comb = q[j] + scale * (p[j] - q[j]);

			sp += (double)p[j] * p[j];
			sc += (double)comb * comb;
			p[j] = comb;
		}
		r = (float)sqrt(sp) / (float)sqrt(sc);
		for (int64_t j = 0; j < c; j++)
			p[j] *= r;
	}
}

void fx_qwen_sample_params_init(struct fx_qwen_sample_params *p)
{
	memset(p, 0, sizeof(*p));
	p->width = p->height = 1024;
	p->steps = 50;
	p->true_cfg = 4.0f;
}

int fx_qwen_sample_run(struct fx_qwen *f, const struct fx_qwen_sample_params *p,
		       const float *txt, const float *txt_mask, int64_t nt, const float *neg_txt,
		       const float *neg_mask, int64_t nneg, float *out, struct fx_err *err)
{
	const struct fx_model_config *c = fx_model_config(fx_qwen_model(f));
	bool cfg = p->true_cfg > 1.0f && neg_txt;
	struct fx_qwen_input in;
	float *v = NULL, *vn = NULL, *sig = NULL;
	int64_t ni = 0, nv;
	int ret;

	if ((ret = fx_sampler_tokens(p->width, p->height, &ni, err)) < 0)
		return ret;
	if (c->in_channels <= 0 || c->in_channels % 4)
		return fx_error(err, FX_E_UNSUPPORTED,
				"cannot sample with %d input channels (not 4 x latent channels)",
				c->in_channels);
	if (4 * c->out_channels != c->in_channels)
		return fx_error(err, FX_E_UNSUPPORTED,
				"cannot sample with %d input and 4 x %d output channels",
				c->in_channels, c->out_channels);
	if (p->steps < 2 || p->steps > 100000)
		return fx_error(err, FX_E_ARG, "bad step count %d (2 to 100000)", p->steps);
	nv = ni * c->in_channels;
	v = malloc((size_t)nv * sizeof(float));
	vn = cfg ? malloc((size_t)nv * sizeof(float)) : NULL;
	sig = malloc((size_t)(p->steps + 1) * sizeof(float));
	if (!v || (cfg && !vn) || !sig) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = fx_qwen_sigmas(sig, p->steps, ni, err)) < 0)
		goto out;
	fx_sampler_start(out, p->init, nv, c->in_channels / 4, p->height / 8, p->width / 8,
			 p->seed);

	memset(&in, 0, sizeof(in));
	in.ni = ni;
	in.img = out;
	in.img_h = p->height / 16;
	in.img_w = p->width / 16;
	for (int i = 0; i < p->steps; i++) {
		float dt = sig[i + 1] - sig[i];

		in.sigma = sig[i];
		for (int pass = 0; pass < (cfg ? 2 : 1); pass++) {
			in.txt = pass ? neg_txt : txt;
			in.txt_mask = pass ? neg_mask : txt_mask;
			in.nt = pass ? nneg : nt;
			if (p->step_begin && (ret = p->step_begin(p->step_ctx, i, sig[i], pass, err)) < 0)
				goto out;
			if ((ret = fx_qwen_forward(f, &in, pass ? vn : v, err)) < 0) {
				fx_error_prefix(err, "step %d of %d%s", i, p->steps,
						pass ? " (negative prompt)" : "");
				goto out;
			}
		}
		if (cfg)
			fx_qwen_cfg(v, vn, ni, c->in_channels, p->true_cfg);
		fx_sampler_euler(out, v, dt, nv);
	}
out:
	free(v);
	free(vn);
	free(sig);
	return ret;
}
