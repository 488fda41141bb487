/* The Qwen-Image family: diffusers naming (also under a ComfyUI
 * "model.diffusion_model." prefix), config, fused groups (spec §2.2) and
 * the names of Nunchaku's Python modules. */
#include "fx-qwen-family.h"

#include <jansson.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-model.h"

#define COMFY_PREFIX "model.diffusion_model."
#define MAX_BLOCKS 10000
#define NAME_CAP 256

static int detect(struct fx_model *m, bool last, struct fx_err *err)
{
	static const char *const prefixes[] = { "", COMFY_PREFIX };
	size_t k;

	for (k = 0; k < sizeof(prefixes) / sizeof(*prefixes); k++) {
		fx_model_build_set_layout(m, FX_LAYOUT_DIFFUSERS, prefixes[k]);
		if (fx_model_build_find(m, "img_in.weight") && fx_model_build_find(m, "txt_norm.weight"))
			return 1;
	}
	fx_model_build_set_layout(m, FX_LAYOUT_DIFFUSERS, "");
	if (!last)
		return 0;
	return fx_error(err, FX_E_FORMAT,
			"'%s' is not a Qwen-Image transformer: no 'img_in.weight' and 'txt_norm.weight'",
			fx_model_build_src(m));
}

static void default_axes(int hd, int axes[3])
{
	/* (16, 56, 56) at head dim 128; the same proportions, even, else */
	axes[1] = axes[2] = 2 * ((7 * hd) / 32);
	axes[0] = hd - 2 * axes[1];
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
	if ((ret = fx_json_int(o, "patch_size", 2, 2, 2, &patch, p, err)) < 0 ||
	    (ret = fx_json_int(o, "in_channels", 64, 1, 1 << 16, &c->in_channels, p, err)) < 0 ||
	    (ret = fx_json_int(o, "out_channels", 16, 1, 1 << 16, &c->out_channels, p, err)) < 0 ||
	    (ret = fx_json_int(o, "num_layers", 60, 0, MAX_BLOCKS, &c->num_double, p, err)) < 0 ||
	    (ret = fx_json_int(o, "attention_head_dim", 128, 1, 4096, &c->head_dim, p, err)) < 0 ||
	    (ret = fx_json_int(o, "num_attention_heads", 24, 1, 1024, &c->heads, p, err)) < 0 ||
	    (ret = fx_json_int(o, "joint_attention_dim", 3584, 1, 1 << 20, &c->joint_dim, p,
			       err)) < 0)
		goto out;
	j = json_object_get(o, "guidance_embeds");
	if (j && json_is_true(j)) {
		ret = fx_error(err, FX_E_UNSUPPORTED,
			       "config has guidance_embeds true: a Qwen-Image with a guidance embedder is not supported (in '%s')",
			       p);
		goto out;
	}
	c->num_single = 0;
	c->pooled_dim = 0;
	c->guidance = false;
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
	const struct fx_tensor *x = fx_model_build_find(m, "img_in.weight");
	int64_t v;
	char sh[64];

	if (x->ndim != 2 || x->shape[0] < 1 || x->shape[0] > (1 << 16) || x->shape[1] < 1 ||
	    x->shape[1] > (1 << 16))
		return fx_error(err, FX_E_FORMAT,
				"tensor '%s' has shape %s, expected [hidden,in_channels] (in '%s')",
				x->name, fx_shape_str(sh, sizeof(sh), x->ndim, x->shape),
				fx_model_build_file(m, x));
	c->hidden = (int)x->shape[0];
	c->in_channels = (int)x->shape[1];
	v = fx_model_build_dim(m, "transformer_blocks.0.attn.norm_q.weight", 0);
	c->head_dim = v > 0 && v <= 4096 ? (int)v : 128;
	if (c->hidden % c->head_dim)
		return fx_error(err, FX_E_FORMAT,
				"hidden size %d (from '%s') is not a multiple of the head dim %d (in '%s')",
				c->hidden, x->name, c->head_dim, fx_model_build_src(m));
	c->heads = c->hidden / c->head_dim;
	c->mlp_hidden = 4 * c->hidden;
	v = fx_model_build_dim(m, "txt_in.weight", 1);
	c->joint_dim = v > 0 && v <= (1 << 20) ? (int)v : 3584;
	v = fx_model_build_dim(m, "proj_out.weight", 0);
	c->out_channels = v > 0 && v % 4 == 0 && v <= (1 << 18) ? (int)(v / 4) : 16;
	c->pooled_dim = 0;
	c->guidance = false;
	c->num_single = 0;
	default_axes(c->head_dim, c->axes);
	return fx_model_build_count_blocks(m, "transformer_blocks", &c->num_double, err);
}

