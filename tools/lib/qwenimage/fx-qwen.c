/* Qwen-Image transformer forward in f32 (diffusers transformer_qwenimage.py).
 * The residual stream is one (nt + ni, D) array, text rows first (the
 * joint attention's order: [text, image]), so each block works on its two
 * row ranges and the attention on all of them. */
#include "fx-qwen.h"

#include "fx-dit-linear.h"
#include "fx-ops.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EPS 1e-6f            /* LayerNorms, RMSNorms (QK and txt_norm) */
#define ROPE_THETA 10000.0f
#define NAME_MAX_ 160
#define ATTN_TILE 4194304    /* scores of one masked-attention tile, floats */

enum {
	QG_IMG_MOD, QG_TXT_MOD, QG_QKV, QG_ADD_QKV, QG_OUT, QG_ADD_OUT,
	QG_IMG_FC1, QG_IMG_FC2, QG_TXT_FC1, QG_TXT_FC2, QG_COUNT
};

/* fused name, n and k in units of D (0: mlp hidden F) */
static const struct gspec { const char *name; int n, k; } gspec[QG_COUNT] = {
	{ "img_mod.1", 6, 1 }, { "txt_mod.1", 6, 1 },
	{ "attn.to_qkv", 3, 1 }, { "attn.add_qkv_proj", 3, 1 },
	{ "attn.to_out.0", 1, 1 }, { "attn.to_add_out", 1, 1 },
	{ "img_mlp.net.0.proj", 0, 1 }, { "img_mlp.net.2", 1, 0 },
	{ "txt_mlp.net.0.proj", 0, 1 }, { "txt_mlp.net.2", 1, 0 },
};

/* q, k of the image stream, then of the text stream */
static const char *const qknorm[4] = {
	"attn.norm_q.weight", "attn.norm_k.weight",
	"attn.norm_added_q.weight", "attn.norm_added_k.weight",
};

#define P_TIME1 "time_text_embed.timestep_embedder.linear_1"
#define P_TIME2 "time_text_embed.timestep_embedder.linear_2"

struct fx_qwen {
	const struct fx_model *m;
	struct fx_model_config c;
	struct fx_dit_linear lin;       /* hooks, widened weights */
	struct fx_ops_ws attn_ws;       /* attention score tiles, kept between calls */
	const struct fx_group **g;      /* num_double x QG_COUNT */
	int temb_width;                 /* sinusoid width (256) */
	int nout;                       /* proj_out rows: 4 · out_channels */
	/* per-forward vectors */
	float *temb, *stemb, *mod, *emb, *tmp, *norms, *txtw;
	/* activations for up to cap tokens, cap_nt text tokens */
	int64_t cap, cap_nt;
	float *x, *a, *qkv, *o, *t, *h, *cs, *sn, *tin;
	int64_t *keys;                  /* rows of the valid keys (masked attention) */
	float *scores;                  /* masked attention tile */
	size_t scores_cap;
};

static float bf16r(float v)
{
	return fx_bf16_to_f32(fx_f32_to_bf16(v));
}

float fx_qwen_timestep(float sigma)
{
	float t = bf16r(sigma * 1000.0f);   /* scheduler timestep, to bf16 */

	return bf16r(t / 1000.0f);           /* pipeline: timestep / 1000 (bf16) */
}

/* Timesteps(256, flip_sin_to_cos, shift 0, scale 1000) of t as torch
 * computes it in f32: f_i = exp(f32(-ln 1e4 · i) / half), arg = (t·f_i)·1000,
 * [cos …, sin …]. */
static void timestep_embed(float *out, float t, int dim)
{
	int half = dim / 2;
	float c = (float)-log(10000.0);

	for (int i = 0; i < half; i++) {
		float e = (c * (float)i) / (float)half;
		float a = (t * expf(e)) * 1000.0f;

		out[i] = (float)cos((double)a);
		out[half + i] = (float)sin((double)a);
	}
}

