/* The FLUX.1 family: diffusers and BFL naming (flux-transformer.md §2,
 * nunchaku-svdq-format.md §2.1), config, fused groups, the runtime's names. */
#include "fx-flux-family.h"

#include <errno.h>
#include <stddef.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-model.h"

#define BFL_PREFIX "model.diffusion_model."
#define MAX_BLOCKS 10000
#define NAME_CAP 256

static bool is_bfl(const struct fx_model *m)
{
	return fx_model_layout(m) == FX_LAYOUT_BFL;
}

static bool starts(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

/* Picks layout and prefix from the anchor tensors; a Qwen-Image model
 * (img_in plus txt_norm) is not BFL FLUX. */
static int detect(struct fx_model *m, bool last, struct fx_err *err)
{
	static const char *const prefixes[] = { "", BFL_PREFIX };
	const char *src = fx_model_build_src(m), *pre;
	size_t i, k;

	for (k = 0; k < sizeof(prefixes) / sizeof(*prefixes); k++) {
		fx_model_build_set_layout(m, FX_LAYOUT_DIFFUSERS, prefixes[k]);
		if (fx_model_build_find(m, "x_embedder.weight"))
			return 1;
		if (fx_model_build_find(m, "img_in.weight") && !fx_model_build_find(m, "txt_norm.weight")) {
			fx_model_build_set_layout(m, FX_LAYOUT_BFL, prefixes[k]);
			return 1;
		}
	}
	fx_model_build_set_layout(m, FX_LAYOUT_DIFFUSERS, "");
	if (!last)
		return 0;
	for (i = 0; i < fx_model_build_count(m); i++) {
		const char *n = fx_model_build_at(m, i)->name;

		pre = starts(n, BFL_PREFIX) ? BFL_PREFIX : "";
		n += strlen(pre);
		if (starts(n, "double_blocks.") || starts(n, "single_blocks."))
			return fx_error(err, FX_E_FORMAT, "missing tensor '%simg_in.weight' (in '%s')",
					pre, src);
		if (starts(n, "transformer_blocks.") || starts(n, "single_transformer_blocks."))
			return fx_error(err, FX_E_FORMAT,
					"missing tensor '%sx_embedder.weight' (in '%s')", pre, src);
	}
	return fx_error(err, FX_E_FORMAT,
			"'%s' is not a FLUX transformer: no 'x_embedder.weight' or 'img_in.weight'",
			src);
}

/* Blocks from the names: highest index + 1 (gaps show up later as missing
 * tensors); the guidance embedder from its prefix. */
static int count_blocks(struct fx_model *m, struct fx_model_config *c, struct fx_err *err)
{
	bool bfl = is_bfl(m);
	const char *gp = bfl ? "guidance_in." : "time_text_embed.guidance_embedder.";
	const char *pre = fx_model_build_prefix(m);
	size_t i;
	int ret;

	if ((ret = fx_model_build_count_blocks(m, bfl ? "double_blocks" : "transformer_blocks",
					       &c->num_double, err)) < 0 ||
	    (ret = fx_model_build_count_blocks(m, bfl ? "single_blocks"
						   : "single_transformer_blocks",
					       &c->num_single, err)) < 0)
		return ret;
	c->guidance = false;
	for (i = 0; i < fx_model_build_count(m); i++) {
		const char *n = fx_model_build_at(m, i)->name;

		if (starts(n, pre) && starts(n + strlen(pre), gp))
			c->guidance = true;
	}
	return 0;
}

static void default_axes(int hd, int axes[3])
{
	if (hd == 128) {
		axes[0] = 16;
		axes[1] = axes[2] = 56;
	} else {
		/* same proportions as (16,56,56), every dim even */
		axes[1] = axes[2] = 2 * ((7 * hd) / 32);
		axes[0] = hd - 2 * axes[1];
	}
}

static int parse_config(struct fx_model *m, const char *text, const char *p, struct fx_err *err)
{
	struct fx_model_config *c = fx_model_build_config(m);
	json_error_t je;
	json_t *o = json_loads(text, 0, &je), *j;
	int ret = 0, patch;

	if (!o || !json_is_object(o)) {
		ret = o ? fx_error(err, FX_E_FORMAT, "config is not a JSON object (in '%s')", p)
			: fx_error(err, FX_E_FORMAT, "invalid JSON at line %d: %s (in '%s')",
				   je.line, je.text, p);
		goto out;
	}
	j = json_object_get(o, "_class_name");
	if (j && (!json_is_string(j) ||
		  strcmp(json_string_value(j), "FluxTransformer2DModel") != 0)) {
		ret = fx_error(err, FX_E_FORMAT,
			       "config describes '%s', expected FluxTransformer2DModel (in '%s')",
			       json_is_string(j) ? json_string_value(j) : "?", p);
		goto out;
	}
	if ((ret = fx_json_int(o, "patch_size", 1, 1, 1, &patch, p, err)) < 0 ||
	    (ret = fx_json_int(o, "in_channels", 64, 1, 1 << 16, &c->in_channels, p, err)) < 0 ||
	    (ret = fx_json_int(o, "out_channels", c->in_channels, 1, 1 << 16, &c->out_channels, p,
			   err)) < 0 ||
	    (ret = fx_json_int(o, "num_layers", 19, 0, MAX_BLOCKS, &c->num_double, p, err)) < 0 ||
	    (ret = fx_json_int(o, "num_single_layers", 38, 0, MAX_BLOCKS, &c->num_single, p,
			   err)) < 0 ||
	    (ret = fx_json_int(o, "attention_head_dim", 128, 1, 4096, &c->head_dim, p, err)) < 0 ||
	    (ret = fx_json_int(o, "num_attention_heads", 24, 1, 1024, &c->heads, p, err)) < 0 ||
	    (ret = fx_json_int(o, "joint_attention_dim", 4096, 1, 1 << 20, &c->joint_dim, p,
			   err)) < 0 ||
	    (ret = fx_json_int(o, "pooled_projection_dim", 768, 1, 1 << 20, &c->pooled_dim, p,
			   err)) < 0)
		goto out;
	j = json_object_get(o, "guidance_embeds");
	if (j && !json_is_boolean(j) && !json_is_null(j)) {
		ret = fx_error(err, FX_E_FORMAT, "config key 'guidance_embeds' is not a boolean (in '%s')",
			       p);
		goto out;
	}
	c->guidance = j && json_is_true(j);
	c->hidden = c->heads * c->head_dim;
	c->mlp_hidden = 4 * c->hidden;
	if ((ret = fx_json_axes(o, "axes_dims_rope", c->axes, p, err)) == 0)
		default_axes(c->head_dim, c->axes);
	else if (ret > 0)
		ret = 0;
out:
	json_decref(o);
	return ret;
}

static int infer_config(struct fx_model *m, struct fx_err *err)
{
	struct fx_model_config *c = fx_model_build_config(m);
	bool bfl = is_bfl(m);
	const char *xn = bfl ? "img_in.weight" : "x_embedder.weight";
	const struct fx_tensor *x = fx_model_build_find(m, xn);
	int64_t v;
	char sh[64];
	int ret;

	if (x->ndim != 2 || x->shape[0] < 1 || x->shape[0] > (1 << 16) || x->shape[1] < 1 ||
	    x->shape[1] > (1 << 16))
		return fx_error(err, FX_E_FORMAT,
				"tensor '%s' has shape %s, expected [hidden,in_channels] (in '%s')",
				x->name, fx_shape_str(sh, sizeof(sh), x->ndim, x->shape),
				fx_model_build_file(m, x));
	c->hidden = (int)x->shape[0];
	c->in_channels = (int)x->shape[1];
	v = fx_model_build_dim(m, bfl ? "double_blocks.0.img_attn.norm.query_norm.scale"
			  : "transformer_blocks.0.attn.norm_q.weight", 0);
	if (v < 0)
		v = fx_model_build_dim(m, bfl ? "single_blocks.0.norm.query_norm.scale"
				  : "single_transformer_blocks.0.attn.norm_q.weight", 0);
	c->head_dim = v > 0 && v <= 4096 ? (int)v : 128;
	if (c->hidden % c->head_dim)
		return fx_error(err, FX_E_FORMAT,
				"hidden size %d (from '%s') is not a multiple of the head dim %d (in '%s')",
				c->hidden, x->name, c->head_dim, fx_model_build_src(m));
	c->heads = c->hidden / c->head_dim;
	c->mlp_hidden = 4 * c->hidden;
	v = fx_model_build_dim(m, bfl ? "txt_in.weight" : "context_embedder.weight", 1);
	c->joint_dim = v > 0 && v <= (1 << 20) ? (int)v : 4096;
	v = fx_model_build_dim(m, bfl ? "vector_in.in_layer.weight" : "time_text_embed.text_embedder.linear_1.weight",
		   1);
	c->pooled_dim = v > 0 && v <= (1 << 20) ? (int)v : 768;
	v = fx_model_build_dim(m, bfl ? "final_layer.linear.weight" : "proj_out.weight", 0);
	c->out_channels = v > 0 && v <= (1 << 16) ? (int)v : c->in_channels;
	ret = count_blocks(m, c, err);
	if (ret < 0)
		return ret;
	default_axes(c->head_dim, c->axes);
	return 0;
}

/* A plain linear: weight [n,k] and bias [n] under both namings. */
static int add_plain_linear(struct fx_model *m, const char *dbase, const char *bbase, int64_t n,
			    int64_t k, bool swap, struct fx_err *err)
{
	const char *src = is_bfl(m) ? bbase : dbase;
	char dn[NAME_CAP], sn[NAME_CAP];
	int ret;

	snprintf(dn, sizeof(dn), "%s.weight", dbase);
	snprintf(sn, sizeof(sn), "%s.weight", src);
	if ((ret = fx_model_build_plain(m, dn, sn, 2, n, k, swap, err)) < 0)
		return ret;
	snprintf(dn, sizeof(dn), "%s.bias", dbase);
	snprintf(sn, sizeof(sn), "%s.bias", src);
	return fx_model_build_plain(m, dn, sn, 1, n, 0, swap, err);
}


/* Double-block groups in design.md §2 order; n, k in units of D (mlp = 4D). */
static const struct dgroup {
	const char *fused;
	enum fx_group_kind kind;
	int chunks, n, k;
	bool gelu;
	const char *dsrc[3];         /* diffusers members, rows concatenated */
	const char *bsrc;            /* BFL tensor (members are row blocks) */
} dgroups[] = {
	{ "norm1.linear", FX_GROUP_ADALN, 6, 6, 1, false, { "norm1.linear" }, "img_mod.lin" },
	{ "norm1_context.linear", FX_GROUP_ADALN, 6, 6, 1, false, { "norm1_context.linear" },
	  "txt_mod.lin" },
	{ "qkv_proj", FX_GROUP_W4A4, 0, 3, 1, false, { "attn.to_q", "attn.to_k", "attn.to_v" },
	  "img_attn.qkv" },
	{ "qkv_proj_context", FX_GROUP_W4A4, 0, 3, 1, false,
	  { "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj" }, "txt_attn.qkv" },
	{ "out_proj", FX_GROUP_W4A4, 0, 1, 1, false, { "attn.to_out.0" }, "img_attn.proj" },
	{ "out_proj_context", FX_GROUP_W4A4, 0, 1, 1, false, { "attn.to_add_out" },
	  "txt_attn.proj" },
	{ "mlp_fc1", FX_GROUP_W4A4, 0, 4, 1, false, { "ff.net.0.proj" }, "img_mlp.0" },
	{ "mlp_fc2", FX_GROUP_W4A4, 0, 1, 4, true, { "ff.net.2" }, "img_mlp.2" },
	{ "mlp_context_fc1", FX_GROUP_W4A4, 0, 4, 1, false, { "ff_context.net.0.proj" },
	  "txt_mlp.0" },
	{ "mlp_context_fc2", FX_GROUP_W4A4, 0, 1, 4, true, { "ff_context.net.2" }, "txt_mlp.2" },
};

static const char *const dnorms[][2] = {
	{ "attn.norm_q.weight", "img_attn.norm.query_norm.scale" },
	{ "attn.norm_k.weight", "img_attn.norm.key_norm.scale" },
	{ "attn.norm_added_q.weight", "txt_attn.norm.query_norm.scale" },
	{ "attn.norm_added_k.weight", "txt_attn.norm.key_norm.scale" },
};

static const char *const snorms[][2] = {
	{ "attn.norm_q.weight", "norm.query_norm.scale" },
	{ "attn.norm_k.weight", "norm.key_norm.scale" },
};

static int build_double(struct fx_model *m, int i, struct fx_err *err)
{
	bool bfl = is_bfl(m);
	int64_t D = fx_model_build_config(m)->hidden;
	char dp[64], bp[64], nm[NAME_CAP], mn[NAME_CAP];
	size_t gi, j;
	int ret;

	fx_block_prefix(dp, sizeof(dp), false, i);
	snprintf(bp, sizeof(bp), "double_blocks.%d", i);
	for (gi = 0; gi < FX_ARRAY_SIZE(dgroups); gi++) {
		const struct dgroup *d = &dgroups[gi];
		int nm_ = d->dsrc[1] ? 3 : 1;
		int64_t n = d->n * D, k = d->k * D, rows = n / nm_;
		const struct fx_tensor *w = NULL, *b = NULL;
		struct fx_group *g = fx_model_build_group(m, false, i, d->fused, d->kind, n, k, d->chunks,
					       d->gelu);

		if (!g)
			return fx_error(err, FX_E_NOMEM, "out of memory");
		if (bfl) {
			snprintf(nm, sizeof(nm), "%s.%s", bp, d->bsrc);
			if ((ret = fx_model_build_want_linear(m, nm, n, k, &w, &b, err)) < 0)
				return ret;
		}
		for (j = 0; j < (size_t)nm_; j++) {
			snprintf(mn, sizeof(mn), "%s.%s", dp, d->dsrc[j]);
			if (!bfl && (ret = fx_model_build_want_linear(m, mn, rows, k, &w, &b, err)) < 0)
				return ret;
			ret = fx_model_build_member(m, g, mn, w, b, bfl ? (int64_t)j * rows : 0, rows, 0,
					 (int64_t)j * rows, err);
			if (ret < 0)
				return ret;
		}
		/* norm scales sit between qkv_proj_context and out_proj in the
		 * table of the spec; validate them in that place */
		if (gi == 3) {
			for (j = 0; j < FX_ARRAY_SIZE(dnorms); j++) {
				snprintf(mn, sizeof(mn), "%s.%s", dp, dnorms[j][0]);
				snprintf(nm, sizeof(nm), "%s.%s", bp, dnorms[j][1]);
				ret = fx_model_build_plain(m, mn, bfl ? nm : mn, 1, fx_model_build_config(m)->head_dim, 0, false,
						err);
				if (ret < 0)
					return ret;
			}
		}
	}
	return 0;
}

static int build_single(struct fx_model *m, int i, struct fx_err *err)
{
	static const char *const qkv[3] = { "attn.to_q", "attn.to_k", "attn.to_v" };
	bool bfl = is_bfl(m);
	int64_t D = fx_model_build_config(m)->hidden, F = fx_model_build_config(m)->mlp_hidden;
	const struct fx_tensor *w, *b, *l1w = NULL, *l1b = NULL, *l2w, *l2b;
	char dp[64], bp[64], nm[NAME_CAP], mn[NAME_CAP];
	struct fx_group *g;
	int ret;
	int j;

	fx_block_prefix(dp, sizeof(dp), true, i);
	snprintf(bp, sizeof(bp), "single_blocks.%d", i);

	/* norm.linear */
	snprintf(mn, sizeof(mn), "%s.norm.linear", dp);
	snprintf(nm, sizeof(nm), "%s.modulation.lin", bp);
	if ((ret = fx_model_build_want_linear(m, bfl ? nm : mn, 3 * D, D, &w, &b, err)) < 0)
		return ret;
	if (!(g = fx_model_build_group(m, true, i, "norm.linear", FX_GROUP_ADALN, 3 * D, D, 3, false)))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	if ((ret = fx_model_build_member(m, g, mn, w, b, 0, 3 * D, 0, 0, err)) < 0)
		return ret;

	/* qkv_proj (BFL: linear1 rows 0..3D-1) */
	if (bfl) {
		snprintf(nm, sizeof(nm), "%s.linear1", bp);
		if ((ret = fx_model_build_want_linear(m, nm, 3 * D + F, D, &l1w, &l1b, err)) < 0)
			return ret;
	}
	if (!(g = fx_model_build_group(m, true, i, "qkv_proj", FX_GROUP_W4A4, 3 * D, D, 0, false)))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	for (j = 0; j < 3; j++) {
		snprintf(mn, sizeof(mn), "%s.%s", dp, qkv[j]);
		w = l1w;
		b = l1b;
		if (!bfl && (ret = fx_model_build_want_linear(m, mn, D, D, &w, &b, err)) < 0)
			return ret;
		if ((ret = fx_model_build_member(m, g, mn, w, b, bfl ? j * D : 0, D, 0, j * D, err)) < 0)
			return ret;
	}
	for (j = 0; j < 2; j++) {
		snprintf(mn, sizeof(mn), "%s.%s", dp, snorms[j][0]);
		snprintf(nm, sizeof(nm), "%s.%s", bp, snorms[j][1]);
		if ((ret = fx_model_build_plain(m, mn, bfl ? nm : mn, 1, fx_model_build_config(m)->head_dim, 0, false, err)) < 0)
			return ret;
	}

	/* mlp_fc1 (BFL: linear1 rows 3D..) */
	snprintf(mn, sizeof(mn), "%s.proj_mlp", dp);
	w = l1w;
	b = l1b;
	if (!bfl && (ret = fx_model_build_want_linear(m, mn, F, D, &w, &b, err)) < 0)
		return ret;
	if (!(g = fx_model_build_group(m, true, i, "mlp_fc1", FX_GROUP_W4A4, F, D, 0, false)))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	if ((ret = fx_model_build_member(m, g, mn, w, b, bfl ? 3 * D : 0, F, 0, 0, err)) < 0)
		return ret;

	/* proj_out / linear2 split by columns; the bias goes to mlp_fc2 */
	snprintf(mn, sizeof(mn), "%s.proj_out", dp);
	snprintf(nm, sizeof(nm), "%s.linear2", bp);
	if ((ret = fx_model_build_want_linear(m, bfl ? nm : mn, D, D + F, &l2w, &l2b, err)) < 0)
		return ret;
	if (!(g = fx_model_build_group(m, true, i, "out_proj", FX_GROUP_W4A4, D, D, 0, false)))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	if ((ret = fx_model_build_member(m, g, mn, l2w, NULL, 0, D, 0, 0, err)) < 0)
		return ret;
	if (!(g = fx_model_build_group(m, true, i, "mlp_fc2", FX_GROUP_W4A4, D, F, 0, true)))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	return fx_model_build_member(m, g, mn, l2w, l2b, 0, D, D, 0, err);
}

static int build(struct fx_model *m, struct fx_err *err)
{
	const struct fx_model_config *c = fx_model_build_config(m);
	int64_t D = c->hidden;
	int i, ret;

	if ((ret = add_plain_linear(m, "x_embedder", "img_in", D, c->in_channels, false, err)) < 0 ||
	    (ret = add_plain_linear(m, "context_embedder", "txt_in", D, c->joint_dim, false,
				    err)) < 0 ||
	    (ret = add_plain_linear(m, "time_text_embed.timestep_embedder.linear_1",
				    "time_in.in_layer", D, 256, false, err)) < 0 ||
	    (ret = add_plain_linear(m, "time_text_embed.timestep_embedder.linear_2",
				    "time_in.out_layer", D, D, false, err)) < 0)
		return ret;
	if (c->guidance &&
	    ((ret = add_plain_linear(m, "time_text_embed.guidance_embedder.linear_1",
				     "guidance_in.in_layer", D, 256, false, err)) < 0 ||
	     (ret = add_plain_linear(m, "time_text_embed.guidance_embedder.linear_2",
				     "guidance_in.out_layer", D, D, false, err)) < 0))
		return ret;
	if ((ret = add_plain_linear(m, "time_text_embed.text_embedder.linear_1",
				    "vector_in.in_layer", D, c->pooled_dim, false, err)) < 0 ||
	    (ret = add_plain_linear(m, "time_text_embed.text_embedder.linear_2",
				    "vector_in.out_layer", D, D, false, err)) < 0 ||
	    (ret = add_plain_linear(m, "norm_out.linear", "final_layer.adaLN_modulation.1", 2 * D,
				    D, is_bfl(m), err)) < 0 ||
	    (ret = add_plain_linear(m, "proj_out", "final_layer.linear", c->out_channels, D, false,
				    err)) < 0)
		return ret;
	for (i = 0; i < c->num_double; i++)
		if ((ret = build_double(m, i, err)) < 0)
			return ret;
	for (i = 0; i < c->num_single; i++)
		if ((ret = build_single(m, i, err)) < 0)
			return ret;
	return 0;
}

static int config_to_json(const struct fx_model_config *c, char **out, struct fx_err *err)
{
	json_t *o = json_object(), *axes = json_array();
	char *s = NULL, *r = NULL;
	int bad = 0, i, ret = 0;

	*out = NULL;
	for (i = 0; i < 3; i++)
		bad |= json_array_append_new(axes, json_integer(c->axes[i]));
	bad |= json_object_set_new(o, "_class_name", json_string("FluxTransformer2DModel"));
	bad |= json_object_set_new(o, "patch_size", json_integer(1));
	bad |= json_object_set_new(o, "in_channels", json_integer(c->in_channels));
	bad |= json_object_set_new(o, "out_channels", c->out_channels == c->in_channels
				   ? json_null() : json_integer(c->out_channels));
	bad |= json_object_set_new(o, "num_layers", json_integer(c->num_double));
	bad |= json_object_set_new(o, "num_single_layers", json_integer(c->num_single));
	bad |= json_object_set_new(o, "attention_head_dim", json_integer(c->head_dim));
	bad |= json_object_set_new(o, "num_attention_heads", json_integer(c->heads));
	bad |= json_object_set_new(o, "joint_attention_dim", json_integer(c->joint_dim));
	bad |= json_object_set_new(o, "pooled_projection_dim", json_integer(c->pooled_dim));
	bad |= json_object_set_new(o, "guidance_embeds", json_boolean(c->guidance));
	bad |= json_object_set(o, "axes_dims_rope", axes);
	if (!bad)
		s = json_dumps(o, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (!s || asprintf(&r, "%s\n", s) < 0) {
		r = NULL;
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
	}
	free(s);
	json_decref(axes);
	json_decref(o);
	*out = r;
	return ret;
}


/* ---- the synthetic model (fx-synth) ---- */

/* Weight and bias of a file linear `fname` made of diffusers linears. */
static int lin(const struct fx_synth_sink *l, const char *fname, int64_t k, int nparts,
	       const char *const *dnames, const int64_t *rows, bool swap)
{
	static const char *const sfx[2] = { "weight", "bias" };
	char nm[NAME_CAP], pn[4][NAME_CAP];
	const char *parts[4];
	int64_t n = 0;
	int s, p;

	for (p = 0; p < nparts; p++)
		n += rows[p];
	for (s = 0; s < 2; s++) {
		snprintf(nm, sizeof(nm), "%s.%s", fname, sfx[s]);
		for (p = 0; p < nparts; p++) {
			snprintf(pn[p], NAME_CAP, "%s.%s", dnames[p], sfx[s]);
			parts[p] = pn[p];
		}
		if (l->tensor(l->ctx, nm, s ? 1 : 2, n, k, swap, nparts, parts, rows) < 0)
			return -1;
	}
	return 0;
}

/* A linear with the same name in the file and in diffusers naming. */
static int lin1(const struct fx_synth_sink *l, bool bfl, const char *bname, const char *dname, int64_t n,
		int64_t k, bool swap)
{
	return lin(l, bfl ? bname : dname, k, 1, &dname, &n, swap);
}

static int norm1(const struct fx_synth_sink *l, bool bfl, const char *bname, const char *dname,
		 int64_t n)
{
	return l->tensor(l->ctx, bfl ? bname : dname, 1, n, 0, false, 1, &dname, &n);
}

static int synth_tensors(const struct fx_model_config *c, bool bfl, const struct fx_synth_sink *l)
{
	static const char *const dq[] = { "attn.to_q", "attn.to_k", "attn.to_v" };
	static const char *const dc[] = { "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj" };
	int64_t D = c->hidden, F = c->mlp_hidden, hd = c->head_dim;
	char bp[64], dp[64], b[NAME_CAP], d[NAME_CAP];
	const char *names[4];
	char full[4][NAME_CAP];
	int64_t rows[4];
	int i, j, bad = 0;

#define LIN(bn, dn, n, k, swap) do { \
		snprintf(b, sizeof(b), "%s%s", bp, bn); \
		snprintf(d, sizeof(d), "%s%s", dp, dn); \
		bad |= lin1(l, bfl, b, d, n, k, swap); } while (0)
#define NORM(bn, dn) do { \
		snprintf(b, sizeof(b), "%s%s", bp, bn); \
		snprintf(d, sizeof(d), "%s%s", dp, dn); \
		bad |= norm1(l, bfl, b, d, hd); } while (0)

	bp[0] = dp[0] = '\0';
	LIN("img_in", "x_embedder", D, c->in_channels, false);
	LIN("txt_in", "context_embedder", D, c->joint_dim, false);
	LIN("time_in.in_layer", "time_text_embed.timestep_embedder.linear_1", D, 256, false);
	LIN("time_in.out_layer", "time_text_embed.timestep_embedder.linear_2", D, D, false);
	if (c->guidance) {
		LIN("guidance_in.in_layer", "time_text_embed.guidance_embedder.linear_1", D, 256,
		    false);
		LIN("guidance_in.out_layer", "time_text_embed.guidance_embedder.linear_2", D, D,
		    false);
	}
	LIN("vector_in.in_layer", "time_text_embed.text_embedder.linear_1", D, c->pooled_dim,
	    false);
	LIN("vector_in.out_layer", "time_text_embed.text_embedder.linear_2", D, D, false);
	LIN("final_layer.adaLN_modulation.1", "norm_out.linear", 2 * D, D, bfl);
	LIN("final_layer.linear", "proj_out", c->out_channels, D, false);

	for (i = 0; i < c->num_double; i++) {
		snprintf(bp, sizeof(bp), "double_blocks.%d.", i);
		snprintf(dp, sizeof(dp), "transformer_blocks.%d.", i);
		LIN("img_mod.lin", "norm1.linear", 6 * D, D, false);
		LIN("txt_mod.lin", "norm1_context.linear", 6 * D, D, false);
		for (j = 0; j < 3; j++) {
			if (bfl) {
				snprintf(full[j], NAME_CAP, "%s%s", dp, dq[j]);
				names[j] = full[j];
				rows[j] = D;
			} else {
				LIN("", dq[j], D, D, false);
			}
		}
		if (bfl) {
			snprintf(b, sizeof(b), "%simg_attn.qkv", bp);
			bad |= lin(l, b, D, 3, names, rows, false);
		}
		for (j = 0; j < 3; j++) {
			if (bfl) {
				snprintf(full[j], NAME_CAP, "%s%s", dp, dc[j]);
				names[j] = full[j];
			} else {
				LIN("", dc[j], D, D, false);
			}
		}
		if (bfl) {
			snprintf(b, sizeof(b), "%stxt_attn.qkv", bp);
			bad |= lin(l, b, D, 3, names, rows, false);
		}
		NORM("img_attn.norm.query_norm.scale", "attn.norm_q.weight");
		NORM("img_attn.norm.key_norm.scale", "attn.norm_k.weight");
		NORM("txt_attn.norm.query_norm.scale", "attn.norm_added_q.weight");
		NORM("txt_attn.norm.key_norm.scale", "attn.norm_added_k.weight");
		LIN("img_attn.proj", "attn.to_out.0", D, D, false);
		LIN("txt_attn.proj", "attn.to_add_out", D, D, false);
		LIN("img_mlp.0", "ff.net.0.proj", F, D, false);
		LIN("img_mlp.2", "ff.net.2", D, F, false);
		LIN("txt_mlp.0", "ff_context.net.0.proj", F, D, false);
		LIN("txt_mlp.2", "ff_context.net.2", D, F, false);
	}
	for (i = 0; i < c->num_single; i++) {
		snprintf(bp, sizeof(bp), "single_blocks.%d.", i);
		snprintf(dp, sizeof(dp), "single_transformer_blocks.%d.", i);
		LIN("modulation.lin", "norm.linear", 3 * D, D, false);
		if (bfl) {
			for (j = 0; j < 3; j++) {
				snprintf(full[j], NAME_CAP, "%s%s", dp, dq[j]);
				names[j] = full[j];
				rows[j] = D;
			}
			snprintf(full[3], NAME_CAP, "%sproj_mlp", dp);
			names[3] = full[3];
			rows[3] = F;
			snprintf(b, sizeof(b), "%slinear1", bp);
			bad |= lin(l, b, D, 4, names, rows, false);
		} else {
			for (j = 0; j < 3; j++)
				LIN("", dq[j], D, D, false);
			LIN("", "proj_mlp", F, D, false);
		}
		NORM("norm.query_norm.scale", "attn.norm_q.weight");
		NORM("norm.key_norm.scale", "attn.norm_k.weight");
		LIN("linear2", "proj_out", D, D + F, false);
	}
#undef LIN
#undef NORM
	return bad ? -1 : 0;
}

