/* FLUX.1 transformer forward in f32 (flux-transformer.md §3.5–3.9). The
 * residual stream is one (nt + ni, D) array, text rows first, so the
 * double blocks work on its two row ranges and the single blocks on all. */
#include "fx-flux.h"

#include "../kernels/fx-ops.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EPS 1e-6f
#define ROPE_THETA 10000.0
#define NAME_MAX_ 160

enum {
	DG_NORM1, DG_NORM1_CTX, DG_QKV, DG_QKV_CTX, DG_OUT, DG_OUT_CTX,
	DG_FC1, DG_FC2, DG_CFC1, DG_CFC2, DG_COUNT
};
enum { SG_NORM, SG_QKV, SG_FC1, SG_OUT, SG_FC2, SG_COUNT };

/* fused name, n and k in units of D (0: mlp hidden F) */
static const struct gspec { const char *name; int n, k; } dspec[DG_COUNT] = {
	{ "norm1.linear", 6, 1 }, { "norm1_context.linear", 6, 1 },
	{ "qkv_proj", 3, 1 }, { "qkv_proj_context", 3, 1 },
	{ "out_proj", 1, 1 }, { "out_proj_context", 1, 1 },
	{ "mlp_fc1", 0, 1 }, { "mlp_fc2", 1, 0 },
	{ "mlp_context_fc1", 0, 1 }, { "mlp_context_fc2", 1, 0 },
}, sspec[SG_COUNT] = {
	{ "norm.linear", 3, 1 }, { "qkv_proj", 3, 1 }, { "mlp_fc1", 0, 1 },
	{ "out_proj", 1, 1 }, { "mlp_fc2", 1, 0 },
};

static const char *const dnorm[4] = {
	"attn.norm_q.weight", "attn.norm_k.weight",
	"attn.norm_added_q.weight", "attn.norm_added_k.weight",
};

#define P_TIME1 "time_text_embed.timestep_embedder.linear_1"
#define P_TIME2 "time_text_embed.timestep_embedder.linear_2"
#define P_GUID1 "time_text_embed.guidance_embedder.linear_1"
#define P_GUID2 "time_text_embed.guidance_embedder.linear_2"
#define P_TEXT1 "time_text_embed.text_embedder.linear_1"
#define P_TEXT2 "time_text_embed.text_embedder.linear_2"

struct fx_flux {
	const struct fx_model *m;
	struct fx_model_config c;
	struct fx_flux_hooks hooks;
	const struct fx_group **dg;     /* num_double x DG_COUNT */
	const struct fx_group **sg;     /* num_single x SG_COUNT */
	int temb_width;                 /* sinusoid width (256) */
	/* widened weights, grown on demand */
	float *w, *b;
	size_t wcap, bcap;
	/* per-forward vectors */
	float *temb, *stemb, *mod, *emb, *tmp, *norms;
	/* activations for up to cap tokens */
	int64_t cap;
	float *x, *a, *qkv, *o, *t, *h, *cs, *sn, *ids;
};

static float bf16r(float v)
{
	return fx_bf16_to_f32(fx_f32_to_bf16(v));
}

float fx_flux_timestep(float sigma)
{
	float t = bf16r(sigma * 1000.0f);   /* scheduler timestep, to bf16 */

	t = bf16r(t / 1000.0f);              /* pipeline: timestep / 1000 */
	return bf16r(t * 1000.0f);           /* transformer: · 1000 */
}

float fx_flux_guidance(float guidance)
{
	return bf16r(bf16r(guidance) * 1000.0f);
}