/* Angles of one position p over an axis of width dim into cs, sn (dim/2). */
static void rope_axis(float *cs, float *sn, int64_t p, int dim)
{
	for (int i = 0; i < dim / 2; i++) {
		float e = (float)(2 * i) / (float)dim;
		float inv = 1.0f / (float)pow((double)ROPE_THETA, (double)e);
		float ang = (float)p * inv;

		cs[i] = (float)cos((double)ang);
		sn[i] = (float)sin((double)ang);
	}
}

void fx_qwen_rope_table(float *cs, float *sn, int64_t nt, int img_h, int img_w,
			const int axes[3])
{
	int half = (axes[0] + axes[1] + axes[2]) / 2;
	int64_t base = img_h / 2 > img_w / 2 ? img_h / 2 : img_w / 2;
	int64_t h0 = img_h - img_h / 2, w0 = img_w - img_w / 2;   /* ⌈h/2⌉, ⌈w/2⌉ */
	int64_t ni = (int64_t)img_h * img_w;

	#pragma omp parallel for if ((nt + ni) * half > 65536) schedule(static)
	for (int64_t t = 0; t < nt + ni; t++) {
		float *c = cs + t * half, *s = sn + t * half;
		int64_t pos[3];

		if (t < nt) {
			pos[0] = pos[1] = pos[2] = base + t;
		} else {
			pos[0] = 0;
			pos[1] = (t - nt) / img_w - h0;
			pos[2] = (t - nt) % img_w - w0;
		}
		for (int a = 0; a < 3; a++) {
			rope_axis(c, s, pos[a], axes[a]);
			c += axes[a] / 2;
			s += axes[a] / 2;
		}
	}
}

/* ---- model checks -------------------------------------------------------- */

static int check_model(struct fx_qwen *f, struct fx_err *err)
{
	const struct fx_model *m = f->m;
	const struct fx_model_config *c = &f->c;
	int64_t D = c->hidden, F = c->mlp_hidden;
	char pre[64], nm[NAME_MAX_];
	const struct fx_tensor *t;
	int ret;

	if (c->hidden <= 0 || c->heads <= 0 || c->head_dim <= 0 || c->head_dim % 2 ||
	    c->heads * c->head_dim != c->hidden || c->mlp_hidden <= 0 || c->joint_dim <= 0 ||
	    c->in_channels <= 0 || c->out_channels <= 0 || c->num_double < 0 ||
	    c->axes[0] <= 0 || c->axes[1] <= 0 || c->axes[2] <= 0 ||
	    c->axes[0] % 2 || c->axes[1] % 2 || c->axes[2] % 2 ||
	    c->axes[0] + c->axes[1] + c->axes[2] != c->head_dim)
		return fx_error(err, FX_E_FORMAT,
				"bad model config: hidden %d, %d heads of %d, axes [%d,%d,%d]",
				c->hidden, c->heads, c->head_dim, c->axes[0], c->axes[1], c->axes[2]);
	if (c->num_single != 0)
		return fx_error(err, FX_E_FORMAT,
				"a Qwen-Image model has no single blocks (config has %d)",
				c->num_single);
	t = fx_model_plain(m, P_TIME1 ".weight");
	if (!t || t->ndim != 2 || t->shape[1] <= 0 || t->shape[1] % 2)
		return fx_error(err, FX_E_FORMAT, "model has no tensor '%s' of an even width",
				P_TIME1 ".weight");
	f->temb_width = (int)t->shape[1];
	f->nout = 4 * c->out_channels;
	if ((ret = fx_dit_check_linear(m, "img_in", D, c->in_channels, err)) < 0 ||
	    (ret = fx_dit_check_plain(m, "txt_norm.weight", c->joint_dim, 0, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, "txt_in", D, c->joint_dim, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, P_TIME1, D, f->temb_width, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, P_TIME2, D, D, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, "norm_out.linear", 2 * D, D, err)) < 0 ||
	    (ret = fx_dit_check_linear(m, "proj_out", f->nout, D, err)) < 0)
		return ret;
	for (int i = 0; i < c->num_double; i++) {
		fx_block_prefix(pre, sizeof(pre), false, i);
		for (int j = 0; j < 4; j++) {
			snprintf(nm, sizeof(nm), "%s.%s", pre, qknorm[j]);
			if ((ret = fx_dit_check_plain(m, nm, c->head_dim, 0, err)) < 0)
				return ret;
		}
		for (int j = 0; j < QG_COUNT; j++) {
			int64_t n = gspec[j].n ? gspec[j].n * D : F, k = gspec[j].k ? D : F;

			snprintf(nm, sizeof(nm), "%s.%s", pre, gspec[j].name);
			if ((ret = fx_dit_check_group(m, nm, n, k, &f->g[(size_t)i * QG_COUNT + j],
						      err)) < 0)
				return ret;
		}
	}
	return 0;
}

