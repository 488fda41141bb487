#include "fx-meta.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fx-families.h"
#include "fx-io.h"

const char *const fx_meta_keys[FX_META_COUNT] = {
	"config", "comfy_config", "model_class", "quantization_config"
};

static bool ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);

	return a >= b && !strcmp(s + a - b, suf);
}

/* "<prefix>.<i>.<rest>": i (and *rest), else -1. */
static int block_index(const char *name, const char *prefix, const char **rest)
{
	size_t n = strlen(prefix);
	char *end;
	long v;

	if (strncmp(name, prefix, n) != 0 || name[n] != '.')
		return -1;
	v = strtol(name + n + 1, &end, 10);
	if (end == name + n + 1 || *end != '.' || v < 0 || v > 1000000)
		return -1;
	if (rest)
		*rest = end + 1;
	return (int)v;
}

/* Tensors of st that name a module of f or carry its low-rank names. */
static size_t family_score(const struct fx_st *st, const struct fx_family *f)
{
	char down[64];
	size_t i, j, n = 0;
	int kind;

	snprintf(down, sizeof(down), ".%s", f->packed->down);
	for (i = 0; i < fx_st_count(st); i++) {
		const char *name = fx_st_at(st, i)->name, *rest;

		if (ends_with(name, down))
			n++;
		for (kind = 0; kind < 2; kind++) {
			if (!f->block_prefix[kind] || block_index(name, f->block_prefix[kind], &rest) < 0)
				continue;
			for (j = 0; j < f->file->nmodules[kind]; j++) {
				size_t l = strlen(f->file->modules[kind][j].name);

				if (!strncmp(rest, f->file->modules[kind][j].name, l) && rest[l] == '.') {
					n++;
					break;
				}
			}
		}
	}
	return n;
}

int fx_meta_family(const struct fx_st *st, const struct fx_family **out, struct fx_err *err)
{
	const struct fx_family *flux = fx_family_find("flux");
	const char *model = fx_st_meta(st, "fx.model");
	size_t i, n, best;
	int ret = 0;

	*out = flux;
	if (model) {
		json_t *j = json_loads(model, 0, NULL), *fam = json_object_get(j, "family");

		if (fam && !json_is_string(fam))
			ret = fx_error(err, FX_E_FORMAT, "'%s': fx.model's family is not a string",
				       fx_st_path(st));
		else if (fam && !(*out = fx_family_find(json_string_value(fam))))
			ret = fx_error(err, FX_E_FORMAT, "'%s': fx.model names the model family '%s', "
				       "which this fx does not know (%s)", fx_st_path(st),
				       json_string_value(fam), fx_family_names());
		json_decref(j);
		if (ret < 0)
			*out = flux;
		return ret;
	}
	best = family_score(st, flux);
	for (i = 0; fx_families[i]; i++)
		if (fx_families[i] != flux && (n = family_score(st, fx_families[i])) > best) {
			best = n;
			*out = fx_families[i];
		}
	return 0;
}