static void describe(const struct fx_model_config *c, char *buf, size_t cap)
{
	snprintf(buf, cap, "a FLUX transformer with %d double and %d single blocks%s",
		 c->num_double, c->num_single, c->guidance ? "" : " and no guidance embedder");
}

/* Nunchaku's FLUX file keeps the diffusers names of unquantized tensors,
 * except the block norms: "transformer_blocks.0.attn.norm_q.weight" is
 * "transformer_blocks.0.norm_q.weight" (spec §1.3). */
static const char *packed_plain_name(const char *name, char *buf, size_t cap)
{
	static const char *const pre[] = { "transformer_blocks.", "single_transformer_blocks." };
	size_t p;

	for (p = 0; p < 2; p++) {
		const char *rest, *dot;

		if (strncmp(name, pre[p], strlen(pre[p])))
			continue;
		rest = name + strlen(pre[p]);
		dot = strchr(rest, '.');
		if (dot && !strncmp(dot + 1, "attn.", 5)) {
			snprintf(buf, cap, "%.*s%s", (int)(dot + 1 - name), name, dot + 6);
			return buf;
		}
	}
	snprintf(buf, cap, "%s", name);
	return buf;
}

static const struct fx_packed_names packed = { "smooth", "smooth_orig", "lora_down", "lora_up" };

