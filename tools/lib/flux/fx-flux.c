/* FLUX.1 transformer forward in f32 (flux-transformer.md §3.5–3.9). The
 * residual stream is one (nt + ni, D) array, text rows first, so the
 * double blocks work on its two row ranges and the single blocks on all. */
#include "fx-flux.h"

#include "fx-device.h"
#include "fx-dit-linear.h"
#include "fx-ops-cuda.h"
#include "fx-ops.h"

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
	struct fx_dit_linear lin;       /* hooks, widened weights */
	struct fx_ops_ws attn_ws;       /* attention score tiles, kept between calls */
	const struct fx_group **dg;     /* num_double x DG_COUNT */
	const struct fx_group **sg;     /* num_single x SG_COUNT */
	int temb_width;                 /* sinusoid width (256) */
	/* per-forward vectors */
	float *temb, *stemb, *mod, *emb, *tmp, *norms;
	/* activations for up to cap tokens */
	int64_t cap;
	float *x, *a, *qkv, *o, *t, *h, *cs, *sn, *ids;
	struct flux_cuda *cu;           /* NULL: the CPU path */
};

static void cu_free(struct flux_cuda *c);

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

static int find_groups(struct fx_flux *f, bool single, int nblk, const struct gspec *spec,
		       int ng, const struct fx_group **dst, struct fx_err *err)
{
	int64_t D = f->c.hidden, F = f->c.mlp_hidden;
	char pre[64], nm[NAME_MAX_];

	for (int i = 0; i < nblk; i++) {
		fx_block_prefix(pre, sizeof(pre), single, i);
		for (int j = 0; j < ng; j++) {
			int64_t n = spec[j].n ? spec[j].n * D : F, k = spec[j].k ? D : F;
			int ret;

			snprintf(nm, sizeof(nm), "%s.%s", pre, spec[j].name);
			if ((ret = fx_dit_check_group(f->m, nm, n, k, &dst[i * ng + j], err)) < 0)
				return ret;
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
	if ((ret = fx_dit_check_linear(m, "x_embedder", D, c->in_channels, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, "context_embedder", D, c->joint_dim, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, P_TIME1, D, f->temb_width, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, P_TIME2, D, D, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, P_TEXT1, D, c->pooled_dim, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, P_TEXT2, D, D, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, "norm_out.linear", 2 * D, D, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, "proj_out", c->out_channels, D, err)) < 0)
		return ret;
	if (c->guidance &&
	    ((ret = fx_dit_check_linear(m, P_GUID1, D, f->temb_width, err)) < 0 ||
	     (ret = fx_dit_check_linear(m, P_GUID2, D, D, err)) < 0))
		return ret;
	for (int i = 0; i < c->num_double + c->num_single; i++) {
		bool single = i >= c->num_double;

		fx_block_prefix(pre, sizeof(pre), single, single ? i - c->num_double : i);
		for (int j = 0; j < (single ? 2 : 4); j++) {
			snprintf(nm, sizeof(nm), "%s.%s", pre, dnorm[j]);
			if ((ret = fx_dit_check_plain(m, nm, c->head_dim, 0, err)) < 0)
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
	fx_dit_linear_init(&f->lin, m);
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
	cu_free(f->cu);
	free(f->dg);
	free(f->sg);
	fx_dit_linear_release(&f->lin);
	fx_ops_ws_free(&f->attn_ws);
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

struct fx_dit_linear *fx_flux_linear(struct fx_flux *f)
{
	return &f->lin;
}

void fx_flux_set_hooks(struct fx_flux *f, const struct fx_flux_hooks *h)
{
	struct fx_dit_hooks dh = { 0 };

	if (h) {
		dh.ctx = h->ctx;
		dh.linear = h->linear;
		dh.capture = h->capture;
	}
	fx_dit_linear_set_hooks(&f->lin, &dh);
}

static int ensure_acts(struct fx_flux *f, int64_t n, struct fx_err *err)
{
	size_t D = (size_t)f->c.hidden, F = (size_t)f->c.mlp_hidden, N = (size_t)n;
	size_t half = (size_t)f->c.head_dim / 2;

	if (n <= f->cap)
		return 0;
	free_acts(f);
	f->x = fx_ops_alloc(N * D * sizeof(float));
	f->a = fx_ops_alloc(N * D * sizeof(float));
	f->qkv = fx_ops_alloc(N * 3 * D * sizeof(float));
	f->o = fx_ops_alloc(N * D * sizeof(float));
	f->t = fx_ops_alloc(N * D * sizeof(float));
	f->h = fx_ops_alloc(N * F * sizeof(float));
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

int fx_flux_linear_dense(struct fx_flux *f, const struct fx_group *g, const float *x,
			 int64_t m, float *y, struct fx_err *err)
{
	return fx_dit_linear_dense(&f->lin, g, x, m, y, err);
}

/* temb = MLP_time(E(t)) + MLP_guid(E(g)) + MLP_text(pooled); stemb = SiLU(temb). */
static int conditioning(struct fx_flux *f, const struct fx_flux_input *in, struct fx_err *err)
{
	size_t D = (size_t)f->c.hidden;
	int ret;

	fx_ops_timestep_embed(f->emb, fx_flux_timestep(in->sigma), f->temb_width);
	if ((ret = fx_dit_linear_embed_mlp(&f->lin, P_TIME1, P_TIME2, f->emb, f->tmp, f->temb, err)) < 0)
		return ret;
	if (f->c.guidance) {
		fx_ops_timestep_embed(f->emb, fx_flux_guidance(in->guidance), f->temb_width);
		if ((ret = fx_dit_linear_embed_mlp(&f->lin, P_GUID1, P_GUID2, f->emb, f->tmp, f->mod, err)) < 0)
			return ret;
		fx_ops_add(f->temb, f->mod, D);
	}
	if ((ret = fx_dit_linear_embed_mlp(&f->lin, P_TEXT1, P_TEXT2, in->pooled, f->tmp, f->mod,
						   err)) < 0)
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
	return fx_ops_attention(f->o, D, f->qkv, f->qkv + D, f->qkv + 2 * D, ld, n, H, hd, &f->attn_ws,
				err);
}

static int double_block(struct fx_flux *f, int blk, int64_t nt, int64_t ni, struct fx_err *err)
{
	const struct fx_group *const *g = f->dg + (size_t)blk * DG_COUNT;
	int64_t D = f->c.hidden, F = f->c.mlp_hidden, hd = f->c.head_dim;
	float *xt = f->x, *xi = f->x + nt * D, *at = f->a, *ai = f->a + nt * D;
	float *tt = f->t, *ti = f->t + nt * D;
	float *mi = f->mod, *mt = f->mod + 6 * D;   /* shift1 scale1 gate1 shift2 scale2 gate2 */
	int ret;

	if ((ret = fx_dit_linear_group(&f->lin, g[DG_NORM1], f->stemb, 1, mi, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[DG_NORM1_CTX], f->stemb, 1, mt, err)) < 0)
		return ret;
	/* attention */
	fx_ops_layernorm_mod(ai, xi, ni, D, mi, mi + D, EPS);
	fx_ops_layernorm_mod(at, xt, nt, D, mt, mt + D, EPS);
	if ((ret = fx_dit_linear_group(&f->lin, g[DG_QKV], ai, ni, f->qkv + nt * 3 * D, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[DG_QKV_CTX], at, nt, f->qkv, err)) < 0 ||
	    (ret = load_norms(f, false, blk, 4, err)) < 0)
		return ret;
	qk_norm(f, nt, ni, f->norms, f->norms + hd);
	qk_norm(f, 0, nt, f->norms + 2 * hd, f->norms + 3 * hd);
	if ((ret = rope_attention(f, nt + ni, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[DG_OUT], f->o + nt * D, ni, ti, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[DG_OUT_CTX], f->o, nt, tt, err)) < 0)
		return ret;
	fx_ops_gated_add(xi, ti, mi + 2 * D, ni, D);
	fx_ops_gated_add(xt, tt, mt + 2 * D, nt, D);
	/* image MLP */
	fx_ops_layernorm_mod(ai, xi, ni, D, mi + 3 * D, mi + 4 * D, EPS);
	if ((ret = fx_dit_linear_group(&f->lin, g[DG_FC1], ai, ni, f->h, err)) < 0)
		return ret;
	fx_ops_gelu_tanh(f->h, (size_t)(ni * F));
	if ((ret = fx_dit_linear_group(&f->lin, g[DG_FC2], f->h, ni, ti, err)) < 0)
		return ret;
	fx_ops_gated_add(xi, ti, mi + 5 * D, ni, D);
	/* text MLP */
	fx_ops_layernorm_mod(at, xt, nt, D, mt + 3 * D, mt + 4 * D, EPS);
	if ((ret = fx_dit_linear_group(&f->lin, g[DG_CFC1], at, nt, f->h, err)) < 0)
		return ret;
	fx_ops_gelu_tanh(f->h, (size_t)(nt * F));
	if ((ret = fx_dit_linear_group(&f->lin, g[DG_CFC2], f->h, nt, tt, err)) < 0)
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

	if ((ret = fx_dit_linear_group(&f->lin, g[SG_NORM], f->stemb, 1, md, err)) < 0)
		return ret;
	fx_ops_layernorm_mod(f->a, f->x, n, D, md, md + D, EPS);
	if ((ret = fx_dit_linear_group(&f->lin, g[SG_QKV], f->a, n, f->qkv, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[SG_FC1], f->a, n, f->h, err)) < 0 ||
	    (ret = load_norms(f, true, blk, 2, err)) < 0)
		return ret;
	qk_norm(f, 0, n, f->norms, f->norms + hd);
	if ((ret = rope_attention(f, n, err)) < 0)
		return ret;
	fx_ops_gelu_tanh(f->h, (size_t)(n * F));
	/* proj_out([o, u]) = out_proj(o) + mlp_fc2(u); f->a is free now */
	if ((ret = fx_dit_linear_group(&f->lin, g[SG_OUT], f->o, n, f->t, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[SG_FC2], f->h, n, f->a, err)) < 0)
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

/* ---- CUDA path (fx_flux_set_device) -------------------------------------
 * The same forward with the ops of kernels/fx-ops-cuda.h on device
 * buffers; the conditioning vectors (m = 1) are computed on the host as
 * above and uploaded. */

#define DEV(buf) ((float *)(buf).data_dev)

struct flux_cuda {
	struct fx_cuda_ctx *cx;
	int64_t cap;                            /* tokens the activations hold */
	struct fx_dev_buf x, a, qkv, o, t, h;   /* as the host ones */
	struct fx_dev_buf cs, sn;
	struct fx_dev_buf io;                   /* inputs + ids, then the output */
	struct fx_dev_buf vec;                  /* stemb (D), mod (12 D), norms (4 hd) */
	struct fx_dev_buf w, b;                 /* one linear, f32 or BF16 */
	bool bf16;                              /* BF16 GEMMs for the block linears */
	float *stage;                           /* host copies for the hooks and ids */
	size_t stage_cap;
};

static void cu_free(struct flux_cuda *c)
{
	struct fx_dev_buf *bufs[13];
	size_t nb = 0;

	if (!c)
		return;
	bufs[nb++] = &c->x; bufs[nb++] = &c->a; bufs[nb++] = &c->qkv; bufs[nb++] = &c->o;
	bufs[nb++] = &c->t; bufs[nb++] = &c->h; bufs[nb++] = &c->cs; bufs[nb++] = &c->sn;
	bufs[nb++] = &c->io; bufs[nb++] = &c->vec; bufs[nb++] = &c->w; bufs[nb++] = &c->b;
	fx_cuda_ctx_free(c->cx);   /* waits for queued work first */
	for (size_t i = 0; i < nb; i++)
		fx_cuda_buf_release(bufs[i]);
	free(c->stage);
	free(c);
}

int fx_flux_set_device(struct fx_flux *f, const struct fx_device *dev, struct fx_err *err)
{
	struct flux_cuda *c;
	int ret;

	if (!dev || dev->kind == FX_DEV_CPU) {
		cu_free(f->cu);
		f->cu = NULL;
		return 0;
	}
	if (dev->kind != FX_DEV_CUDA)
		return fx_error(err, FX_E_ARG, "unknown device kind %d", (int)dev->kind);
	if (f->cu && fx_cuda_ctx_device(f->cu->cx) == dev->index)
		return 0;
	if (!(c = calloc(1, sizeof(*c))))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	if ((ret = fx_cuda_ctx_new(&c->cx, dev->index, err)) < 0) {
		free(c);
		return ret;
	}
	cu_free(f->cu);
	f->cu = c;
	return 0;
}

bool fx_flux_set_bf16_gemm(struct fx_flux *f, bool on)
{
	if (!f->cu)
		return false;
	f->cu->bf16 = on;
	return on;
}

static int cu_stage(struct flux_cuda *c, size_t nfloats, struct fx_err *err)
{
	if (nfloats <= c->stage_cap)
		return 0;
	free(c->stage);
	c->stage_cap = 0;
	if (!(c->stage = malloc(nfloats * sizeof(float))))
		return fx_error(err, FX_E_NOMEM, "out of memory for a %zu-value host copy", nfloats);
	c->stage_cap = nfloats;
	return 0;
}

static int cu_ensure(struct flux_cuda *c, struct fx_dev_buf *b, size_t nfloats,
		     struct fx_err *err)
{
	return fx_cuda_buf_reserve(c->cx, b, nfloats * sizeof(float), err);
}

static int cu_ensure_acts(struct fx_flux *f, int64_t n, struct fx_err *err)
{
	struct flux_cuda *c = f->cu;
	size_t D = (size_t)f->c.hidden, F = (size_t)f->c.mlp_hidden, N = (size_t)n;
	size_t half = (size_t)f->c.head_dim / 2;
	int ret;

	if (n <= c->cap)
		return 0;
	c->cap = 0;
	if ((ret = cu_ensure(c, &c->x, N * D, err)) < 0 ||
	    (ret = cu_ensure(c, &c->a, N * D, err)) < 0 ||
	    (ret = cu_ensure(c, &c->qkv, N * 3 * D, err)) < 0 ||
	    (ret = cu_ensure(c, &c->o, N * D, err)) < 0 ||
	    (ret = cu_ensure(c, &c->t, N * D, err)) < 0 ||
	    (ret = cu_ensure(c, &c->h, N * F, err)) < 0 ||
	    (ret = cu_ensure(c, &c->cs, N * half, err)) < 0 ||
	    (ret = cu_ensure(c, &c->sn, N * half, err)) < 0 ||
	    (ret = cu_ensure(c, &c->vec, 13 * D + 4 * (size_t)f->c.head_dim, err)) < 0) {
		if (err)
			fx_error_prefix(err, "activations of %lld tokens", (long long)n);
		return ret;
	}
	c->cap = n;
	return 0;
}

/* Uploads the weight (n,k) in f->lin.w (f32, or BF16 bits with bf16) and
 * the bias (n) in f->lin.b and applies them to x_dev. */
static int cu_linear_w(struct fx_flux *f, const float *x_dev, int64_t m, float *y_dev,
		       int64_t n, int64_t k, bool bf16, struct fx_err *err)
{
	struct flux_cuda *c = f->cu;
	size_t wbytes = (size_t)(n * k) * (bf16 ? sizeof(uint16_t) : sizeof(float));
	int ret;

	if ((ret = cu_ensure(c, &c->w, (size_t)(n * k), err)) < 0 ||
	    (ret = cu_ensure(c, &c->b, (size_t)n, err)) < 0 ||
	    (ret = fx_cuda_upload(c->cx, c->w.data_dev, f->lin.w, wbytes, err)) < 0 ||
	    (ret = fx_cuda_upload(c->cx, c->b.data_dev, f->lin.b, (size_t)n * sizeof(float),
				  err)) < 0)
		return ret;
	if (bf16)
		return fx_ops_linear_bf16_cuda(c->cx, y_dev, x_dev, c->w.data_dev, DEV(c->b), m, n, k,
					       err);
	return fx_ops_linear_cuda(c->cx, y_dev, x_dev, DEV(c->w), DEV(c->b), m, n, k, err);
}

static int cu_group_linear(struct fx_flux *f, const struct fx_group *g, const float *x_dev,
			   int64_t m, float *y_dev, struct fx_err *err)
{
	struct flux_cuda *c = f->cu;
	size_t nx = (size_t)(m * g->k), ny = (size_t)(m * g->n);
	int ret;

	if (m <= 0)
		return 0;
	if (f->lin.hooks.capture || f->lin.hooks.linear) {
		if ((ret = cu_stage(c, nx + (f->lin.hooks.linear ? ny : 0), err)) < 0 ||
		    (ret = fx_cuda_download(c->cx, c->stage, x_dev, nx * sizeof(float), err)) < 0)
			return ret;
		if (f->lin.hooks.capture &&
		    (ret = f->lin.hooks.capture(f->lin.hooks.ctx, g, c->stage, m, err)) < 0)
			goto fail;
		if (f->lin.hooks.linear) {
			if ((ret = f->lin.hooks.linear(f->lin.hooks.ctx, g, c->stage, m, c->stage + nx, err)) < 0)
				goto fail;
			return fx_cuda_upload(c->cx, y_dev, c->stage + nx, ny * sizeof(float), err);
		}
	}
	if ((ret = fx_dit_linear_reserve(&f->lin, (size_t)(g->n * g->k), (size_t)g->n, err)) < 0)
		return ret;
	/* lin.w holds n·k floats: room for the BF16 copy too */
	if (c->bf16)
		ret = fx_model_group_bf16(f->m, g, (uint16_t *)f->lin.w, f->lin.b, err);
	else
		ret = fx_model_group_f32(f->m, g, f->lin.w, f->lin.b, err);
	if (ret < 0)
		return ret;
	return cu_linear_w(f, x_dev, m, y_dev, g->n, g->k, c->bf16, err);
fail:
	if (err && !err->code)
		fx_error(err, ret, "hook failed on '%s'", g->name);
	return ret;
}

static int cu_plain_linear(struct fx_flux *f, const char *base, const float *x_dev, int64_t m,
			   float *y_dev, struct fx_err *err)
{
	int64_t n, k;
	int ret;

	if ((ret = fx_dit_linear_load_plain(&f->lin, base, &n, &k, err)) < 0)
		return ret;
	return cu_linear_w(f, x_dev, m, y_dev, n, k, false, err);
}

/* load_norms on the host, then into the norms slot of the vec buffer. */
static int cu_load_norms(struct fx_flux *f, bool single, int blk, int count, float **norms_dev,
			 struct fx_err *err)
{
	struct flux_cuda *c = f->cu;
	int ret;

	*norms_dev = DEV(c->vec) + 13 * (int64_t)f->c.hidden;
	if ((ret = load_norms(f, single, blk, count, err)) < 0)
		return ret;
	return fx_cuda_upload(c->cx, *norms_dev, f->norms,
			      (size_t)(count * f->c.head_dim) * sizeof(float), err);
}

static int cu_qk_norm(struct fx_flux *f, int64_t r0, int64_t m, const float *gq_dev,
		      const float *gk_dev, struct fx_err *err)
{
	int64_t D = f->c.hidden, ld = 3 * D;
	float *q = DEV(f->cu->qkv) + r0 * ld;
	int ret;

	if ((ret = fx_ops_rmsnorm_heads_cuda(f->cu->cx, q, ld, m, f->c.heads, f->c.head_dim,
					     gq_dev, EPS, err)) < 0)
		return ret;
	return fx_ops_rmsnorm_heads_cuda(f->cu->cx, q + D, ld, m, f->c.heads, f->c.head_dim,
					 gk_dev, EPS, err);
}

static int cu_rope_attention(struct fx_flux *f, int64_t n, struct fx_err *err)
{
	struct flux_cuda *c = f->cu;
	int64_t D = f->c.hidden, ld = 3 * D;
	int H = f->c.heads, hd = f->c.head_dim;
	float *qkv = DEV(c->qkv);
	int ret;

	if ((ret = fx_ops_rope_apply_cuda(c->cx, qkv, ld, n, H, hd, DEV(c->cs), DEV(c->sn), err)) < 0 ||
	    (ret = fx_ops_rope_apply_cuda(c->cx, qkv + D, ld, n, H, hd, DEV(c->cs), DEV(c->sn), err)) < 0)
		return ret;
	return fx_ops_attention_cuda(c->cx, DEV(c->o), D, qkv, qkv + D, qkv + 2 * D, ld, n, H, hd,
				     err);
}

static int cu_double_block(struct fx_flux *f, int blk, int64_t nt, int64_t ni, struct fx_err *err)
{
	const struct fx_group *const *g = f->dg + (size_t)blk * DG_COUNT;
	struct flux_cuda *c = f->cu;
	struct fx_cuda_ctx *cx = c->cx;
	int64_t D = f->c.hidden, F = f->c.mlp_hidden, hd = f->c.head_dim;
	float *xt = DEV(c->x), *xi = DEV(c->x) + nt * D, *at = DEV(c->a), *ai = DEV(c->a) + nt * D;
	float *tt = DEV(c->t), *ti = DEV(c->t) + nt * D, *qkv = DEV(c->qkv), *o = DEV(c->o);
	float *h = DEV(c->h), *stemb = DEV(c->vec), *nrm;
	float *mi = DEV(c->vec) + D, *mt = mi + 6 * D;   /* shift1 scale1 gate1 shift2 scale2 gate2 */
	int ret;

	if ((ret = cu_group_linear(f, g[DG_NORM1], stemb, 1, mi, err)) < 0 ||
	    (ret = cu_group_linear(f, g[DG_NORM1_CTX], stemb, 1, mt, err)) < 0 ||
	    /* attention */
	    (ret = fx_ops_layernorm_mod_cuda(cx, ai, xi, ni, D, mi, mi + D, EPS, err)) < 0 ||
	    (ret = fx_ops_layernorm_mod_cuda(cx, at, xt, nt, D, mt, mt + D, EPS, err)) < 0 ||
	    (ret = cu_group_linear(f, g[DG_QKV], ai, ni, qkv + nt * 3 * D, err)) < 0 ||
	    (ret = cu_group_linear(f, g[DG_QKV_CTX], at, nt, qkv, err)) < 0 ||
	    (ret = cu_load_norms(f, false, blk, 4, &nrm, err)) < 0 ||
	    (ret = cu_qk_norm(f, nt, ni, nrm, nrm + hd, err)) < 0 ||
	    (ret = cu_qk_norm(f, 0, nt, nrm + 2 * hd, nrm + 3 * hd, err)) < 0 ||
	    (ret = cu_rope_attention(f, nt + ni, err)) < 0 ||
	    (ret = cu_group_linear(f, g[DG_OUT], o + nt * D, ni, ti, err)) < 0 ||
	    (ret = cu_group_linear(f, g[DG_OUT_CTX], o, nt, tt, err)) < 0 ||
	    (ret = fx_ops_gated_add_cuda(cx, xi, ti, mi + 2 * D, ni, D, err)) < 0 ||
	    (ret = fx_ops_gated_add_cuda(cx, xt, tt, mt + 2 * D, nt, D, err)) < 0 ||
	    /* image MLP */
	    (ret = fx_ops_layernorm_mod_cuda(cx, ai, xi, ni, D, mi + 3 * D, mi + 4 * D, EPS, err)) < 0 ||
	    (ret = cu_group_linear(f, g[DG_FC1], ai, ni, h, err)) < 0 ||
	    (ret = fx_ops_gelu_tanh_cuda(cx, h, (size_t)(ni * F), err)) < 0 ||
	    (ret = cu_group_linear(f, g[DG_FC2], h, ni, ti, err)) < 0 ||
	    (ret = fx_ops_gated_add_cuda(cx, xi, ti, mi + 5 * D, ni, D, err)) < 0 ||
	    /* text MLP */
	    (ret = fx_ops_layernorm_mod_cuda(cx, at, xt, nt, D, mt + 3 * D, mt + 4 * D, EPS, err)) < 0 ||
	    (ret = cu_group_linear(f, g[DG_CFC1], at, nt, h, err)) < 0 ||
	    (ret = fx_ops_gelu_tanh_cuda(cx, h, (size_t)(nt * F), err)) < 0 ||
	    (ret = cu_group_linear(f, g[DG_CFC2], h, nt, tt, err)) < 0)
		return ret;
	return fx_ops_gated_add_cuda(cx, xt, tt, mt + 5 * D, nt, D, err);
}

static int cu_single_block(struct fx_flux *f, int blk, int64_t n, struct fx_err *err)
{
	const struct fx_group *const *g = f->sg + (size_t)blk * SG_COUNT;
	struct flux_cuda *c = f->cu;
	struct fx_cuda_ctx *cx = c->cx;
	int64_t D = f->c.hidden, F = f->c.mlp_hidden, hd = f->c.head_dim;
	float *x = DEV(c->x), *a = DEV(c->a), *t = DEV(c->t), *h = DEV(c->h), *nrm;
	float *stemb = DEV(c->vec), *md = DEV(c->vec) + D;   /* shift scale gate */
	int ret;

	if ((ret = cu_group_linear(f, g[SG_NORM], stemb, 1, md, err)) < 0 ||
	    (ret = fx_ops_layernorm_mod_cuda(cx, a, x, n, D, md, md + D, EPS, err)) < 0 ||
	    (ret = cu_group_linear(f, g[SG_QKV], a, n, DEV(c->qkv), err)) < 0 ||
	    (ret = cu_group_linear(f, g[SG_FC1], a, n, h, err)) < 0 ||
	    (ret = cu_load_norms(f, true, blk, 2, &nrm, err)) < 0 ||
	    (ret = cu_qk_norm(f, 0, n, nrm, nrm + hd, err)) < 0 ||
	    (ret = cu_rope_attention(f, n, err)) < 0 ||
	    (ret = fx_ops_gelu_tanh_cuda(cx, h, (size_t)(n * F), err)) < 0 ||
	    /* proj_out([o, u]) = out_proj(o) + mlp_fc2(u); a is free now */
	    (ret = cu_group_linear(f, g[SG_OUT], DEV(c->o), n, t, err)) < 0 ||
	    (ret = cu_group_linear(f, g[SG_FC2], h, n, a, err)) < 0 ||
	    (ret = fx_ops_add_cuda(cx, t, a, (size_t)(n * D), err)) < 0)
		return ret;
	return fx_ops_gated_add_cuda(cx, x, t, md + 2 * D, n, D, err);
}

static int cu_forward(struct fx_flux *f, const struct fx_flux_input *in, float *out,
		      struct fx_err *err)
{
	const struct fx_model_config *c = &f->c;
	struct flux_cuda *cu = f->cu;
	struct fx_cuda_ctx *cx = cu->cx;
	int64_t D = c->hidden, nt = in->nt, ni = in->ni, n = nt + ni;
	size_t ntxt = (size_t)(nt * c->joint_dim), nimg = (size_t)(ni * c->in_channels);
	size_t nio = ntxt + nimg + (size_t)(n * 3), nout = (size_t)(ni * c->out_channels);
	float *txt_dev, *img_dev, *ids_dev, *stemb_dev, *md;
	int ret;

	if ((ret = check_input(f, in, err)) < 0 || (ret = cu_ensure_acts(f, n, err)) < 0 ||
	    (ret = cu_ensure(cu, &cu->io, nio > nout ? nio : nout, err)) < 0 ||
	    (ret = cu_stage(cu, (size_t)(n * 3), err)) < 0 ||
	    (ret = conditioning(f, in, err)) < 0)
		goto out;
	txt_dev = DEV(cu->io);
	img_dev = txt_dev + ntxt;
	ids_dev = img_dev + nimg;
	stemb_dev = DEV(cu->vec);
	md = stemb_dev + D;
	if (in->txt_ids)
		memcpy(cu->stage, in->txt_ids, (size_t)(nt * 3) * sizeof(float));
	else
		memset(cu->stage, 0, (size_t)(nt * 3) * sizeof(float));
	memcpy(cu->stage + nt * 3, in->img_ids, (size_t)(ni * 3) * sizeof(float));
	/* inputs, ids and SiLU(temb) to the device; input projections, RoPE table */
	if ((ret = fx_cuda_upload(cx, txt_dev, in->txt, ntxt * sizeof(float), err)) < 0 ||
	    (ret = fx_cuda_upload(cx, img_dev, in->img, nimg * sizeof(float), err)) < 0 ||
	    (ret = fx_cuda_upload(cx, ids_dev, cu->stage, (size_t)(n * 3) * sizeof(float), err)) < 0 ||
	    (ret = fx_cuda_upload(cx, stemb_dev, f->stemb, (size_t)D * sizeof(float), err)) < 0 ||
	    (nt && (ret = cu_plain_linear(f, "context_embedder", txt_dev, nt, DEV(cu->x), err)) < 0) ||
	    (ret = cu_plain_linear(f, "x_embedder", img_dev, ni, DEV(cu->x) + nt * D, err)) < 0 ||
	    (ret = fx_ops_rope_table_cuda(cx, DEV(cu->cs), DEV(cu->sn), ids_dev, n, c->axes,
					  ROPE_THETA, err)) < 0)
		goto out;

	for (int i = 0; i < c->num_double; i++)
		if ((ret = cu_double_block(f, i, nt, ni, err)) < 0)
			goto out;
	for (int i = 0; i < c->num_single; i++)
		if ((ret = cu_single_block(f, i, n, err)) < 0)
			goto out;

	/* norm_out (diffusers order: scale, then shift) and proj_out; io is free */
	if ((ret = cu_plain_linear(f, "norm_out.linear", stemb_dev, 1, md, err)) < 0 ||
	    (ret = fx_ops_layernorm_mod_cuda(cx, DEV(cu->a), DEV(cu->x) + nt * D, ni, D, md + D, md,
					     EPS, err)) < 0 ||
	    (ret = cu_plain_linear(f, "proj_out", DEV(cu->a), ni, DEV(cu->io), err)) < 0)
		goto out;
	ret = fx_cuda_download(cx, out, DEV(cu->io), nout * sizeof(float), err);
out:
	if (ret < 0)   /* queued kernels may use the inputs: finish before returning */
		fx_cuda_sync(cx, NULL);
	return ret;
}

int fx_flux_forward(struct fx_flux *f, const struct fx_flux_input *in, float *out,
		    struct fx_err *err)
{
	const struct fx_model_config *c = &f->c;
	int64_t D = c->hidden, nt = in->nt, ni = in->ni, n = nt + ni;
	float *md = f->mod;
	int ret;

	if (f->cu)
		return cu_forward(f, in, out, err);
	if ((ret = check_input(f, in, err)) < 0 || (ret = ensure_acts(f, n, err)) < 0 ||
	    (ret = conditioning(f, in, err)) < 0)
		return ret;
	/* input projections: text rows first, then image rows */
	if ((nt && (ret = fx_dit_linear_plain(&f->lin, "context_embedder", in->txt, nt, f->x, err)) < 0) ||
	    (ret = fx_dit_linear_plain(&f->lin, "x_embedder", in->img, ni, f->x + nt * D, err)) < 0)
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
	if ((ret = fx_dit_linear_plain(&f->lin, "norm_out.linear", f->stemb, 1, md, err)) < 0)
		return ret;
	fx_ops_layernorm_mod(f->a, f->x + nt * D, ni, D, md + D, md, EPS);
	return fx_dit_linear_plain(&f->lin, "proj_out", f->a, ni, out, err);
}