static int config_to_json(const struct fx_model_config *c, char **out, struct fx_err *err)
{
	*out = NULL;
	if (asprintf(out,
		     "{\n  \"_class_name\": \"QwenImageTransformer2DModel\",\n  \"patch_size\": 2,\n"
		     "  \"in_channels\": %d,\n  \"out_channels\": %d,\n  \"num_layers\": %d,\n"
		     "  \"attention_head_dim\": %d,\n  \"num_attention_heads\": %d,\n"
		     "  \"joint_attention_dim\": %d,\n  \"guidance_embeds\": false,\n"
		     "  \"axes_dims_rope\": [\n    %d,\n    %d,\n    %d\n  ]\n}\n",
		     c->in_channels, c->out_channels, c->num_double, c->head_dim, c->heads,
		     c->joint_dim, c->axes[0], c->axes[1], c->axes[2]) < 0) {
		*out = NULL;
		return fx_error(err, FX_E_NOMEM, "out of memory");
	}
	return 0;
}

static int plain_linear(struct fx_model *m, const char *base, int64_t n, int64_t k,
			struct fx_err *err)
{
	char nm[NAME_CAP];
	int ret;

	snprintf(nm, sizeof(nm), "%s.weight", base);
	if ((ret = fx_model_build_plain(m, nm, nm, 2, n, k, false, err)) < 0)
		return ret;
	snprintf(nm, sizeof(nm), "%s.bias", base);
	return fx_model_build_plain(m, nm, nm, 1, n, 0, false, err);
}

/* Per-block groups, n and k in units of D (MLP 4D); members' rows are
 * concatenated in this order (spec §2.2). */
static const struct qgroup {
	const char *fused;
	enum fx_group_kind kind;
	int chunks, n, k;
	bool gelu;
	const char *src[3];
} qgroups[] = {
	{ "img_mod.1", FX_GROUP_ADALN, 6, 6, 1, false, { "img_mod.1" } },
	{ "txt_mod.1", FX_GROUP_ADALN, 6, 6, 1, false, { "txt_mod.1" } },
	{ "attn.to_qkv", FX_GROUP_W4A4, 0, 3, 1, false, { "attn.to_q", "attn.to_k", "attn.to_v" } },
	{ "attn.add_qkv_proj", FX_GROUP_W4A4, 0, 3, 1, false,
	  { "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj" } },
	{ "attn.to_out.0", FX_GROUP_W4A4, 0, 1, 1, false, { "attn.to_out.0" } },
	{ "attn.to_add_out", FX_GROUP_W4A4, 0, 1, 1, false, { "attn.to_add_out" } },
	{ "img_mlp.net.0.proj", FX_GROUP_W4A4, 0, 4, 1, false, { "img_mlp.net.0.proj" } },
	{ "img_mlp.net.2", FX_GROUP_W4A4, 0, 1, 4, true, { "img_mlp.net.2" } },
	{ "txt_mlp.net.0.proj", FX_GROUP_W4A4, 0, 4, 1, false, { "txt_mlp.net.0.proj" } },
	{ "txt_mlp.net.2", FX_GROUP_W4A4, 0, 1, 4, true, { "txt_mlp.net.2" } },
};

static const char *const norms[] = {
	"attn.norm_q.weight", "attn.norm_k.weight", "attn.norm_added_q.weight",
	"attn.norm_added_k.weight",
};