/* ---- the runtime's file (nunchaku-svdq-format.md §1.3, §2.1, §5-6) ---- */

static const struct fx_family_module file_double[] = {
	{ "norm1.linear", true, 6, 0, 1, 0, 1, false },
	{ "norm1_context.linear", true, 6, 0, 1, 0, 1, false },
	{ "qkv_proj", false, 3, 0, 1, 0, 3, false },
	{ "qkv_proj_context", false, 3, 0, 1, 0, 3, false },
	{ "out_proj", false, 1, 0, 1, 0, 1, false },
	{ "out_proj_context", false, 1, 0, 1, 0, 1, false },
	{ "mlp_fc1", false, 0, 1, 1, 0, 1, false },
	{ "mlp_fc2", false, 1, 0, 0, 1, 1, true },
	{ "mlp_context_fc1", false, 0, 1, 1, 0, 1, false },
	{ "mlp_context_fc2", false, 1, 0, 0, 1, 1, true },
};
static const struct fx_family_module file_single[] = {
	{ "norm.linear", true, 3, 0, 1, 0, 1, false },
	{ "qkv_proj", false, 3, 0, 1, 0, 3, false },
	{ "mlp_fc1", false, 0, 1, 1, 0, 1, false },
	{ "out_proj", false, 1, 0, 1, 0, 1, false },
	{ "mlp_fc2", false, 1, 0, 0, 1, 1, true },
};
static const char *const file_norms[] = { "norm_q.weight", "norm_k.weight", "norm_added_q.weight",
					  "norm_added_k.weight" };