int fx_qwen_new(struct fx_qwen **out, const struct fx_model *m, struct fx_err *err)
{
	struct fx_qwen *f;
	size_t D;
	int ret = 0;

	*out = NULL;
	if (!(f = calloc(1, sizeof(*f))))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	f->m = m;
	f->c = *fx_model_config(m);
	fx_dit_linear_init(&f->lin, m);
	D = (size_t)(f->c.hidden > 0 ? f->c.hidden : 0);
	f->g = calloc((size_t)(f->c.num_double > 0 ? f->c.num_double : 1) * QG_COUNT, sizeof(*f->g));
	if (!f->g) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = check_model(f, err)) < 0)
		goto out;
	f->temb = malloc(D * sizeof(float));
	f->stemb = malloc(D * sizeof(float));
	f->mod = malloc(12 * D * sizeof(float));
	f->emb = malloc((size_t)f->temb_width * sizeof(float));
	f->tmp = malloc(D * sizeof(float));
	f->norms = malloc((size_t)(4 * f->c.head_dim) * sizeof(float));
	f->txtw = malloc((size_t)f->c.joint_dim * sizeof(float));
	if (!f->temb || !f->stemb || !f->mod || !f->emb || !f->tmp || !f->norms || !f->txtw)
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
out:
	if (ret < 0)
		fx_qwen_free(f);
	else
		*out = f;
	return ret;
}

static void free_acts(struct fx_qwen *f)
{
	free(f->x);
	free(f->a);
	free(f->qkv);
	free(f->o);
	free(f->t);
	free(f->h);
	free(f->cs);
	free(f->sn);
	free(f->keys);
	f->x = f->a = f->qkv = f->o = f->t = f->h = f->cs = f->sn = NULL;
	f->keys = NULL;
	f->cap = 0;
}

void fx_qwen_free(struct fx_qwen *f)
{
	if (!f)
		return;
	free_acts(f);
	free(f->tin);
	free(f->scores);
	free(f->g);
	fx_dit_linear_release(&f->lin);
	fx_ops_ws_free(&f->attn_ws);
	free(f->temb);
	free(f->stemb);
	free(f->mod);
	free(f->emb);
	free(f->tmp);
	free(f->norms);
	free(f->txtw);
	free(f);
}

const struct fx_model *fx_qwen_model(const struct fx_qwen *f)
{
	return f->m;
}

struct fx_dit_linear *fx_qwen_linear(struct fx_qwen *f)
{
	return &f->lin;
}

void fx_qwen_set_hooks(struct fx_qwen *f, const struct fx_qwen_hooks *h)
{
	struct fx_dit_hooks dh = { 0 };

	if (h) {
		dh.ctx = h->ctx;
		dh.linear = h->linear;
		dh.capture = h->capture;
	}
	fx_dit_linear_set_hooks(&f->lin, &dh);
}

static int ensure_acts(struct fx_qwen *f, int64_t n, int64_t nt, struct fx_err *err)
{
	size_t D = (size_t)f->c.hidden, F = (size_t)f->c.mlp_hidden, N = (size_t)n;
	size_t half = (size_t)f->c.head_dim / 2;

	if (nt > f->cap_nt) {
		free(f->tin);
		f->cap_nt = 0;
		if (!(f->tin = fx_ops_alloc((size_t)nt * (size_t)f->c.joint_dim * sizeof(float))))
			return fx_error(err, FX_E_NOMEM, "out of memory for %lld text tokens",
					(long long)nt);
		f->cap_nt = nt;
	}
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
	f->keys = malloc(N * sizeof(int64_t));
	if (!f->x || !f->a || !f->qkv || !f->o || !f->t || !f->h || !f->cs || !f->sn || !f->keys) {
		free_acts(f);
		return fx_error(err, FX_E_NOMEM, "out of memory for the activations of %lld tokens",
				(long long)n);
	}
	f->cap = n;
	return 0;
}

