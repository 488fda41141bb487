/* The Qwen-Image runner (fx-family.h fx_runner_ops). Conditioning, as
 * QwenImagePipeline.encode_prompt returns it:
 *   prompt_embeds (P, L, joint) float, prompt_embeds_mask (P, L) optional
 *   (integer or float, nonzero = token; absent = all tokens),
 *   negative_prompt_embeds (1 or P, L', joint) and its mask, optional
 *   (absent: no true CFG, as the pipeline without a negative prompt).
 * Each prompt runs alone, as the pipeline runs a batch of one: its
 * trailing padding is cut off, so the text layers see its tokens only. */
#include "fx-qwen-family.h"

#include <stdlib.h>
#include <string.h>

#include "fx-model.h"
#include "fx-qwen-sampler.h"
#include "fx-qwen.h"
#include "fx-dit-linear.h"
#include "fx-dit-sampler.h"
#include "fx-device.h"
#include "fx-st.h"

struct fx_runner {
	struct fx_qwen *f;
	const struct fx_model_config *c;
	const struct fx_tensor *pe, *pm, *ne, *nm;
	const char *cond;
	float *txt, *mask, *neg, *negmask;
	struct fx_run_hooks h;
	bool hooked;
};

static void run_free(struct fx_runner *r)
{
	if (!r)
		return;
	fx_qwen_free(r->f);
	free(r->txt);
	free(r->mask);
	free(r->neg);
	free(r->negmask);
	free(r);
}

static int want(const struct fx_st *cs, const char *path, const char *name, int ndim,
		bool need, const struct fx_tensor **t, struct fx_err *err)
{
	*t = fx_st_find(cs, name);
	if (!*t && need)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' missing (a Qwen-Image conditioning "
				"file holds prompt_embeds (P,L,D), optionally prompt_embeds_mask (P,L) and "
				"negative_prompt_embeds (1 or P,L',D) with its mask)", path, name);
	if (*t && (*t)->ndim != ndim)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has %d dims, expected %d", path,
				name, (*t)->ndim, ndim);
	return 0;
}

static int check_mask(const char *path, const struct fx_tensor *m, const struct fx_tensor *e,
		      struct fx_err *err)
{
	char a[64], b[64];

	if (!m)
		return 0;
	if (m->shape[0] != e->shape[0] || m->shape[1] != e->shape[1])
		return fx_error(err, FX_E_FORMAT, "'%s': '%s' is %s, '%s' %s: the mask has one value per token",
				path, m->name, fx_shape_str(a, sizeof(a), m->ndim, m->shape), e->name,
				fx_shape_str(b, sizeof(b), e->ndim, e->shape));
	return 0;
}

static int run_open(struct fx_runner **out, const struct fx_model *m, const struct fx_st *cs,
		    const char *path, int64_t *prompts, struct fx_err *err)
{
	struct fx_runner *r = calloc(1, sizeof(*r));
	const struct fx_model_config *c = fx_model_config(m);
	char a[64];
	int ret;

	*out = NULL;
	if (!r)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	r->c = c;
	r->cond = path;
	if ((ret = want(cs, path, "prompt_embeds", 3, true, &r->pe, err)) < 0 ||
	    (ret = want(cs, path, "prompt_embeds_mask", 2, false, &r->pm, err)) < 0 ||
	    (ret = want(cs, path, "negative_prompt_embeds", 3, false, &r->ne, err)) < 0 ||
	    (ret = want(cs, path, "negative_prompt_embeds_mask", 2, false, &r->nm, err)) < 0)
		goto out;
	if (r->pe->shape[2] != c->joint_dim || (r->ne && r->ne->shape[2] != c->joint_dim)) {
		const struct fx_tensor *t = r->pe->shape[2] != c->joint_dim ? r->pe : r->ne;

		ret = fx_error(err, FX_E_FORMAT, "'%s': conditioning does not fit the model: %s %s, "
			       "the model takes [P,L,%d]", path, t->name,
			       fx_shape_str(a, sizeof(a), 3, t->shape), c->joint_dim);
		goto out;
	}
	if (r->ne && r->ne->shape[0] != 1 && r->ne->shape[0] != r->pe->shape[0]) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': negative_prompt_embeds holds %lld prompts, "
			       "expected 1 or %lld", path, (long long)r->ne->shape[0],
			       (long long)r->pe->shape[0]);
		goto out;
	}
	if (r->nm && !r->ne) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': negative_prompt_embeds_mask without "
			       "negative_prompt_embeds", path);
		goto out;
	}
	if ((ret = check_mask(path, r->pm, r->pe, err)) < 0 ||
	    (r->ne && (ret = check_mask(path, r->nm, r->ne, err)) < 0))
		goto out;
	r->txt = malloc((size_t)r->pe->shape[1] * c->joint_dim * sizeof(float));
	r->mask = malloc((size_t)r->pe->shape[1] * sizeof(float));
	if (r->ne) {
		r->neg = malloc((size_t)r->ne->shape[1] * c->joint_dim * sizeof(float));
		r->negmask = malloc((size_t)r->ne->shape[1] * sizeof(float));
	}
	if (!r->txt || !r->mask || (r->ne && (!r->neg || !r->negmask))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = fx_qwen_new(&r->f, m, err)) < 0)
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
	struct fx_qwen_sample_params sp;

	(void)c;
	fx_qwen_sample_params_init(&sp);
	p->width = sp.width;
	p->height = sp.height;
	p->steps = sp.steps;
	p->guidance = sp.true_cfg;
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
	(void)r;
	(void)bf16;
	if (dev && dev->kind != FX_DEV_CPU)
		return fx_error(err, FX_E_UNSUPPORTED,
				"the Qwen-Image forward runs on the CPU only (--device cpu)");
	return 0;
}