static int check_plain(const struct fx_model *m, const char *name, int64_t n, int64_t k,
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

static int check_plain_linear(const struct fx_model *m, const char *base, int64_t n,
			      int64_t k, struct fx_err *err)
{
	char nm[NAME_MAX_];
	int ret;

	snprintf(nm, sizeof(nm), "%s.weight", base);
	if ((ret = check_plain(m, nm, n, k, err)) < 0)
		return ret;
	snprintf(nm, sizeof(nm), "%s.bias", base);
	return check_plain(m, nm, n, 0, err);
}

static int find_groups(struct fx_flux *f, bool single, int nblk, const struct gspec *spec,
		       int ng, const struct fx_group **dst, struct fx_err *err)
{
	int64_t D = f->c.hidden, F = f->c.mlp_hidden;
	char pre[64], nm[NAME_MAX_];

	for (int i = 0; i < nblk; i++) {
		fx_block_prefix(pre, sizeof(pre), single, i);
		for (int j = 0; j < ng; j++) {
			const struct fx_group *g;
			int64_t n = spec[j].n ? spec[j].n * D : F, k = spec[j].k ? D : F;

			snprintf(nm, sizeof(nm), "%s.%s", pre, spec[j].name);
			g = fx_model_find_group(f->m, nm);
			if (!g || g->n != n || g->k != k)
				return fx_error(err, FX_E_FORMAT,
						"model has no fused group '%s' of %lld x %lld", nm,
						(long long)n, (long long)k);
			dst[i * ng + j] = g;
		}
	}
	return 0;
}

static int check_model(struct fx_flux *f, struct fx_err *err)
{
	const struct fx_model *m = f->m;
	const struct fx_model_config *c = &f->c;
	int64_t D = c->hidden;
	char pre[64], nm[NAME_MAX_];
	const struct fx_tensor *t;
	int ret;

	if (c->hidden <= 0 || c->heads <= 0 || c->head_dim <= 0 || c->head_dim % 2 ||
	    c->heads * c->head_dim != c->hidden ||
	    c->axes[0] + c->axes[1] + c->axes[2] != c->head_dim)
		return fx_error(err, FX_E_FORMAT, "bad model config: hidden %d, %d heads of %d, axes [%d,%d,%d]",
				c->hidden, c->heads, c->head_dim, c->axes[0], c->axes[1], c->axes[2]);
	t = fx_model_plain(m, P_TIME1 ".weight");
	if (!t || t->ndim != 2 || t->shape[1] <= 0 || t->shape[1] % 2)
		return fx_error(err, FX_E_FORMAT, "model has no tensor '%s' of an even width",
				P_TIME1 ".weight");
	f->temb_width = (int)t->shape[1];
	if ((ret = check_plain_linear(m, "x_embedder", D, c->in_channels, err)) < 0 ||
	    (ret = check_plain_linear(m, "context_embedder", D, c->joint_dim, err)) < 0 ||
	    (ret = check_plain_linear(m, P_TIME1, D, f->temb_width, err)) < 0 ||
	    (ret = check_plain_linear(m, P_TIME2, D, D, err)) < 0 ||
	    (ret = check_plain_linear(m, P_TEXT1, D, c->pooled_dim, err)) < 0 ||
	    (ret = check_plain_linear(m, P_TEXT2, D, D, err)) < 0 ||
	    (ret = check_plain_linear(m, "norm_out.linear", 2 * D, D, err)) < 0 ||
	    (ret = check_plain_linear(m, "proj_out", c->out_channels, D, err)) < 0)
		return ret;
	if (c->guidance &&
	    ((ret = check_plain_linear(m, P_GUID1, D, f->temb_width, err)) < 0 ||
	     (ret = check_plain_linear(m, P_GUID2, D, D, err)) < 0))
		return ret;
	for (int i = 0; i < c->num_double + c->num_single; i++) {
		bool single = i >= c->num_double;

		fx_block_prefix(pre, sizeof(pre), single, single ? i - c->num_double : i);
		for (int j = 0; j < (single ? 2 : 4); j++) {
			snprintf(nm, sizeof(nm), "%s.%s", pre, dnorm[j]);
			if ((ret = check_plain(m, nm, c->head_dim, 0, err)) < 0)
				return ret;
		}
	}
	if ((ret = find_groups(f, false, c->num_double, dspec, DG_COUNT, f->dg, err)) < 0)
		return ret;
	return find_groups(f, true, c->num_single, sspec, SG_COUNT, f->sg, err);
}

int fx_flux_new(struct fx_flux **out, const struct fx_model *m, struct fx_err *err)
{
	struct fx_flux *f;
	int64_t D;
	int ret = 0;

	*out = NULL;
	if (!(f = calloc(1, sizeof(*f))))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	f->m = m;
	f->c = *fx_model_config(m);
	D = f->c.hidden;
	f->dg = calloc((size_t)(f->c.num_double > 0 ? f->c.num_double : 1) * DG_COUNT, sizeof(*f->dg));
	f->sg = calloc((size_t)(f->c.num_single > 0 ? f->c.num_single : 1) * SG_COUNT, sizeof(*f->sg));
	if (!f->dg || !f->sg) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = check_model(f, err)) < 0)
		goto out;
	f->temb = malloc((size_t)D * sizeof(float));
	f->stemb = malloc((size_t)D * sizeof(float));
	f->mod = malloc((size_t)(12 * D) * sizeof(float));
	f->emb = malloc((size_t)f->temb_width * sizeof(float));
	f->tmp = malloc((size_t)D * sizeof(float));
	f->norms = malloc((size_t)(4 * f->c.head_dim) * sizeof(float));
	if (!f->temb || !f->stemb || !f->mod || !f->emb || !f->tmp || !f->norms)
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
out:
	if (ret < 0)
		fx_flux_free(f);
	else
		*out = f;
	return ret;
}