static int build_block(struct fx_model *m, int i, struct fx_err *err)
{
	const struct fx_model_config *c = fx_model_build_config(m);
	int64_t D = c->hidden;
	char bp[64], mn[NAME_CAP];
	size_t gi, j;
	int ret;

	fx_block_prefix(bp, sizeof(bp), false, i);
	for (gi = 0; gi < sizeof(qgroups) / sizeof(*qgroups); gi++) {
		const struct qgroup *q = &qgroups[gi];
		int nm = q->src[1] ? 3 : 1;
		int64_t n = q->n * D, k = q->k * D, rows = n / nm;
		struct fx_group *g = fx_model_build_group(m, false, i, q->fused, q->kind, n, k,
							  q->chunks, q->gelu);

		if (!g)
			return fx_error(err, FX_E_NOMEM, "out of memory");
		for (j = 0; j < (size_t)nm; j++) {
			const struct fx_tensor *w, *b;

			snprintf(mn, sizeof(mn), "%s.%s", bp, q->src[j]);
			if ((ret = fx_model_build_want_linear(m, mn, rows, k, &w, &b, err)) < 0 ||
			    (ret = fx_model_build_member(m, g, mn, w, b, 0, rows, 0,
							 (int64_t)j * rows, err)) < 0)
				return ret;
		}
		if (gi == 3) {
			for (j = 0; j < sizeof(norms) / sizeof(*norms); j++) {
				snprintf(mn, sizeof(mn), "%s.%s", bp, norms[j]);
				ret = fx_model_build_plain(m, mn, mn, 1, c->head_dim, 0, false, err);
				if (ret < 0)
					return ret;
			}
		}
	}
	return 0;
}

static int build(struct fx_model *m, struct fx_err *err)
{
	const struct fx_model_config *c = fx_model_build_config(m);
	int64_t D = c->hidden;
	int i, ret;

	if ((ret = plain_linear(m, "img_in", D, c->in_channels, err)) < 0 ||
	    (ret = fx_model_build_plain(m, "txt_norm.weight", "txt_norm.weight", 1, c->joint_dim, 0,
					false, err)) < 0 ||
	    (ret = plain_linear(m, "txt_in", D, c->joint_dim, err)) < 0 ||
	    (ret = plain_linear(m, "time_text_embed.timestep_embedder.linear_1", D, 256, err)) < 0 ||
	    (ret = plain_linear(m, "time_text_embed.timestep_embedder.linear_2", D, D, err)) < 0 ||
	    (ret = plain_linear(m, "norm_out.linear", 2 * D, D, err)) < 0 ||
	    (ret = plain_linear(m, "proj_out", 4 * (int64_t)c->out_channels, D, err)) < 0)
		return ret;
	for (i = 0; i < c->num_double; i++)
		if ((ret = build_block(m, i, err)) < 0)
			return ret;
	return 0;
}

/* ---- the synthetic model (fx-synth): diffusers names, file order ---- */

static int synth_lin(const struct fx_synth_sink *s, const char *base, int64_t n, int64_t k)
{
	char w[NAME_CAP], b[NAME_CAP];
	const char *pw = w, *pb = b;

	snprintf(w, sizeof(w), "%s.weight", base);
	snprintf(b, sizeof(b), "%s.bias", base);
	if (s->tensor(s->ctx, w, 2, n, k, false, 1, &pw, &n) < 0)
		return -1;
	return s->tensor(s->ctx, b, 1, n, 0, false, 1, &pb, &n);
}

static int synth_vec(const struct fx_synth_sink *s, const char *name, int64_t n)
{
	return s->tensor(s->ctx, name, 1, n, 0, false, 1, &name, &n);
}