static void run_set_hooks(struct fx_runner *r, const struct fx_run_hooks *h)
{
	r->hooked = h != NULL;
	if (h)
		r->h = *h;
	fx_dit_linear_set_run_hooks(fx_qwen_linear(r->f), h);
}

/* Row p (or 0 of a one-row tensor) of t as f32; *n: the tokens up to the
 * last valid one of its mask; *all: no token before that is masked. */
static int prompt_rows(const struct fx_runner *r, const struct fx_tensor *t,
		       const struct fx_tensor *mt, int64_t p, float *dst, float *mask, int64_t *n,
		       bool *all, struct fx_err *err)
{
	int64_t L = t->shape[1], D = r->c->joint_dim, i;
	size_t esz = fx_dtype_size(t->dtype);

	if (t->shape[0] == 1)
		p = 0;
	if (fx_to_f32(dst, (const char *)t->data + (size_t)p * L * D * esz, t->dtype,
		      (size_t)L * D) < 0)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' must be float", r->cond, t->name);
	for (i = 0; i < L; i++)
		mask[i] = 1.0f;
	if (mt) {
		const char *b = (const char *)mt->data + (size_t)p * L * fx_dtype_size(mt->dtype);

		for (i = 0; i < L; i++) {
			switch (mt->dtype) {
			case FX_I64: mask[i] = ((const int64_t *)(const void *)b)[i] != 0; break;
			case FX_I32: mask[i] = ((const int32_t *)(const void *)b)[i] != 0; break;
			case FX_U8: case FX_I8: mask[i] = b[i] != 0; break;
			default:
				if (fx_to_f32(mask, b, mt->dtype, (size_t)L) < 0)
					return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has dtype %s, "
							"expected an integer or float mask", r->cond,
							mt->name, fx_dtype_name(mt->dtype));
				i = L;
			}
		}
	}
	*n = L;
	while (*n > 0 && mask[*n - 1] == 0.0f)
		(*n)--;
	*all = true;
	for (i = 0; i < *n; i++)
		*all = *all && mask[i] != 0.0f;
	if (!*n)
		return fx_error(err, FX_E_FORMAT, "'%s': prompt %lld of '%s' has no token", r->cond,
				(long long)p, t->name);
	return 0;
}

static int run_sample(struct fx_runner *r, int64_t p, const struct fx_run_params *par,
		      float *out, struct fx_err *err)
{
	struct fx_qwen_sample_params sp;
	int64_t nt, nn = 0;
	bool all, nall = true;
	int ret;

	fx_qwen_sample_params_init(&sp);
	if (par->width > 0) {
		sp.width = par->width;
		sp.height = par->height;
	}
	if (par->steps > 0)
		sp.steps = par->steps;
	if (par->guidance >= 0)
		sp.true_cfg = par->guidance;
	sp.seed = par->seed;
	if (r->hooked && r->h.step_begin) {
		sp.step_begin = r->h.step_begin;
		sp.step_ctx = r->h.ctx;
	}
	if ((ret = prompt_rows(r, r->pe, r->pm, p, r->txt, r->mask, &nt, &all, err)) < 0 ||
	    (r->ne && (ret = prompt_rows(r, r->ne, r->nm, p, r->neg, r->negmask, &nn, &nall,
					  err)) < 0))
		return ret;
	return fx_qwen_sample_run(r->f, &sp, r->txt, all ? NULL : r->mask, nt, r->ne ? r->neg : NULL,
				  nall ? NULL : r->negmask, nn, out, err);
}

static int run_linear_dense(struct fx_runner *r, const struct fx_group *g, const float *x,
			    int64_t m, float *y, struct fx_err *err)
{
	return fx_dit_linear_dense(fx_qwen_linear(r->f), g, x, m, y, err);
}

const struct fx_runner_ops fx_qwen_runner = {
	.open = run_open,
	.free = run_free,
	.defaults = run_defaults,
	.tokens = run_tokens,
	.set_device = run_set_device,
	.set_hooks = run_set_hooks,
	.sample = run_sample,
	.linear_dense = run_linear_dense,
};
