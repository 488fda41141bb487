#include "fx-meta.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fx-io.h"

const char *const fx_meta_keys[FX_META_COUNT] = {
	"config", "comfy_config", "model_class", "quantization_config"
};

#define MODEL_CLASS "NunchakuFluxTransformer2dModel"

static bool ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);

	return a >= b && !strcmp(s + a - b, suf);
}

static int block_index(const char *name, const char *prefix)
{
	size_t n = strlen(prefix);
	char *end;
	long v;

	if (strncmp(name, prefix, n) != 0)
		return -1;
	v = strtol(name + n, &end, 10);
	return end != name + n && *end == '.' ? (int)v : -1;
}

int fx_meta_facts(const struct fx_st *st, struct fx_meta_facts *f, struct fx_err *err)
{
	const struct fx_tensor *t;
	const char *first_down = NULL, *fmt;
	size_t i;

	memset(f, 0, sizeof(*f));
	f->rank = -1;
	fmt = fx_st_meta(st, "fx.format");
	if (fmt && strcmp(fmt, "fx.packed"))
		return fx_error(err, FX_E_FORMAT, "'%s' is an %s file, not a packed checkpoint "
				"(fx-meta reads fx-pack's output or another tool's Nunchaku checkpoint)",
				fx_st_path(st), fmt);
	for (i = 0; i < fx_st_count(st); i++) {
		int b;

		t = fx_st_at(st, i);
		if (t->dtype == FX_F8_E4M3)
			snprintf(f->precision, sizeof(f->precision), "fp4");
		else if (!f->precision[0] && ends_with(t->name, ".qweight") && t->dtype == FX_I8)
			snprintf(f->precision, sizeof(f->precision), "int4");
		if (ends_with(t->name, ".lora_down") && t->ndim == 2 &&
		    (!first_down || strcmp(t->name, first_down) < 0)) {
			first_down = t->name;
			f->rank = (int)t->shape[1];
		}
		if ((b = block_index(t->name, "transformer_blocks.")) >= 0 && b + 1 > f->num_double)
			f->num_double = b + 1;
		if ((b = block_index(t->name, "single_transformer_blocks.")) >= 0 && b + 1 > f->num_single)
			f->num_single = b + 1;
	}
	if (!(t = fx_st_find(st, "x_embedder.weight")) || t->ndim != 2)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor 'x_embedder.weight' missing: not a "
				"Nunchaku FLUX checkpoint", fx_st_path(st));
	f->hidden = (int)t->shape[0];
	f->in_channels = (int)t->shape[1];
	if (!(t = fx_st_find(st, "context_embedder.weight")) || t->ndim != 2)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor 'context_embedder.weight' missing",
				fx_st_path(st));
	f->joint_dim = (int)t->shape[1];
	if (!(t = fx_st_find(st, "time_text_embed.text_embedder.linear_1.weight")) || t->ndim != 2)
		return fx_error(err, FX_E_FORMAT,
				"'%s': tensor 'time_text_embed.text_embedder.linear_1.weight' missing",
				fx_st_path(st));
	f->pooled_dim = (int)t->shape[1];
	f->guidance = fx_st_find(st, "time_text_embed.guidance_embedder.linear_1.weight") != NULL;
	return 0;
}

static char *config_from_facts(const struct fx_meta_facts *f)
{
	char *s = NULL;

	if (asprintf(&s, "{\"_class_name\": \"FluxTransformer2DModel\", \"attention_head_dim\": 128, "
		     "\"axes_dims_rope\": [16, 56, 56], \"guidance_embeds\": %s, \"in_channels\": %d, "
		     "\"joint_attention_dim\": %d, \"num_attention_heads\": %d, \"num_layers\": %d, "
		     "\"num_single_layers\": %d, \"out_channels\": null, \"patch_size\": 1, "
		     "\"pooled_projection_dim\": %d}",
		     f->guidance ? "true" : "false", f->in_channels, f->joint_dim, f->hidden / 128,
		     f->num_double, f->num_single, f->pooled_dim) < 0)
		return NULL;
	return s;
}