static const char *const file_plain[] = {
	"x_embedder.weight", "x_embedder.bias", "context_embedder.weight", "context_embedder.bias",
	"time_text_embed.timestep_embedder.linear_1.weight",
	"time_text_embed.timestep_embedder.linear_2.weight",
	"time_text_embed.text_embedder.linear_1.weight",
	"time_text_embed.text_embedder.linear_2.weight", "norm_out.linear.weight",
	"norm_out.linear.bias", "proj_out.weight", "proj_out.bias",
};
static const char *const file_leftovers[] = {
	"attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight", "attn.add_q_proj.weight",
	"attn.add_k_proj.weight", "attn.add_v_proj.weight", "attn.to_out.0.weight",
	"attn.to_add_out.weight", "ff.net.0.proj.weight", "ff.net.2.weight",
	"ff_context.net.0.proj.weight", "ff_context.net.2.weight", "proj_mlp.weight",
	"proj_out.weight", "norm1.linear.weight", "norm1_context.linear.weight", "norm.linear.weight",
};
static const struct fx_family_config_key file_config_keys[] = {
	{ "num_layers", offsetof(struct fx_model_config, num_double),
	  "config num_layers %d, file has %d double blocks" },
	{ "num_single_layers", offsetof(struct fx_model_config, num_single),
	  "config num_single_layers %d, file has %d single blocks" },
	{ "in_channels", offsetof(struct fx_model_config, in_channels),
	  "config in_channels %d, x_embedder takes %d" },
	{ "joint_attention_dim", offsetof(struct fx_model_config, joint_dim),
	  "config joint_attention_dim %d, context_embedder takes %d" },
	{ "pooled_projection_dim", offsetof(struct fx_model_config, pooled_dim),
	  "config pooled_projection_dim %d, text_embedder takes %d" },
};