int fx_qwen_linear_dense(struct fx_qwen *f, const struct fx_group *g, const float *x,
			 int64_t m, float *y, struct fx_err *err)
{
	return fx_dit_linear_dense(&f->lin, g, x, m, y, err);
}

/* temb = linear_2(SiLU(linear_1(E(t)))); stemb = SiLU(temb). */
static int conditioning(struct fx_qwen *f, float sigma, struct fx_err *err)
{
	int ret;

	timestep_embed(f->emb, fx_qwen_timestep(sigma), f->temb_width);
	if ((ret = fx_dit_linear_embed_mlp(&f->lin, P_TIME1, P_TIME2, f->emb, f->tmp, f->temb,
					   err)) < 0)
		return ret;
	fx_ops_silu(f->stemb, f->temb, (size_t)f->c.hidden);
	return 0;
}

static int load_norms(struct fx_qwen *f, int blk, struct fx_err *err)
{
	char pre[64], nm[NAME_MAX_];
	int ret;

	fx_block_prefix(pre, sizeof(pre), false, blk);
	for (int j = 0; j < 4; j++) {
		snprintf(nm, sizeof(nm), "%s.%s", pre, qknorm[j]);
		if ((ret = fx_model_plain_f32(f->m, nm, f->norms + j * f->c.head_dim, err)) < 0)
			return ret;
	}
	return 0;
}

/* QK RMSNorm of rows [r0, r0+m) of the qkv buffer with scales gq, gk. */
static void qk_norm(struct fx_qwen *f, int64_t r0, int64_t m, const float *gq, const float *gk)
{
	int64_t D = f->c.hidden, ld = 3 * D;

	fx_ops_rmsnorm_heads(f->qkv + r0 * ld, ld, m, f->c.heads, f->c.head_dim, gq, EPS);
	fx_ops_rmsnorm_heads(f->qkv + r0 * ld + D, ld, m, f->c.heads, f->c.head_dim, gk, EPS);
}

/* Attention of all n queries over the nk keys f->keys[] (rows of the qkv
 * buffer) into f->o: the boolean mask of diffusers' SDPA call, whose masked
 * scores are −inf and so weigh exactly 0. Keys and values are gathered into
 * f->a and f->t (free at this point); per head and block of queries one
 * product for the scores, a softmax in f32 with its sum in double, one
 * product with the values. */
static int masked_attention(struct fx_qwen *f, int64_t n, int64_t nk, struct fx_err *err)
{
	int64_t D = f->c.hidden, ld = 3 * D;
	int H = f->c.heads, hd = f->c.head_dim;
	float scale = 1.0f / sqrtf((float)hd);
	float *kc = f->a, *vc = f->t;
	int64_t bq = ATTN_TILE / nk;
	size_t need;

	bq = bq < 1 ? 1 : bq > n ? n : bq;
	need = (size_t)(bq * nk + bq);
	if (need > f->scores_cap) {
		free(f->scores);
		f->scores_cap = 0;
		if (!(f->scores = fx_ops_alloc(need * sizeof(float))))
			return fx_error(err, FX_E_NOMEM, "out of memory for attention scores (%lld x %lld)",
					(long long)bq, (long long)nk);
		f->scores_cap = need;
	}
	#pragma omp parallel for if (nk * D > 65536) schedule(static)
	for (int64_t j = 0; j < nk; j++) {
		memcpy(kc + j * D, f->qkv + f->keys[j] * ld + D, (size_t)D * sizeof(float));
		memcpy(vc + j * D, f->qkv + f->keys[j] * ld + 2 * D, (size_t)D * sizeof(float));
	}
	for (int h = 0; h < H; h++) {
		for (int64_t i0 = 0; i0 < n; i0 += bq) {
			int64_t mb = n - i0 < bq ? n - i0 : bq;
			float *s = f->scores, *inv = f->scores + bq * nk, *oh = f->o + i0 * D + h * hd;

			fx_ops_gemm(false, true, mb, nk, hd, scale, f->qkv + i0 * ld + h * hd, ld,
				    kc + h * hd, D, 0.0f, s, nk);
			#pragma omp parallel for if (mb * nk > 65536) schedule(static)
			for (int64_t r = 0; r < mb; r++) {
				float *row = s + r * nk, mx = row[0];
				double sum = 0.0;

				for (int64_t j = 1; j < nk; j++)
					mx = row[j] > mx ? row[j] : mx;
				for (int64_t j = 0; j < nk; j++) {
					row[j] = expf(row[j] - mx);
					sum += row[j];
				}
				inv[r] = (float)(1.0 / sum);
			}
			fx_ops_gemm(false, false, mb, hd, nk, 1.0f, s, nk, vc + h * hd, D, 0.0f, oh, D);
			for (int64_t r = 0; r < mb; r++)
				for (int j = 0; j < hd; j++)
					oh[r * D + j] *= inv[r];
		}
	}
	return 0;
}