static int synth_tensors(const struct fx_model_config *c, bool bfl, const struct fx_synth_sink *s)
{
	int64_t D = c->hidden;
	char bp[64], nm[NAME_CAP];
	size_t gi, j;
	int i, bad = 0;

	if (bfl)
		return -1;
	bad |= synth_lin(s, "img_in", D, c->in_channels);
	bad |= synth_vec(s, "txt_norm.weight", c->joint_dim);
	bad |= synth_lin(s, "txt_in", D, c->joint_dim);
	bad |= synth_lin(s, "time_text_embed.timestep_embedder.linear_1", D, 256);
	bad |= synth_lin(s, "time_text_embed.timestep_embedder.linear_2", D, D);
	for (i = 0; i < c->num_double && !bad; i++) {
		fx_block_prefix(bp, sizeof(bp), false, i);
		for (gi = 0; gi < sizeof(qgroups) / sizeof(*qgroups); gi++) {
			const struct qgroup *q = &qgroups[gi];
			int nm_ = q->src[1] ? 3 : 1;

			for (j = 0; j < (size_t)nm_; j++) {
				snprintf(nm, sizeof(nm), "%s.%s", bp, q->src[j]);
				bad |= synth_lin(s, nm, q->n * D / nm_, q->k * D);
			}
			for (j = 0; gi == 3 && j < sizeof(norms) / sizeof(*norms); j++) {
				snprintf(nm, sizeof(nm), "%s.%s", bp, norms[j]);
				bad |= synth_vec(s, nm, c->head_dim);
			}
		}
	}
	bad |= synth_lin(s, "norm_out.linear", 2 * D, D);
	bad |= synth_lin(s, "proj_out", 4 * (int64_t)c->out_channels, D);
	return bad ? -1 : 0;
}

static void describe(const struct fx_model_config *c, char *buf, size_t cap)
{
	snprintf(buf, cap, "a Qwen-Image transformer with %d blocks", c->num_double);
}

static const char *packed_plain_name(const char *dname, char *buf, size_t cap)
{
	snprintf(buf, cap, "%s", dname);
	return buf;
}

static const struct fx_packed_names packed = { "smooth_factor", "smooth_factor_orig", "proj_down",
					       "proj_up" };

/* ---- the runtime's file (nunchaku-qwenimage-zimage-format.md §1-§5) ---- */

/* Per block, in the order of the groups (qgroups): N = nd·D + nf·F,
 * K = kd·D + kf·F. */
static const struct fx_family_module file_modules[] = {
	{ "img_mod.1", true, 6, 0, 1, 0, 1, false },
	{ "txt_mod.1", true, 6, 0, 1, 0, 1, false },
	{ "attn.to_qkv", false, 3, 0, 1, 0, 3, false },
	{ "attn.add_qkv_proj", false, 3, 0, 1, 0, 3, false },
	{ "attn.to_out.0", false, 1, 0, 1, 0, 1, false },
	{ "attn.to_add_out", false, 1, 0, 1, 0, 1, false },
	{ "img_mlp.net.0.proj", false, 0, 1, 1, 0, 1, false },
	{ "img_mlp.net.2", false, 1, 0, 0, 1, 1, true },
	{ "txt_mlp.net.0.proj", false, 0, 1, 1, 0, 1, false },
	{ "txt_mlp.net.2", false, 1, 0, 0, 1, 1, true },
};
static const char *const file_plain[] = {
	"img_in.weight", "img_in.bias", "txt_norm.weight", "txt_in.weight", "txt_in.bias",
	"time_text_embed.timestep_embedder.linear_1.weight",
	"time_text_embed.timestep_embedder.linear_1.bias",
	"time_text_embed.timestep_embedder.linear_2.weight",
	"time_text_embed.timestep_embedder.linear_2.bias", "norm_out.linear.weight",
	"norm_out.linear.bias", "proj_out.weight", "proj_out.bias",
};
static const char *const file_leftovers[] = {
	"attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight", "attn.add_q_proj.weight",
	"attn.add_k_proj.weight", "attn.add_v_proj.weight", "attn.to_out.0.weight",
	"attn.to_add_out.weight", "img_mlp.net.0.proj.weight", "img_mlp.net.2.weight",
	"txt_mlp.net.0.proj.weight", "txt_mlp.net.2.weight", "img_mod.1.weight", "txt_mod.1.weight",
};
static const struct fx_family_config_key file_config_keys[] = {
	{ "num_layers", offsetof(struct fx_model_config, num_double),
	  "config num_layers %d, file has %d blocks" },
	{ "in_channels", offsetof(struct fx_model_config, in_channels),
	  "config in_channels %d, img_in takes %d" },
	{ "out_channels", offsetof(struct fx_model_config, out_channels),
	  "config out_channels %d, proj_out gives %d" },
	{ "joint_attention_dim", offsetof(struct fx_model_config, joint_dim),
	  "config joint_attention_dim %d, txt_in takes %d" },
	{ "attention_head_dim", offsetof(struct fx_model_config, head_dim),
	  "config attention_head_dim %d, the QK norms have %d" },
};

