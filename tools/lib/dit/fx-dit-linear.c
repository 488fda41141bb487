/* The group executor shared by the diffusion-transformer forwards. */
#include "fx-dit-linear.h"

#include "fx-family.h"
#include "fx-ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NAME_MAX_ 160

void fx_dit_linear_init(struct fx_dit_linear *l, const struct fx_model *m)
{
	memset(l, 0, sizeof(*l));
	l->m = m;
}

void fx_dit_linear_release(struct fx_dit_linear *l)
{
	if (!l)
		return;
	free(l->w);
	free(l->b);
	l->w = l->b = NULL;
	l->wcap = l->bcap = 0;
}

void fx_dit_linear_set_hooks(struct fx_dit_linear *l, const struct fx_dit_hooks *h)
{
	if (h)
		l->hooks = *h;
	else
		memset(&l->hooks, 0, sizeof(l->hooks));
}

void fx_dit_linear_set_run_hooks(struct fx_dit_linear *l, const struct fx_run_hooks *h)
{
	memset(&l->hooks, 0, sizeof(l->hooks));
	if (h) {
		l->hooks.ctx = h->ctx;
		l->hooks.linear = h->linear;
		l->hooks.capture = h->capture;
	}
}

int fx_dit_linear_reserve(struct fx_dit_linear *l, size_t nw, size_t nb, struct fx_err *err)
{
	if (nw > l->wcap) {
		free(l->w);
		if (!(l->w = fx_ops_alloc(nw * sizeof(float)))) {
			l->wcap = 0;
			return fx_error(err, FX_E_NOMEM, "out of memory for a %zu-value weight", nw);
		}
		l->wcap = nw;
	}
	if (nb > l->bcap) {
		free(l->b);
		if (!(l->b = malloc(nb * sizeof(float)))) {
			l->bcap = 0;
			return fx_error(err, FX_E_NOMEM, "out of memory");
		}
		l->bcap = nb;
	}
	return 0;
}

int fx_dit_linear_dense(struct fx_dit_linear *l, const struct fx_group *g, const float *x,
			int64_t m, float *y, struct fx_err *err)
{
	/* merged LoRAs: the raw BF16 weights are not the model's values */
	bool bf16 = m == 1 && !fx_model_group_merged(l->m, g);
	int ret, i;

	/* the weight buffer only when widening (the adaLN groups, the largest,
	 * are read in place) */
	if ((ret = fx_dit_linear_reserve(l, 0, (size_t)g->n, err)) < 0)
		return ret;
	for (i = 0; i < g->nmembers; i++)
		bf16 = bf16 && g->members[i].weight->dtype == FX_BF16 &&
		       g->members[i].weight->ndim == 2 && !g->members[i].wscale;
	/* one token (the modulations): the BF16 weight in place, each read once */
	if (bf16 && (ret = fx_model_group_f32(l->m, g, NULL, l->b, err)) == 0) {
		for (i = 0; i < g->nmembers && bf16; i++) {
			const struct fx_member *mb = &g->members[i];
			const struct fx_tensor *t = mb->weight;
			const unsigned char *w0 = (const unsigned char *)t->data +
						  (size_t)(mb->row0 * t->shape[1] + mb->col0) * 2;

			bf16 = fx_ops_gemv_bf16(y + mb->out_row0, x, w0, t->shape[1],
						l->b + mb->out_row0, mb->nrows, mb->ncols);
		}
		if (bf16)
			return 0;
		/* NaN/Inf somewhere: the widening below names the tensor and element */
	}
	if ((ret = fx_dit_linear_reserve(l, (size_t)(g->n * g->k), (size_t)g->n, err)) < 0 ||
	    (ret = fx_model_group_f32(l->m, g, l->w, l->b, err)) < 0)
		return ret;
	fx_ops_linear(y, x, l->w, l->b, m, g->n, g->k);
	return 0;
}

