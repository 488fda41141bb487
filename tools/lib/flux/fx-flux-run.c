/* The FLUX runner (fx-family.h fx_runner_ops): conditioning prompt_embeds
 * (P,L,joint) + pooled_prompt_embeds (P,pooled), the Euler sampler of
 * fx-sampler.h over fx_flux_forward. */
#include "fx-flux-family.h"

#include <stdlib.h>
#include <string.h>

#include "fx-dit-linear.h"
#include "fx-flux.h"
#include "fx-model.h"
#include "fx-sampler.h"
#include "fx-st.h"

struct fx_runner {
	struct fx_flux *f;
	const struct fx_model_config *c;
	const struct fx_tensor *pe, *pp;
	const char *cond;
	int64_t nt;
	float *txt, *pooled;
	struct fx_run_hooks h;
	bool hooked;
};

static int cond_tensor(const struct fx_st *cs, const char *path, const char *name, int ndim,
		       const struct fx_tensor **t, struct fx_err *err)
{
	*t = fx_st_find(cs, name);
	if (!*t)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' missing (a conditioning file holds "
				"prompt_embeds (P,L,D) and pooled_prompt_embeds (P,768))", path, name);
	if ((*t)->ndim != ndim)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has %d dims, expected %d", path,
				name, (*t)->ndim, ndim);
	return 0;
}

static void run_free(struct fx_runner *r)
{
	if (!r)
		return;
	fx_flux_free(r->f);
	free(r->txt);
	free(r->pooled);
	free(r);
}

static int run_open(struct fx_runner **out, const struct fx_model *m, const struct fx_st *cs,
		    const char *path, int64_t *prompts, struct fx_err *err)
{
	struct fx_runner *r = calloc(1, sizeof(*r));
	const struct fx_model_config *c = fx_model_config(m);
	int ret;

	*out = NULL;
	if (!r)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	r->c = c;
	r->cond = path;
	if ((ret = cond_tensor(cs, path, "prompt_embeds", 3, &r->pe, err)) < 0 ||
	    (ret = cond_tensor(cs, path, "pooled_prompt_embeds", 2, &r->pp, err)) < 0)
		goto out;
	if (r->pe->shape[2] != c->joint_dim || r->pp->shape[1] != c->pooled_dim ||
	    r->pe->shape[0] != r->pp->shape[0]) {
		char a[64], b[64];

		ret = fx_error(err, FX_E_FORMAT, "'%s': conditioning does not fit the model: prompt_embeds %s "
			       "and pooled_prompt_embeds %s, the model takes [P,L,%d] and [P,%d]",
			       path, fx_shape_str(a, sizeof(a), 3, r->pe->shape),
			       fx_shape_str(b, sizeof(b), 2, r->pp->shape), c->joint_dim, c->pooled_dim);
		goto out;
	}
	r->nt = r->pe->shape[1];
	r->txt = malloc((size_t)r->nt * c->joint_dim * sizeof(float));
	r->pooled = malloc((size_t)c->pooled_dim * sizeof(float));
	if (!r->txt || !r->pooled) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = fx_flux_new(&r->f, m, err)) < 0)
		goto out;
	*prompts = r->pe->shape[0];
	*out = r;
	r = NULL;
out:
	run_free(r);
	return ret;
}

static void run_defaults(const struct fx_model_config *c, struct fx_run_params *p)
{
	struct fx_sample_params sp;

	fx_sample_params_init(&sp, c);
	p->width = sp.width;
	p->height = sp.height;
	p->steps = sp.steps;
	p->guidance = sp.guidance;
	p->seed = sp.seed;
}

static int run_tokens(const struct fx_model_config *c, int width, int height, int64_t *ni,
		      struct fx_err *err)
{
	(void)c;
	return fx_sampler_tokens(width, height, ni, err);
}

static int run_set_device(struct fx_runner *r, const struct fx_device *dev, bool bf16,
			  struct fx_err *err)
{
	int ret = fx_flux_set_device(r->f, dev, err);

	if (ret == 0)
		fx_flux_set_bf16_gemm(r->f, bf16);
	return ret;
}

static void run_set_hooks(struct fx_runner *r, const struct fx_run_hooks *h)
{
	r->hooked = h != NULL;
	if (h)
		r->h = *h;
	fx_dit_linear_set_run_hooks(fx_flux_linear(r->f), h);
}

static int step_begin(void *ctx, int step, float sigma, struct fx_err *err)
{
	struct fx_runner *r = ctx;

	return r->h.step_begin(r->h.ctx, step, sigma, 0, err);
}

static int run_sample(struct fx_runner *r, int64_t p, const struct fx_run_params *par,
		      float *out, struct fx_err *err)
{
	const struct fx_model_config *c = r->c;
	struct fx_sample_params sp;
	size_t tsz = fx_dtype_size(r->pe->dtype), psz = fx_dtype_size(r->pp->dtype);

	fx_sample_params_init(&sp, c);
	if (par->width > 0) {
		sp.width = par->width;
		sp.height = par->height;
	}
	if (par->steps > 0)
		sp.steps = par->steps;
	if (par->guidance >= 0)
		sp.guidance = par->guidance;
	sp.seed = par->seed;
	if (r->hooked && r->h.step_begin) {
		sp.step_begin = step_begin;
		sp.step_ctx = r;
	}
	if (fx_to_f32(r->txt, (const char *)r->pe->data + (size_t)p * r->nt * c->joint_dim * tsz,
		      r->pe->dtype, (size_t)r->nt * c->joint_dim) < 0 ||
	    fx_to_f32(r->pooled, (const char *)r->pp->data + (size_t)p * c->pooled_dim * psz,
		      r->pp->dtype, (size_t)c->pooled_dim) < 0)
		return fx_error(err, FX_E_FORMAT, "'%s': conditioning tensors must be float", r->cond);
	return fx_sampler_run(r->f, &sp, r->txt, r->nt, r->pooled, out, err);
}

static int run_linear_dense(struct fx_runner *r, const struct fx_group *g, const float *x,
			    int64_t m, float *y, struct fx_err *err)
{
	return fx_dit_linear_dense(fx_flux_linear(r->f), g, x, m, y, err);
}

const struct fx_runner_ops fx_flux_runner = {
	.open = run_open,
	.free = run_free,
	.defaults = run_defaults,
	.tokens = run_tokens,
	.set_device = run_set_device,
	.set_hooks = run_set_hooks,
	.sample = run_sample,
	.linear_dense = run_linear_dense,
};