static void free_acts(struct fx_flux *f)
{
	free(f->x);
	free(f->a);
	free(f->qkv);
	free(f->o);
	free(f->t);
	free(f->h);
	free(f->cs);
	free(f->sn);
	free(f->ids);
	f->x = f->a = f->qkv = f->o = f->t = f->h = f->cs = f->sn = f->ids = NULL;
	f->cap = 0;
}

void fx_flux_free(struct fx_flux *f)
{
	if (!f)
		return;
	free_acts(f);
	free(f->dg);
	free(f->sg);
	free(f->w);
	free(f->b);
	free(f->temb);
	free(f->stemb);
	free(f->mod);
	free(f->emb);
	free(f->tmp);
	free(f->norms);
	free(f);
}

const struct fx_model *fx_flux_model(const struct fx_flux *f)
{
	return f->m;
}

void fx_flux_set_hooks(struct fx_flux *f, const struct fx_flux_hooks *h)
{
	if (h)
		f->hooks = *h;
	else
		memset(&f->hooks, 0, sizeof(f->hooks));
}

static int ensure_acts(struct fx_flux *f, int64_t n, struct fx_err *err)
{
	size_t D = (size_t)f->c.hidden, F = (size_t)f->c.mlp_hidden, N = (size_t)n;
	size_t half = (size_t)f->c.head_dim / 2;

	if (n <= f->cap)
		return 0;
	free_acts(f);
	f->x = malloc(N * D * sizeof(float));
	f->a = malloc(N * D * sizeof(float));
	f->qkv = malloc(N * 3 * D * sizeof(float));
	f->o = malloc(N * D * sizeof(float));
	f->t = malloc(N * D * sizeof(float));
	f->h = malloc(N * F * sizeof(float));
	f->cs = malloc(N * half * sizeof(float));
	f->sn = malloc(N * half * sizeof(float));
	f->ids = malloc(N * 3 * sizeof(float));
	if (!f->x || !f->a || !f->qkv || !f->o || !f->t || !f->h || !f->cs || !f->sn || !f->ids) {
		free_acts(f);
		return fx_error(err, FX_E_NOMEM, "out of memory for the activations of %lld tokens",
				(long long)n);
	}
	f->cap = n;
	return 0;
}

static int ensure_w(struct fx_flux *f, size_t nw, size_t nb, struct fx_err *err)
{
	if (nw > f->wcap) {
		free(f->w);
		if (!(f->w = malloc(nw * sizeof(float)))) {
			f->wcap = 0;
			return fx_error(err, FX_E_NOMEM, "out of memory for a %zu-value weight", nw);
		}
		f->wcap = nw;
	}
	if (nb > f->bcap) {
		free(f->b);
		if (!(f->b = malloc(nb * sizeof(float)))) {
			f->bcap = 0;
			return fx_error(err, FX_E_NOMEM, "out of memory");
		}
		f->bcap = nb;
	}
	return 0;
}

int fx_flux_linear_dense(struct fx_flux *f, const struct fx_group *g, const float *x,
			 int64_t m, float *y, struct fx_err *err)
{
	int ret;

	if ((ret = ensure_w(f, (size_t)(g->n * g->k), (size_t)g->n, err)) < 0)
		return ret;
	if ((ret = fx_model_group_f32(f->m, g, f->w, f->b, err)) < 0)
		return ret;
	fx_ops_linear(y, x, f->w, f->b, m, g->n, g->k);
	return 0;
}