static char *quant_config(const char *precision, int rank)
{
	char *s = NULL;
	int r;

	if (!strcmp(precision, "fp4"))
		r = asprintf(&s, "{\"method\": \"svdquant\", \"weight\": {\"dtype\": \"fp4_e2m1_all\", "
			     "\"scale_dtype\": [null, \"fp8_e4m3_nan\"], \"group_size\": 16}, "
			     "\"activation\": {\"dtype\": \"fp4_e2m1_all\", \"scale_dtype\": "
			     "\"fp8_e4m3_nan\", \"group_size\": 16}, \"rank\": %d}", rank);
	else
		r = asprintf(&s, "{\"method\": \"svdquant\", \"weight\": {\"dtype\": \"int4\", "
			     "\"scale_dtype\": null, \"group_size\": 64}, \"activation\": {\"dtype\": "
			     "\"int4\", \"scale_dtype\": null, \"group_size\": 64}, \"rank\": %d}", rank);
	return r < 0 ? NULL : s;
}

static int jint(json_t *o, const char *k, int dflt)
{
	json_t *v = json_object_get(o, k);

	return json_is_integer(v) ? (int)json_integer_value(v) : dflt;
}

static char *comfy_config(json_t *cfg)
{
	char *s = NULL;
	int in = jint(cfg, "in_channels", 64);
	int heads = jint(cfg, "num_attention_heads", 24), hd = jint(cfg, "attention_head_dim", 128);
	json_t *out = json_object_get(cfg, "out_channels");
	int outc = json_is_integer(out) ? (int)json_integer_value(out) : in;
	bool guid = json_is_true(json_object_get(cfg, "guidance_embeds"));

	/* ComfyUI counts latent channels before the 2x2 patching */
	if (asprintf(&s, "{\"model_class\": \"%s\", \"model_config\": {\"axes_dim\": [16, 56, 56], "
		     "\"context_in_dim\": %d, \"depth\": %d, \"depth_single_blocks\": %d, "
		     "\"disable_unet_model_creation\": true, \"guidance_embed\": %s, \"hidden_size\": %d, "
		     "\"image_model\": \"flux\", \"in_channels\": %d, \"mlp_ratio\": 4.0, \"num_heads\": %d, "
		     "\"out_channels\": %d, \"patch_size\": 2, \"qkv_bias\": true, \"theta\": 10000, "
		     "\"vec_in_dim\": %d}}",
		     guid ? "Flux" : "FluxSchnell", jint(cfg, "joint_attention_dim", 4096),
		     jint(cfg, "num_layers", 19), jint(cfg, "num_single_layers", 38),
		     guid ? "true" : "false", heads * hd, in / 4, heads, outc / 4,
		     jint(cfg, "pooled_projection_dim", 768)) < 0)
		return NULL;
	return s;
}

/* What the tensors fix in config (diffusers names) and in comfy_config's
 * model_config (ComfyUI names, latent channels before 2x2 patching). Each
 * disagreement becomes a finding when a is given; returns how many. */
static int config_disagrees(json_t *c, const struct fx_meta_facts *f, struct fx_audit *a)
{
	const struct { const char *key, *fmt; int want; } k[] = {
		{ "num_layers", "config num_layers %d, file has %d double blocks", f->num_double },
		{ "num_single_layers", "config num_single_layers %d, file has %d single blocks",
		  f->num_single },
		{ "in_channels", "config in_channels %d, x_embedder takes %d", f->in_channels },
		{ "joint_attention_dim", "config joint_attention_dim %d, context_embedder takes %d",
		  f->joint_dim },
		{ "pooled_projection_dim", "config pooled_projection_dim %d, text_embedder takes %d",
		  f->pooled_dim },
	};
	int bad = 0, hidden = jint(c, "num_attention_heads", -1) * jint(c, "attention_head_dim", -1);

	for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++)
		if (jint(c, k[i].key, -1) != k[i].want && ++bad && a)
			fx_audit_add(a, FX_SEV_ERROR, "metadata", "config", k[i].fmt,
				     jint(c, k[i].key, -1), k[i].want);
	if (hidden != f->hidden && ++bad && a)
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "config",
			     "config num_attention_heads x attention_head_dim is %d, the hidden size "
			     "is %d", hidden, f->hidden);
	if (json_is_true(json_object_get(c, "guidance_embeds")) != f->guidance && ++bad && a)
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "config",
			     "config guidance_embeds is %s but the guidance embedder is %s",
			     f->guidance ? "false" : "true", f->guidance ? "present" : "absent");
	return bad;
}