int fx_dit_linear_group(struct fx_dit_linear *l, const struct fx_group *g, const float *x,
			int64_t m, float *y, struct fx_err *err)
{
	const struct fx_dit_hooks *h = &l->hooks;
	int ret;

	if (m <= 0)
		return 0;
	if (h->capture && (ret = h->capture(h->ctx, g, x, m, err)) < 0)
		goto fail;
	if (!h->linear)
		return fx_dit_linear_dense(l, g, x, m, y, err);
	if ((ret = h->linear(h->ctx, g, x, m, y, err)) < 0)
		goto fail;
	return 0;
fail:
	if (err && !err->code)
		fx_error(err, ret, "hook failed on '%s'", g->name);
	return ret;
}

int fx_dit_linear_load_plain(struct fx_dit_linear *l, const char *base, int64_t *n, int64_t *k,
			     struct fx_err *err)
{
	char wn[NAME_MAX_], bn[NAME_MAX_];
	const struct fx_tensor *t;
	int ret;

	snprintf(wn, sizeof(wn), "%s.weight", base);
	snprintf(bn, sizeof(bn), "%s.bias", base);
	t = fx_model_plain(l->m, wn);   /* present: checked by the forward's _new */
	if (n)
		*n = t->shape[0];
	if (k)
		*k = t->shape[1];
	if ((ret = fx_dit_linear_reserve(l, (size_t)(t->shape[0] * t->shape[1]),
					 (size_t)t->shape[0], err)) < 0 ||
	    (ret = fx_model_plain_f32(l->m, wn, l->w, err)) < 0 ||
	    (ret = fx_model_plain_f32(l->m, bn, l->b, err)) < 0)
		return ret;
	return 0;
}

int fx_dit_linear_plain(struct fx_dit_linear *l, const char *base, const float *x, int64_t m,
			float *y, struct fx_err *err)
{
	int64_t n, k;
	int ret;

	if ((ret = fx_dit_linear_load_plain(l, base, &n, &k, err)) < 0)
		return ret;
	fx_ops_linear(y, x, l->w, l->b, m, n, k);
	return 0;
}

int fx_dit_linear_embed_mlp(struct fx_dit_linear *l, const char *l1, const char *l2,
			    const float *u, float *tmp, float *y, struct fx_err *err)
{
	char wn[NAME_MAX_];
	int ret;

	snprintf(wn, sizeof(wn), "%s.weight", l1);
	if ((ret = fx_dit_linear_plain(l, l1, u, 1, tmp, err)) < 0)
		return ret;
	fx_ops_silu(tmp, tmp, (size_t)fx_model_plain(l->m, wn)->shape[0]);
	return fx_dit_linear_plain(l, l2, tmp, 1, y, err);
}

int fx_dit_check_plain(const struct fx_model *m, const char *name, int64_t n, int64_t k,
		       struct fx_err *err)
{
	const struct fx_tensor *t = fx_model_plain(m, name);
	bool ok = t && t->ndim == (k ? 2 : 1) && t->shape[0] == n && (!k || t->shape[1] == k);

	if (ok)
		return 0;
	if (k)
		return fx_error(err, FX_E_FORMAT, "model has no tensor '%s' of shape [%lld,%lld]",
				name, (long long)n, (long long)k);
	return fx_error(err, FX_E_FORMAT, "model has no tensor '%s' of shape [%lld]", name,
			(long long)n);
}

int fx_dit_check_linear(const struct fx_model *m, const char *base, int64_t n, int64_t k,
			struct fx_err *err)
{
	char nm[NAME_MAX_];
	int ret;

	snprintf(nm, sizeof(nm), "%s.weight", base);
	if ((ret = fx_dit_check_plain(m, nm, n, k, err)) < 0)
		return ret;
	snprintf(nm, sizeof(nm), "%s.bias", base);
	return fx_dit_check_plain(m, nm, n, 0, err);
}

int fx_dit_check_group(const struct fx_model *m, const char *name, int64_t n, int64_t k,
		       const struct fx_group **g, struct fx_err *err)
{
	*g = fx_model_find_group(m, name);
	if (!*g || (*g)->n != n || (*g)->k != k)
		return fx_error(err, FX_E_FORMAT, "model has no fused group '%s' of %lld x %lld",
				name, (long long)n, (long long)k);
	return 0;
}