static int file_want(const struct fx_st *st, const char *name, const struct fx_tensor **t,
		     struct fx_err *err)
{
	*t = fx_st_find(st, name);
	if (!*t || (*t)->ndim != 2)
		return fx_error(err, FX_E_FORMAT,
				"'%s': tensor '%s' missing: not a Nunchaku Qwen-Image checkpoint",
				fx_st_path(st), name);
	return 0;
}

/* Widths from img_in, txt_in, proj_out and the first block's QK norm. */
static int file_config(const struct fx_st *st, struct fx_model_config *c, struct fx_err *err)
{
	const struct fx_tensor *t;
	int ret;

	if ((ret = file_want(st, "img_in.weight", &t, err)) < 0)
		return ret;
	c->hidden = (int)t->shape[0];
	c->in_channels = (int)t->shape[1];
	if ((ret = file_want(st, "txt_in.weight", &t, err)) < 0)
		return ret;
	c->joint_dim = (int)t->shape[1];
	if ((ret = file_want(st, "proj_out.weight", &t, err)) < 0)
		return ret;
	c->out_channels = (int)(t->shape[0] / 4);
	t = fx_st_find(st, "transformer_blocks.0.attn.norm_q.weight");
	c->head_dim = t && t->ndim == 1 && t->shape[0] > 0 && t->shape[0] <= 4096 ? (int)t->shape[0]
									    : 128;
	c->heads = c->hidden / c->head_dim;
	c->mlp_hidden = 4 * c->hidden;
	c->pooled_dim = 0;
	c->guidance = false;
	default_axes(c->head_dim, c->axes);
	return 0;
}

static const struct fx_family_file file_desc = {
	.modules = { file_modules, NULL },
	.nmodules = { sizeof(file_modules) / sizeof(*file_modules), 0 },
	.norms = { norms, NULL },
	.nnorms = { sizeof(norms) / sizeof(*norms), 0 },
	.norm_dim = 0,
	.plain = file_plain,
	.nplain = sizeof(file_plain) / sizeof(*file_plain),
	.leftovers = file_leftovers,
	.nleftovers = sizeof(file_leftovers) / sizeof(*file_leftovers),
	.tscale_required = false,
	.strict = true,
	.config_builds = false,
	.config_class = true,
	.model_class_required = false,
	.config_keys = file_config_keys,
	.nconfig_keys = sizeof(file_config_keys) / sizeof(*file_config_keys),
	.file_config = file_config,
	.meta_config = NULL,
};

const struct fx_family fx_family_qwenimage = {
	.name = "qwenimage",
	.title = "Qwen-Image",
	.diffusers_class = "QwenImageTransformer2DModel",
	.detect = detect,
	.parse_config = parse_config,
	.infer_config = infer_config,
	.build = build,
	.config_to_json = config_to_json,
	.describe = describe,
	.block_prefix = { "transformer_blocks", NULL },
	.packed = &packed,
	.packed_plain_name = packed_plain_name,
	.model_class = "NunchakuQwenImageTransformer2DModel",
	.comfy_config = false,
	.two_file_form = false,
	.synth_tensors = synth_tensors,
	.run = &fx_qwen_runner,
	.file = &file_desc,
};