static bool config_agrees(json_t *c, const struct fx_meta_facts *f)
{
	return config_disagrees(c, f, NULL) == 0;
}

static void comfy_audit(json_t *cc, const struct fx_meta_facts *f, struct fx_audit *a)
{
	json_t *mc = json_object_get(cc, "model_config");
	const char *cls = json_string_value(json_object_get(cc, "model_class"));
	const char *want = f->guidance ? "Flux" : "FluxSchnell";
	const struct { const char *key; int want; } k[] = {
		{ "depth", f->num_double },
		{ "depth_single_blocks", f->num_single },
		{ "hidden_size", f->hidden },
		{ "in_channels", f->in_channels / 4 },
		{ "context_in_dim", f->joint_dim },
		{ "vec_in_dim", f->pooled_dim },
	};

	if (!cls || strcmp(cls, want))
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "comfy_config",
			     "comfy_config model_class is '%s', expected '%s'", cls ? cls : "(none)", want);
	if (!json_is_object(mc)) {
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "comfy_config",
			     "comfy_config has no model_config object");
		return;
	}
	for (size_t i = 0; i < sizeof(k) / sizeof(k[0]); i++)
		if (jint(mc, k[i].key, -1) != k[i].want)
			fx_audit_add(a, FX_SEV_ERROR, "metadata", "comfy_config",
				     "comfy_config model_config.%s is %d, the tensors give %d", k[i].key,
				     jint(mc, k[i].key, -1), k[i].want);
	if (json_is_true(json_object_get(mc, "guidance_embed")) != f->guidance)
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "comfy_config",
			     "comfy_config model_config.guidance_embed disagrees with the guidance "
			     "embedder (%s)", f->guidance ? "present" : "absent");
}

int fx_meta_compute(const struct fx_st *st, const struct fx_meta_opts *o, char *vals[FX_META_COUNT],
		    struct fx_err *err)
{
	struct fx_meta_facts f;
	const char *prec, *have;
	json_t *cfg = NULL;
	int ret, rank, i;

	memset(vals, 0, sizeof(char *) * FX_META_COUNT);
	ret = fx_meta_facts(st, &f, err);
	if (ret < 0)
		return ret;
	prec = o && o->precision ? o->precision : f.precision;
	if (!prec[0])
		return fx_error(err, FX_E_FORMAT, "'%s': no 4-bit modules found; cannot tell fp4 from int4 "
				"(give --precision)", fx_st_path(st));
	rank = o && o->rank >= 0 ? o->rank : (f.rank >= 0 ? f.rank : 32);
	if (o && o->config_json) {
		vals[FX_META_CONFIG] = strdup(o->config_json);
	} else if ((have = fx_st_meta(st, "config")) && (cfg = json_loads(have, 0, NULL)) &&
		   json_is_object(cfg) && config_agrees(cfg, &f)) {
		vals[FX_META_CONFIG] = strdup(have);
	} else {
		vals[FX_META_CONFIG] = config_from_facts(&f);
	}
	json_decref(cfg);
	cfg = vals[FX_META_CONFIG] ? json_loads(vals[FX_META_CONFIG], 0, NULL) : NULL;
	if (!cfg || !json_is_object(cfg)) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': model config is not a JSON object", fx_st_path(st));
		goto fail;
	}
	vals[FX_META_COMFY] = comfy_config(cfg);
	vals[FX_META_MODEL_CLASS] = strdup(MODEL_CLASS);
	vals[FX_META_QUANT] = quant_config(prec, rank);
	json_decref(cfg);
	for (i = 0; i < FX_META_COUNT; i++)
		if (!vals[i]) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto fail;
		}
	return 0;