static int group_linear(struct fx_flux *f, const struct fx_group *g, const float *x, int64_t m,
			float *y, struct fx_err *err)
{
	int ret;

	if (m <= 0)
		return 0;
	if (f->hooks.capture && (ret = f->hooks.capture(f->hooks.ctx, g, x, m, err)) < 0)
		goto fail;
	if (!f->hooks.linear)
		return fx_flux_linear_dense(f, g, x, m, y, err);
	if ((ret = f->hooks.linear(f->hooks.ctx, g, x, m, y, err)) < 0)
		goto fail;
	return 0;
fail:
	if (err && !err->code)
		fx_error(err, ret, "hook failed on '%s'", g->name);
	return ret;
}

/* y (m, n) = x · Wᵀ + b of a plain linear "<base>.weight"/"<base>.bias". */
static int plain_linear(struct fx_flux *f, const char *base, const float *x, int64_t m,
			float *y, struct fx_err *err)
{
	char wn[NAME_MAX_], bn[NAME_MAX_];
	const struct fx_tensor *t;
	int64_t n, k;
	int ret;

	snprintf(wn, sizeof(wn), "%s.weight", base);
	snprintf(bn, sizeof(bn), "%s.bias", base);
	t = fx_model_plain(f->m, wn);   /* present: checked in fx_flux_new */
	n = t->shape[0];
	k = t->shape[1];
	if ((ret = ensure_w(f, (size_t)(n * k), (size_t)n, err)) < 0 ||
	    (ret = fx_model_plain_f32(f->m, wn, f->w, err)) < 0 ||
	    (ret = fx_model_plain_f32(f->m, bn, f->b, err)) < 0)
		return ret;
	fx_ops_linear(y, x, f->w, f->b, m, n, k);
	return 0;
}

/* MLP(u) = Linear2(SiLU(Linear1(u))) into y (D). */
static int embed_mlp(struct fx_flux *f, const char *l1, const char *l2, const float *u,
		     float *y, struct fx_err *err)
{
	int ret;

	if ((ret = plain_linear(f, l1, u, 1, f->tmp, err)) < 0)
		return ret;
	fx_ops_silu(f->tmp, f->tmp, (size_t)f->c.hidden);
	return plain_linear(f, l2, f->tmp, 1, y, err);
}

/* temb = MLP_time(E(t)) + MLP_guid(E(g)) + MLP_text(pooled); stemb = SiLU(temb). */
static int conditioning(struct fx_flux *f, const struct fx_flux_input *in, struct fx_err *err)
{
	size_t D = (size_t)f->c.hidden;
	int ret;

	fx_ops_timestep_embed(f->emb, fx_flux_timestep(in->sigma), f->temb_width);
	if ((ret = embed_mlp(f, P_TIME1, P_TIME2, f->emb, f->temb, err)) < 0)
		return ret;
	if (f->c.guidance) {
		fx_ops_timestep_embed(f->emb, fx_flux_guidance(in->guidance), f->temb_width);
		if ((ret = embed_mlp(f, P_GUID1, P_GUID2, f->emb, f->mod, err)) < 0)
			return ret;
		fx_ops_add(f->temb, f->mod, D);
	}
	if ((ret = embed_mlp(f, P_TEXT1, P_TEXT2, in->pooled, f->mod, err)) < 0)
		return ret;
	fx_ops_add(f->temb, f->mod, D);
	fx_ops_silu(f->stemb, f->temb, D);
	return 0;
}

/* Loads norm scales "<prefix>.<names[j]>" into f->norms + j·hd. */
static int load_norms(struct fx_flux *f, bool single, int blk, int count, struct fx_err *err)
{
	char pre[64], nm[NAME_MAX_];
	int ret;

	fx_block_prefix(pre, sizeof(pre), single, blk);
	for (int j = 0; j < count; j++) {
		snprintf(nm, sizeof(nm), "%s.%s", pre, dnorm[j]);
		if ((ret = fx_model_plain_f32(f->m, nm, f->norms + j * f->c.head_dim, err)) < 0)
			return ret;
	}
	return 0;
}