/* RoPE on q and k of all n rows, then the joint attention into f->o; nk < n:
 * only the rows f->keys[0..nk) are keys. */
static int rope_attention(struct fx_qwen *f, int64_t n, int64_t nk, struct fx_err *err)
{
	int64_t D = f->c.hidden, ld = 3 * D;
	int H = f->c.heads, hd = f->c.head_dim;

	fx_ops_rope_apply(f->qkv, ld, n, H, hd, f->cs, f->sn);
	fx_ops_rope_apply(f->qkv + D, ld, n, H, hd, f->cs, f->sn);
	if (nk < n)
		return masked_attention(f, n, nk, err);
	return fx_ops_attention(f->o, D, f->qkv, f->qkv + D, f->qkv + 2 * D, ld, n, H, hd,
				&f->attn_ws, err);
}

static int block(struct fx_qwen *f, int blk, int64_t nt, int64_t ni, int64_t nk,
		 struct fx_err *err)
{
	const struct fx_group *const *g = f->g + (size_t)blk * QG_COUNT;
	int64_t D = f->c.hidden, F = f->c.mlp_hidden, hd = f->c.head_dim;
	float *xt = f->x, *xi = f->x + nt * D, *at = f->a, *ai = f->a + nt * D;
	float *tt = f->t, *ti = f->t + nt * D;
	float *mi = f->mod, *mt = f->mod + 6 * D;   /* shift1 scale1 gate1 shift2 scale2 gate2 */
	int ret;

	if ((ret = fx_dit_linear_group(&f->lin, g[QG_IMG_MOD], f->stemb, 1, mi, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[QG_TXT_MOD], f->stemb, 1, mt, err)) < 0)
		return ret;
	/* attention: x·(1 + scale) + shift after a LayerNorm without affine */
	fx_ops_layernorm_mod(ai, xi, ni, D, mi, mi + D, EPS);
	fx_ops_layernorm_mod(at, xt, nt, D, mt, mt + D, EPS);
	if ((ret = fx_dit_linear_group(&f->lin, g[QG_QKV], ai, ni, f->qkv + nt * 3 * D, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[QG_ADD_QKV], at, nt, f->qkv, err)) < 0 ||
	    (ret = load_norms(f, blk, err)) < 0)
		return ret;
	qk_norm(f, nt, ni, f->norms, f->norms + hd);
	qk_norm(f, 0, nt, f->norms + 2 * hd, f->norms + 3 * hd);
	if ((ret = rope_attention(f, nt + ni, nk, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[QG_OUT], f->o + nt * D, ni, ti, err)) < 0 ||
	    (ret = fx_dit_linear_group(&f->lin, g[QG_ADD_OUT], f->o, nt, tt, err)) < 0)
		return ret;
	fx_ops_gated_add(xi, ti, mi + 2 * D, ni, D);
	fx_ops_gated_add(xt, tt, mt + 2 * D, nt, D);
	/* image MLP (tanh GELU) */
	fx_ops_layernorm_mod(ai, xi, ni, D, mi + 3 * D, mi + 4 * D, EPS);
	if ((ret = fx_dit_linear_group(&f->lin, g[QG_IMG_FC1], ai, ni, f->h, err)) < 0)
		return ret;
	fx_ops_gelu_tanh(f->h, (size_t)(ni * F));
	if ((ret = fx_dit_linear_group(&f->lin, g[QG_IMG_FC2], f->h, ni, ti, err)) < 0)
		return ret;
	fx_ops_gated_add(xi, ti, mi + 5 * D, ni, D);
	/* text MLP */
	fx_ops_layernorm_mod(at, xt, nt, D, mt + 3 * D, mt + 4 * D, EPS);
	if ((ret = fx_dit_linear_group(&f->lin, g[QG_TXT_FC1], at, nt, f->h, err)) < 0)
		return ret;
	fx_ops_gelu_tanh(f->h, (size_t)(nt * F));
	if ((ret = fx_dit_linear_group(&f->lin, g[QG_TXT_FC2], f->h, nt, tt, err)) < 0)
		return ret;
	fx_ops_gated_add(xt, tt, mt + 5 * D, nt, D);
	return 0;
}