fail:
	for (i = 0; i < FX_META_COUNT; i++) {
		free(vals[i]);
		vals[i] = NULL;
	}
	return ret;
}

void fx_meta_audit(const struct fx_st *st, struct fx_audit *a)
{
	struct fx_meta_facts f;
	struct fx_err err = {0};
	json_t *v[FX_META_COUNT] = {0};
	int i;

	for (i = 0; i < FX_META_COUNT; i++) {
		const char *s = fx_st_meta(st, fx_meta_keys[i]);

		if (!s) {
			fx_audit_add(a, FX_SEV_ERROR, "metadata", fx_meta_keys[i],
				     "metadata '%s' missing: loaders fail (run fx-meta to repair)",
				     fx_meta_keys[i]);
			continue;
		}
		if (i == FX_META_MODEL_CLASS) {
			if (strcmp(s, MODEL_CLASS) != 0)
				fx_audit_add(a, FX_SEV_ERROR, "metadata", "model_class",
					     "model_class is '%s', expected '%s'", s, MODEL_CLASS);
			continue;
		}
		v[i] = json_loads(s, 0, NULL);
		if (!v[i] || !json_is_object(v[i]))
			fx_audit_add(a, FX_SEV_ERROR, "metadata", fx_meta_keys[i],
				     "metadata '%s' is not a JSON object", fx_meta_keys[i]);
	}
	if (fx_st_meta(st, "fx.loras")) {
		/* not read by the loaders: tells a merged checkpoint apart */
		json_t *l = json_loads(fx_st_meta(st, "fx.loras"), 0, NULL);

		if (!json_is_array(l))
			fx_audit_add(a, FX_SEV_ERROR, "metadata", "fx.loras",
				     "metadata 'fx.loras' is not a JSON list");
		else
			fx_audit_add(a, FX_SEV_NOTE, "metadata", "fx.loras",
				     "made with %zu LoRA%s merged: %.400s", json_array_size(l),
				     json_array_size(l) == 1 ? "" : "s", fx_st_meta(st, "fx.loras"));
		json_decref(l);
	}
	if (fx_meta_facts(st, &f, &err) < 0) {
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "", "%s", err.msg);
		goto out;
	}
	if (v[FX_META_QUANT]) {
		json_t *w = json_object_get(v[FX_META_QUANT], "weight");
		const char *dt = json_string_value(json_object_get(w, "dtype"));
		int gs = jint(w, "group_size", -1), rank = jint(v[FX_META_QUANT], "rank", -1);
		const char *want = !strcmp(f.precision, "fp4") ? "fp4_e2m1_all" : "int4";

		if (f.precision[0] && (!dt || strcmp(dt, want)))
			fx_audit_add(a, FX_SEV_ERROR, "metadata", "quantization_config",
				     "weight.dtype is '%s' but the tensors are %s", dt ? dt : "(none)",
				     f.precision);
		if (f.precision[0] && gs != (!strcmp(f.precision, "fp4") ? 16 : 64))
			fx_audit_add(a, FX_SEV_ERROR, "metadata", "quantization_config",
				     "weight.group_size is %d, %s needs %d", gs, f.precision,
				     !strcmp(f.precision, "fp4") ? 16 : 64);
		if (f.rank >= 0 && rank != f.rank)
			fx_audit_add(a, FX_SEV_ERROR, "metadata", "quantization_config",
				     "rank is %d but lora tensors have rank %d", rank, f.rank);
	}
	if (v[FX_META_CONFIG])
		config_disagrees(v[FX_META_CONFIG], &f, a);
	if (v[FX_META_COMFY])
		comfy_audit(v[FX_META_COMFY], &f, a);