/* Widths from the embedders of a packed file (its head dim is 128). */
static int file_config(const struct fx_st *st, struct fx_model_config *c, struct fx_err *err)
{
	const struct fx_tensor *t;

	if (!(t = fx_st_find(st, "x_embedder.weight")) || t->ndim != 2)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor 'x_embedder.weight' missing: not a "
				"Nunchaku FLUX checkpoint", fx_st_path(st));
	c->hidden = (int)t->shape[0];
	c->in_channels = (int)t->shape[1];
	if (!(t = fx_st_find(st, "context_embedder.weight")) || t->ndim != 2)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor 'context_embedder.weight' missing",
				fx_st_path(st));
	c->joint_dim = (int)t->shape[1];
	if (!(t = fx_st_find(st, "time_text_embed.text_embedder.linear_1.weight")) || t->ndim != 2)
		return fx_error(err, FX_E_FORMAT,
				"'%s': tensor 'time_text_embed.text_embedder.linear_1.weight' missing",
				fx_st_path(st));
	c->pooled_dim = (int)t->shape[1];
	c->guidance = fx_st_find(st, "time_text_embed.guidance_embedder.linear_1.weight") != NULL;
	c->head_dim = 128;
	c->heads = c->hidden / 128;
	c->mlp_hidden = 4 * c->hidden;
	c->out_channels = c->in_channels;
	default_axes(c->head_dim, c->axes);
	return 0;
}