/* QK RMSNorm of rows [r0, r0+m) of the qkv buffer with scales gq, gk. */
static void qk_norm(struct fx_flux *f, int64_t r0, int64_t m, const float *gq, const float *gk)
{
	int64_t D = f->c.hidden, ld = 3 * D;

	fx_ops_rmsnorm_heads(f->qkv + r0 * ld, ld, m, f->c.heads, f->c.head_dim, gq, EPS);
	fx_ops_rmsnorm_heads(f->qkv + r0 * ld + D, ld, m, f->c.heads, f->c.head_dim, gk, EPS);
}

/* RoPE on q and k of all n rows, then attention into f->o. */
static int rope_attention(struct fx_flux *f, int64_t n, struct fx_err *err)
{
	int64_t D = f->c.hidden, ld = 3 * D;
	int H = f->c.heads, hd = f->c.head_dim;

	fx_ops_rope_apply(f->qkv, ld, n, H, hd, f->cs, f->sn);
	fx_ops_rope_apply(f->qkv + D, ld, n, H, hd, f->cs, f->sn);
	return fx_ops_attention(f->o, D, f->qkv, f->qkv + D, f->qkv + 2 * D, ld, n, H, hd, err);
}

static int double_block(struct fx_flux *f, int blk, int64_t nt, int64_t ni, struct fx_err *err)
{
	const struct fx_group *const *g = f->dg + (size_t)blk * DG_COUNT;
	int64_t D = f->c.hidden, F = f->c.mlp_hidden, hd = f->c.head_dim;
	float *xt = f->x, *xi = f->x + nt * D, *at = f->a, *ai = f->a + nt * D;
	float *tt = f->t, *ti = f->t + nt * D;
	float *mi = f->mod, *mt = f->mod + 6 * D;   /* shift1 scale1 gate1 shift2 scale2 gate2 */
	int ret;

	if ((ret = group_linear(f, g[DG_NORM1], f->stemb, 1, mi, err)) < 0 ||
	    (ret = group_linear(f, g[DG_NORM1_CTX], f->stemb, 1, mt, err)) < 0)
		return ret;
	/* attention */
	fx_ops_layernorm_mod(ai, xi, ni, D, mi, mi + D, EPS);
	fx_ops_layernorm_mod(at, xt, nt, D, mt, mt + D, EPS);
	if ((ret = group_linear(f, g[DG_QKV], ai, ni, f->qkv + nt * 3 * D, err)) < 0 ||
	    (ret = group_linear(f, g[DG_QKV_CTX], at, nt, f->qkv, err)) < 0 ||
	    (ret = load_norms(f, false, blk, 4, err)) < 0)
		return ret;
	qk_norm(f, nt, ni, f->norms, f->norms + hd);
	qk_norm(f, 0, nt, f->norms + 2 * hd, f->norms + 3 * hd);
	if ((ret = rope_attention(f, nt + ni, err)) < 0 ||
	    (ret = group_linear(f, g[DG_OUT], f->o + nt * D, ni, ti, err)) < 0 ||
	    (ret = group_linear(f, g[DG_OUT_CTX], f->o, nt, tt, err)) < 0)
		return ret;
	fx_ops_gated_add(xi, ti, mi + 2 * D, ni, D);
	fx_ops_gated_add(xt, tt, mt + 2 * D, nt, D);
	/* image MLP */
	fx_ops_layernorm_mod(ai, xi, ni, D, mi + 3 * D, mi + 4 * D, EPS);
	if ((ret = group_linear(f, g[DG_FC1], ai, ni, f->h, err)) < 0)
		return ret;
	fx_ops_gelu_tanh(f->h, (size_t)(ni * F));
	if ((ret = group_linear(f, g[DG_FC2], f->h, ni, ti, err)) < 0)
		return ret;
	fx_ops_gated_add(xi, ti, mi + 5 * D, ni, D);
	/* text MLP */
	fx_ops_layernorm_mod(at, xt, nt, D, mt + 3 * D, mt + 4 * D, EPS);
	if ((ret = group_linear(f, g[DG_CFC1], at, nt, f->h, err)) < 0)
		return ret;
	fx_ops_gelu_tanh(f->h, (size_t)(nt * F));
	if ((ret = group_linear(f, g[DG_CFC2], f->h, nt, tt, err)) < 0)
		return ret;
	fx_ops_gated_add(xt, tt, mt + 5 * D, nt, D);
	return 0;
}