out:
	for (i = 0; i < FX_META_COUNT; i++)
		json_decref(v[i]);
}

/* Copies path's data section after a new header into a fresh atomic file. */
static int rewrite_copy(const char *path, const struct fx_st *st, size_t nmeta,
			const char *const *keys, const char *const *vals, struct fx_err *err)
{
	struct fx_out *o = NULL;
	char *hdr = NULL;
	uint64_t old_len = fx_st_header_len(st), data_off = 8 + old_len;
	uint64_t data_len = fx_st_file_size(st) - data_off;
	size_t base = 0, hlen;
	uint8_t lenb[8];
	const uint8_t *data = NULL;
	int ret, i;

	/* size the header: build once generously, then exactly with spare room */
	for (i = 0; i < (int)nmeta; i++)
		base += strlen(keys[i]) + strlen(vals[i]) * 2 + 16;
	hlen = old_len + base + 8192;
	hlen = (8 + hlen + 63) / 64 * 64 - 8;
	ret = fx_st_header_build(&hdr, hlen, st, nmeta, keys, vals, err);
	if (ret < 0)
		goto out;
	for (i = 0; i < 8; i++)
		lenb[i] = (uint8_t)((uint64_t)hlen >> (8 * i));
	if (fx_st_count(st))
		data = (const uint8_t *)fx_st_at(st, 0)->data;
	ret = fx_out_open(&o, path, true, err);
	if (ret < 0)
		goto out;
	if ((ret = fx_write_all(fx_out_fd(o), lenb, 8, path, err)) < 0 ||
	    (ret = fx_write_all(fx_out_fd(o), hdr, hlen, path, err)) < 0 ||
	    (data_len && (ret = fx_write_all(fx_out_fd(o), data, data_len, path, err)) < 0))
		goto out;
	ret = fx_out_commit(o, err);
	o = NULL;
out:
	fx_out_abort(o);
	free(hdr);
	return ret;
}

int fx_meta_write(const char *path, const char *const *keys, const char *const *vals, size_t n,
		  bool *in_place, struct fx_err *err)
{
	struct fx_st *st = NULL;
	const char **k = NULL, **v = NULL;
	size_t i, j, m = 0, cap;
	char *hdr = NULL;
	int fd = -1, ret;

	*in_place = false;
	ret = fx_st_open(&st, path, err);
	if (ret < 0)
		return ret;
	/* merged metadata: existing keys, replaced or extended by the new ones */
	cap = fx_st_meta_count(st) + n;
	k = calloc(cap + 1, sizeof(*k));
	v = calloc(cap + 1, sizeof(*v));
	if (!k || !v) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < fx_st_meta_count(st); i++) {
		const char *key, *val;

		fx_st_meta_at(st, i, &key, &val);
		for (j = 0; j < n && strcmp(keys[j], key); j++)
			;
		if (j == n) {
			k[m] = key;
			v[m++] = val;
		}
	}
	for (j = 0; j < n; j++) {
		k[m] = keys[j];
		v[m++] = vals[j];
	}
	if (fx_st_header_build(&hdr, fx_st_header_len(st), st, m, k, v, NULL) == 0) {
		fd = open(path, O_WRONLY);
		if (fd < 0) {
			ret = fx_error(err, FX_E_IO, "cannot open '%s' for writing: %s", path, strerror(errno));
			goto out;
		}
		ret = fx_pwrite_all(fd, hdr, fx_st_header_len(st), 8, path, err);
		if (ret == 0 && fsync(fd) != 0)
			ret = fx_error(err, FX_E_IO, "fsync '%s': %s", path, strerror(errno));
		if (ret == 0)
			*in_place = true;
		goto out;
	}
	ret = rewrite_copy(path, st, m, k, v, err);
out:
	if (fd >= 0)
		close(fd);
	free(hdr);
	free(k);
	free(v);
	fx_st_close(st);
	return ret;
}