int fx_meta_facts(const struct fx_st *st, struct fx_meta_facts *f, struct fx_err *err)
{
	const struct fx_family *fam;
	const struct fx_tensor *t;
	const char *first_down = NULL, *fmt;
	char down[64];
	size_t i;
	int ret;

	memset(f, 0, sizeof(*f));
	f->rank = -1;
	fmt = fx_st_meta(st, "fx.format");
	if (fmt && strcmp(fmt, "fx.packed"))
		return fx_error(err, FX_E_FORMAT, "'%s' is an %s file, not a packed checkpoint "
				"(fx-meta reads fx-pack's output or another tool's Nunchaku checkpoint)",
				fx_st_path(st), fmt);
	if ((ret = fx_meta_family(st, &fam, err)) < 0)
		return ret;
	f->family = fam;
	snprintf(down, sizeof(down), ".%s", fam->packed->down);
	for (i = 0; i < fx_st_count(st); i++) {
		int b;

		t = fx_st_at(st, i);
		if (t->dtype == FX_F8_E4M3)
			snprintf(f->precision, sizeof(f->precision), "fp4");
		else if (!f->precision[0] && ends_with(t->name, ".qweight") && t->dtype == FX_I8)
			snprintf(f->precision, sizeof(f->precision), "int4");
		if (ends_with(t->name, down) && t->ndim == 2 &&
		    (!first_down || strcmp(t->name, first_down) < 0)) {
			first_down = t->name;
			f->rank = (int)t->shape[1];
		}
		if ((b = block_index(t->name, fam->block_prefix[0], NULL)) >= 0 && b + 1 > f->c.num_double)
			f->c.num_double = b + 1;
		if (fam->block_prefix[1] && (b = block_index(t->name, fam->block_prefix[1], NULL)) >= 0 &&
		    b + 1 > f->c.num_single)
			f->c.num_single = b + 1;
	}
	if ((ret = fam->file->file_config(st, &f->c, err)) < 0)
		return ret;
	f->c.family = fam;
	return 0;
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

/* ComfyUI-nunchaku's FLUX config (families with comfy_config). */
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

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wformat-nonliteral"
/* What the tensors fix in config (the family's config keys, the hidden
 * size, the guidance embedder) and, for families that name it, its
 * _class_name. Each disagreement becomes a finding when a is given (an
 * error where the loader builds the model from config, else a warning);
 * returns how many. */
static int config_disagrees(json_t *c, const struct fx_meta_facts *f, struct fx_audit *a)
{
	const struct fx_family *fam = f->family;
	const struct fx_family_file *ff = fam->file;
	enum fx_severity sev = ff->config_builds ? FX_SEV_ERROR : FX_SEV_WARN;
	int bad = 0, hidden = jint(c, "num_attention_heads", -1) * jint(c, "attention_head_dim", -1);
	const char *cls = json_string_value(json_object_get(c, "_class_name"));
	size_t i;

	if (ff->config_class && (!cls || strcmp(cls, fam->diffusers_class)) && ++bad && a)
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "config",
			     "config _class_name is '%s', expected '%s'", cls ? cls : "(none)",
			     fam->diffusers_class);
	for (i = 0; i < ff->nconfig_keys; i++) {
		const struct fx_family_config_key *k = &ff->config_keys[i];
		int want = *(const int *)(const void *)((const char *)&f->c + k->field);

		if (jint(c, k->key, -1) != want && ++bad && a)
			fx_audit_add(a, sev, "metadata", "config", k->fmt, jint(c, k->key, -1), want);
	}
	if (hidden != f->c.hidden && ++bad && a)
		fx_audit_add(a, sev, "metadata", "config",
			     "config num_attention_heads x attention_head_dim is %d, the hidden size "
			     "is %d", hidden, f->c.hidden);
	if (json_is_true(json_object_get(c, "guidance_embeds")) != f->c.guidance && ++bad && a)
		fx_audit_add(a, sev, "metadata", "config",
			     "config guidance_embeds is %s but the guidance embedder is %s",
			     f->c.guidance ? "false" : "true", f->c.guidance ? "present" : "absent");
	return bad;
}
#pragma GCC diagnostic pop

static bool config_agrees(json_t *c, const struct fx_meta_facts *f)
{
	return config_disagrees(c, f, NULL) == 0;
}

static void comfy_audit(json_t *cc, const struct fx_meta_facts *f, struct fx_audit *a)
{
	json_t *mc = json_object_get(cc, "model_config");
	const char *cls = json_string_value(json_object_get(cc, "model_class"));
	const char *want = f->c.guidance ? "Flux" : "FluxSchnell";
	const struct { const char *key; int want; } k[] = {
		{ "depth", f->c.num_double },
		{ "depth_single_blocks", f->c.num_single },
		{ "hidden_size", f->c.hidden },
		{ "in_channels", f->c.in_channels / 4 },
		{ "context_in_dim", f->c.joint_dim },
		{ "vec_in_dim", f->c.pooled_dim },
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
	if (json_is_true(json_object_get(mc, "guidance_embed")) != f->c.guidance)
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "comfy_config",
			     "comfy_config model_config.guidance_embed disagrees with the guidance "
			     "embedder (%s)", f->c.guidance ? "present" : "absent");
}