static int single_block(struct fx_flux *f, int blk, int64_t n, struct fx_err *err)
{
	const struct fx_group *const *g = f->sg + (size_t)blk * SG_COUNT;
	int64_t D = f->c.hidden, F = f->c.mlp_hidden, hd = f->c.head_dim;
	float *md = f->mod;   /* shift scale gate */
	int ret;

	if ((ret = group_linear(f, g[SG_NORM], f->stemb, 1, md, err)) < 0)
		return ret;
	fx_ops_layernorm_mod(f->a, f->x, n, D, md, md + D, EPS);
	if ((ret = group_linear(f, g[SG_QKV], f->a, n, f->qkv, err)) < 0 ||
	    (ret = group_linear(f, g[SG_FC1], f->a, n, f->h, err)) < 0 ||
	    (ret = load_norms(f, true, blk, 2, err)) < 0)
		return ret;
	qk_norm(f, 0, n, f->norms, f->norms + hd);
	if ((ret = rope_attention(f, n, err)) < 0)
		return ret;
	fx_ops_gelu_tanh(f->h, (size_t)(n * F));
	/* proj_out([o, u]) = out_proj(o) + mlp_fc2(u); f->a is free now */
	if ((ret = group_linear(f, g[SG_OUT], f->o, n, f->t, err)) < 0 ||
	    (ret = group_linear(f, g[SG_FC2], f->h, n, f->a, err)) < 0)
		return ret;
	fx_ops_add(f->t, f->a, (size_t)(n * D));
	fx_ops_gated_add(f->x, f->t, md + 2 * D, n, D);
	return 0;
}

static int check_input(const struct fx_flux *f, const struct fx_flux_input *in, struct fx_err *err)
{
	if (in->ni <= 0 || in->nt < 0 || in->ni > ((int64_t)1 << 24) || in->nt > ((int64_t)1 << 24))
		return fx_error(err, FX_E_ARG, "bad token counts: %lld image, %lld text",
				(long long)in->ni, (long long)in->nt);
	if (!in->img || !in->img_ids || !in->pooled || (in->nt && !in->txt))
		return fx_error(err, FX_E_ARG, "missing forward input");
	if (f->c.out_channels <= 0)
		return fx_error(err, FX_E_FORMAT, "model has %d output channels", f->c.out_channels);
	return 0;
}

int fx_flux_forward(struct fx_flux *f, const struct fx_flux_input *in, float *out,
		    struct fx_err *err)
{
	const struct fx_model_config *c = &f->c;
	int64_t D = c->hidden, nt = in->nt, ni = in->ni, n = nt + ni;
	float *md = f->mod;
	int ret;

	if ((ret = check_input(f, in, err)) < 0 || (ret = ensure_acts(f, n, err)) < 0 ||
	    (ret = conditioning(f, in, err)) < 0)
		return ret;
	/* input projections: text rows first, then image rows */
	if ((nt && (ret = plain_linear(f, "context_embedder", in->txt, nt, f->x, err)) < 0) ||
	    (ret = plain_linear(f, "x_embedder", in->img, ni, f->x + nt * D, err)) < 0)
		return ret;
	if (in->txt_ids)
		memcpy(f->ids, in->txt_ids, (size_t)(nt * 3) * sizeof(float));
	else
		memset(f->ids, 0, (size_t)(nt * 3) * sizeof(float));
	memcpy(f->ids + nt * 3, in->img_ids, (size_t)(ni * 3) * sizeof(float));
	fx_ops_rope_table(f->cs, f->sn, f->ids, n, c->axes, ROPE_THETA);

	for (int i = 0; i < c->num_double; i++)
		if ((ret = double_block(f, i, nt, ni, err)) < 0)
			return ret;
	for (int i = 0; i < c->num_single; i++)
		if ((ret = single_block(f, i, n, err)) < 0)
			return ret;

	/* norm_out (diffusers order: scale, then shift) and proj_out */
	if ((ret = plain_linear(f, "norm_out.linear", f->stemb, 1, md, err)) < 0)
		return ret;
	fx_ops_layernorm_mod(f->a, f->x + nt * D, ni, D, md + D, md, EPS);
	return plain_linear(f, "proj_out", f->a, ni, out, err);
}