static int check_input(const struct fx_qwen_input *in, struct fx_err *err)
{
	if (in->ni <= 0 || in->nt < 0 || in->ni > ((int64_t)1 << 24) || in->nt > ((int64_t)1 << 24))
		return fx_error(err, FX_E_ARG, "bad token counts: %lld image, %lld text",
				(long long)in->ni, (long long)in->nt);
	if (in->img_h <= 0 || in->img_w <= 0 || (int64_t)in->img_h * in->img_w != in->ni)
		return fx_error(err, FX_E_ARG, "image of %dx%d patches does not hold %lld tokens",
				in->img_h, in->img_w, (long long)in->ni);
	if (!in->img || (in->nt && !in->txt))
		return fx_error(err, FX_E_ARG, "missing forward input");
	return 0;
}

int fx_qwen_forward(struct fx_qwen *f, const struct fx_qwen_input *in, float *out,
		    struct fx_err *err)
{
	const struct fx_model_config *c = &f->c;
	int64_t D = c->hidden, nt = in->nt, ni = in->ni, n = nt + ni, nk = 0;
	float *md = f->mod;
	int ret;

	if ((ret = check_input(in, err)) < 0 || (ret = ensure_acts(f, n, nt, err)) < 0 ||
	    (ret = conditioning(f, in->sigma, err)) < 0)
		return ret;
	/* text: RMSNorm (txt_norm) then txt_in; image: img_in */
	if (nt) {
		if ((ret = fx_model_plain_f32(f->m, "txt_norm.weight", f->txtw, err)) < 0)
			return ret;
		memcpy(f->tin, in->txt, (size_t)(nt * c->joint_dim) * sizeof(float));
		fx_ops_rmsnorm_heads(f->tin, c->joint_dim, nt, 1, c->joint_dim, f->txtw, EPS);
		if ((ret = fx_dit_linear_plain(&f->lin, "txt_in", f->tin, nt, f->x, err)) < 0)
			return ret;
	}
	if ((ret = fx_dit_linear_plain(&f->lin, "img_in", in->img, ni, f->x + nt * D, err)) < 0)
		return ret;
	fx_qwen_rope_table(f->cs, f->sn, nt, in->img_h, in->img_w, c->axes);
	/* keys: the unmasked text rows and every image row */
	for (int64_t j = 0; j < n; j++)
		if (j >= nt || !in->txt_mask || in->txt_mask[j] != 0.0f)
			f->keys[nk++] = j;

	for (int i = 0; i < c->num_double; i++)
		if ((ret = block(f, i, nt, ni, nk, err)) < 0)
			return ret;

	/* norm_out (AdaLayerNormContinuous: scale, then shift) and proj_out */
	if ((ret = fx_dit_linear_plain(&f->lin, "norm_out.linear", f->stemb, 1, md, err)) < 0)
		return ret;
	fx_ops_layernorm_mod(f->a, f->x + nt * D, ni, D, md + D, md, EPS);
	return fx_dit_linear_plain(&f->lin, "proj_out", f->a, ni, out, err);
}