/* The config fx-meta writes without a model: one line, keys sorted. */
static int meta_config(const struct fx_model_config *c, char **out, struct fx_err *err)
{
	if (asprintf(out, "{\"_class_name\": \"FluxTransformer2DModel\", \"attention_head_dim\": 128, "
		     "\"axes_dims_rope\": [16, 56, 56], \"guidance_embeds\": %s, \"in_channels\": %d, "
		     "\"joint_attention_dim\": %d, \"num_attention_heads\": %d, \"num_layers\": %d, "
		     "\"num_single_layers\": %d, \"out_channels\": null, \"patch_size\": 1, "
		     "\"pooled_projection_dim\": %d}",
		     c->guidance ? "true" : "false", c->in_channels, c->joint_dim, c->hidden / 128,
		     c->num_double, c->num_single, c->pooled_dim) < 0) {
		*out = NULL;
		return fx_error(err, FX_E_NOMEM, "out of memory");
	}
	return 0;
}

static const struct fx_family_file file_desc = {
	.modules = { file_double, file_single },
	.nmodules = { FX_ARRAY_SIZE(file_double), FX_ARRAY_SIZE(file_single) },
	.norms = { file_norms, file_norms },
	.nnorms = { 4, 2 },
	.norm_dim = 128,
	.plain = file_plain,
	.nplain = FX_ARRAY_SIZE(file_plain),
	.leftovers = file_leftovers,
	.nleftovers = FX_ARRAY_SIZE(file_leftovers),
	.tscale_required = true,
	.strict = false,
	.config_builds = true,
	.config_class = false,
	.model_class_required = true,
	.config_keys = file_config_keys,
	.nconfig_keys = FX_ARRAY_SIZE(file_config_keys),
	.file_config = file_config,
	.meta_config = meta_config,
};


const struct fx_family fx_family_flux = {
	.name = "flux",
	.title = "FLUX",
	.diffusers_class = "FluxTransformer2DModel",
	.detect = detect,
	.parse_config = parse_config,
	.infer_config = infer_config,
	.build = build,
	.config_to_json = config_to_json,
	.describe = describe,
	.block_prefix = { "transformer_blocks", "single_transformer_blocks" },
	.packed = &packed,
	.packed_plain_name = packed_plain_name,
	.model_class = "NunchakuFluxTransformer2dModel",
	.comfy_config = true,
	.two_file_form = true,
	.synth_tensors = synth_tensors,
	.run = &fx_flux_runner,
	.file = &file_desc,
};