int fx_meta_compute(const struct fx_st *st, const struct fx_meta_opts *o, char *vals[FX_META_COUNT],
		    struct fx_err *err)
{
	const struct fx_family *fam;
	struct fx_meta_facts f;
	const char *prec, *have;
	json_t *cfg = NULL;
	int ret, rank, i;

	memset(vals, 0, sizeof(char *) * FX_META_COUNT);
	ret = fx_meta_facts(st, &f, err);
	if (ret < 0)
		return ret;
	fam = f.family;
	if (o && o->family && o->family != fam)
		return fx_error(err, FX_E_FORMAT, "'%s' is a %s checkpoint, the model given is %s",
				fx_st_path(st), fam->title, o->family->title);
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
		ret = fam->file->meta_config ? fam->file->meta_config(&f.c, &vals[FX_META_CONFIG], err)
					     : fam->config_to_json(&f.c, &vals[FX_META_CONFIG], err);
		if (ret < 0)
			goto fail;
	}
	json_decref(cfg);
	cfg = vals[FX_META_CONFIG] ? json_loads(vals[FX_META_CONFIG], 0, NULL) : NULL;
	if (!cfg || !json_is_object(cfg)) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': model config is not a JSON object", fx_st_path(st));
		goto fail;
	}
	if (fam->comfy_config)
		vals[FX_META_COMFY] = comfy_config(cfg);
	vals[FX_META_MODEL_CLASS] = strdup(fam->model_class);
	vals[FX_META_QUANT] = quant_config(prec, rank);
	json_decref(cfg);
	cfg = NULL;
	for (i = 0; i < FX_META_COUNT; i++)
		if (!vals[i] && (i != FX_META_COMFY || fam->comfy_config)) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto fail;
		}
	return 0;
fail:
	json_decref(cfg);
	for (i = 0; i < FX_META_COUNT; i++) {
		free(vals[i]);
		vals[i] = NULL;
	}
	return ret;
}

void fx_meta_audit(const struct fx_st *st, struct fx_audit *a)
{
	const struct fx_family *fam;
	struct fx_meta_facts f;
	struct fx_err err = {0};
	json_t *v[FX_META_COUNT] = {0};
	int i;

	if (fx_meta_family(st, &fam, &err) < 0) {
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "fx.model", "%s", err.msg);
		return;
	}
	for (i = 0; i < FX_META_COUNT; i++) {
		const char *s = fx_st_meta(st, fx_meta_keys[i]);
		/* model_class: not every family's loaders read it */
		enum fx_severity sev = i != FX_META_MODEL_CLASS || fam->file->model_class_required
				       ? FX_SEV_ERROR : FX_SEV_WARN;

		if (i == FX_META_COMFY && !fam->comfy_config)
			continue;   /* not read by this family's loaders */
		if (!s) {
			if (sev == FX_SEV_ERROR)
				fx_audit_add(a, sev, "metadata", fx_meta_keys[i],
					     "metadata '%s' missing: loaders fail (run fx-meta to repair)",
					     fx_meta_keys[i]);
			else
				fx_audit_add(a, sev, "metadata", fx_meta_keys[i],
					     "metadata '%s' missing: the %s loaders do not read it, but "
					     "fx-meta and Nunchaku's merge tool write it (run fx-meta)",
					     fx_meta_keys[i], fam->title);
			continue;
		}
		if (i == FX_META_MODEL_CLASS) {
			if (strcmp(s, fam->model_class) != 0)
				fx_audit_add(a, sev, "metadata", "model_class",
					     "model_class is '%s', expected '%s'", s, fam->model_class);
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
		const char *down = fam->packed->down;

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
				     "rank is %d but %s tensors have rank %d", rank,
				     strncmp(down, "lora_", 5) ? down : "lora", f.rank);
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
