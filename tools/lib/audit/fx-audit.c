/* fx-verify's library half: open, classify, check, collect findings. */
#include "fx-audit.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fx-audit-branch.h"
#include "fx-audit-model.h"
#include "fx-audit-packed.h"
#include "fx-audit-prov.h"
#include "fx-family.h"
#include "fx-file.h"
#include "fx-lora.h"
#include "fx-model.h"
#include "fx-st.h"

const char *fx_severity_name(enum fx_severity s)
{
	switch (s) {
	case FX_SEV_NOTE: return "note";
	case FX_SEV_WARN: return "warning";
	case FX_SEV_ERROR: return "error";
	}
	return "?";
}

void fx_audit_init(struct fx_audit *a)
{
	memset(a, 0, sizeof(*a));
}

void fx_audit_release(struct fx_audit *a)
{
	size_t i;

	free(a->format);
	free(a->tool);
	free(a->params);
	free(a->inputs);
	free(a->recipe);
	free(a->model_summary);
	free(a->find);
	for (i = 0; i < a->lines_n; i++)
		free(a->lines[i]);
	free(a->lines);
	memset(a, 0, sizeof(*a));
}

void fx_audit_add(struct fx_audit *a, enum fx_severity sev, const char *check, const char *where,
		  const char *fmt, ...)
{
	struct fx_finding *f;
	va_list ap;

	if (a->nfind == a->capfind) {
		size_t cap = a->capfind ? a->capfind * 2 : 16;
		struct fx_finding *n = realloc(a->find, cap * sizeof(*n));

		if (!n)
			return;
		a->find = n;
		a->capfind = cap;
	}
	f = &a->find[a->nfind++];
	f->sev = sev;
	snprintf(f->check, sizeof(f->check), "%s", check);
	snprintf(f->where, sizeof(f->where), "%s", where ? where : "");
	va_start(ap, fmt);
	vsnprintf(f->msg, sizeof(f->msg), fmt, ap);
	va_end(ap);
}

void fx_audit_line(struct fx_audit *a, const char *fmt, ...)
{
	va_list ap;
	char *s = NULL;

	if (a->lines_n == a->lines_cap) {
		size_t cap = a->lines_cap ? a->lines_cap * 2 : 32;
		char **n = realloc(a->lines, cap * sizeof(*n));

		if (!n)
			return;
		a->lines = n;
		a->lines_cap = cap;
	}
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) < 0)
		s = NULL;
	va_end(ap);
	if (s)
		a->lines[a->lines_n++] = s;
}

size_t fx_audit_failures(const struct fx_audit *a, bool strict)
{
	size_t i, n = 0;

	for (i = 0; i < a->nfind; i++)
		if (a->find[i].sev == FX_SEV_ERROR || (strict && a->find[i].sev == FX_SEV_WARN))
			n++;
	return n;
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

static void count_tensor(struct fx_audit *a, const struct fx_tensor *t)
{
	a->ntensors++;
	a->nbytes += t->nbytes;
	a->dtype_count[t->dtype]++;
	a->dtype_bytes[t->dtype] += t->nbytes;
}

static bool json_valid(const char *s, bool want_object)
{
	json_error_t jerr;
	json_t *v = json_loads(s, JSON_DECODE_ANY, &jerr);
	bool ok = v && (!want_object || json_is_object(v));

	json_decref(v);
	return ok;
}

/* fx.* header consistency of an fx intermediate. */
static void audit_fx_header(struct fx_audit *a, const struct fx_st *st)
{
	struct fx_file_info info;
	struct fx_err err = {0};
	static const char *const known[] = { FX_FMT_CALIB, FX_FMT_BRANCH, FX_FMT_QUANT, FX_FMT_PACKED, "fx.cond" };
	bool is_known = false;
	size_t i;

	if (fx_file_info(st, &info, &err) < 0) {
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "%s", err.msg);
		return;
	}
	a->format = dup_or_null(info.format);
	a->version = info.version;
	a->tool = dup_or_null(info.tool);
	a->params = dup_or_null(info.params);
	a->inputs = dup_or_null(info.inputs);
	a->recipe = dup_or_null(info.recipe);
	for (i = 0; i < FX_ARRAY_SIZE(known); i++)
		is_known |= !strcmp(info.format, known[i]);
	if (!is_known)
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "unknown fx.format '%s'", info.format);
	if (info.version > FX_FILE_VERSION)
		fx_audit_add(a, FX_SEV_ERROR, "version", "",
			     "file is version %d, this fx-verify supports up to %d",
			     info.version, FX_FILE_VERSION);
	if (!info.tool)
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.tool missing");
	if (!info.params || !json_valid(info.params, true))
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.params missing or not a JSON object");
	if (!info.inputs || !json_valid(info.inputs, true))
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.inputs missing or not a JSON object");
	if (info.layers && !json_valid(info.layers, true))
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.layers is not a JSON object");
	if (!info.recipe) {
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.recipe missing");
	} else if (info.params && info.inputs) {
		char want[65];

		if (fx_file_recipe(want, info.format, info.version, info.params, info.inputs, &err) == 0 &&
		    strcmp(want, info.recipe) != 0)
			fx_audit_add(a, FX_SEV_ERROR, "recipe", "",
				     "fx.recipe %.12s does not match fx.params and fx.inputs (%.12s): the header was edited",
				     info.recipe, want);
	}
	if (!info.crc32) {
		fx_audit_add(a, FX_SEV_ERROR, "crc32", "", "fx.crc32 missing");
	} else if (fx_file_check_crc(st, &err) < 0) {
		fx_audit_add(a, FX_SEV_ERROR, "crc32", "", "%s", err.msg);
	}
}

static void model_value_finding(void *ctx, const char *msg)
{
	fx_audit_add(ctx, FX_SEV_ERROR, "values", "", "%s", msg);
}

/* What a file records of the LoRAs merged into its model (fx.loras), as
 * one report line; a malformed entry is a finding. */
static void audit_loras(struct fx_audit *a, const struct fx_st *st)
{
	const char *txt = fx_st_meta(st, "fx.loras");
	json_t *j = txt ? json_loads(txt, 0, NULL) : NULL, *e;
	char line[1024];
	size_t i, used = 0;

	if (!txt)
		return;
	if (!json_is_array(j) || !json_array_size(j)) {
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.loras is not a list of LoRAs: '%.200s'", txt);
		json_decref(j);
		return;
	}
	line[0] = '\0';
	json_array_foreach(j, i, e) {
		const char *f = json_string_value(json_object_get(e, "file"));
		const char *h = json_string_value(json_object_get(e, "sha256"));
		json_t *sc = json_object_get(e, "scale");
		int k;

		if (!f || !h || !json_is_number(sc)) {
			fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.loras entry %zu lacks file, "
				     "sha256 or scale", i);
			break;
		}
		k = snprintf(line + used, sizeof(line) - used, "%s%s:%g (sha256 %.12s)", i ? ", " : "",
			     f, json_number_value(sc), h);
		if (k > 0 && (size_t)k < sizeof(line) - used)
			used += (size_t)k;
	}
	fx_audit_line(a, "loras: made with %zu LoRA%s merged: %s", json_array_size(j),
		      json_array_size(j) == 1 ? "" : "s", line);
	json_decref(j);
}

static int audit_model(struct fx_audit *a, const char *path, const struct fx_audit_opts *o,
		       struct fx_err *err)
{
	struct fx_model *m = NULL;
	const struct fx_model_config *c;
	const struct fx_stset *set;
	size_t i;
	int ret;

	/* with --lora: the LoRAs are read against this model too */
	ret = fx_model_open_loras(&m, path, o ? o->loras : NULL, err);
	if (ret < 0)
		return ret;
	for (i = 0; i < fx_model_nloras(m); i++)
		fx_audit_line(a, "[OK] lora: '%s' (%s naming, %zu products) fits the model",
			      fx_lora_file_path(fx_model_lora(m, i)),
			      fx_lora_file_kind(fx_model_lora(m, i)),
			      fx_lora_file_count(fx_model_lora(m, i)));
	snprintf(a->kind, sizeof(a->kind), "model");
	c = fx_model_config(m);
	set = fx_model_files(m);
	a->nfiles = fx_stset_nfiles(set);
	for (i = 0; i < fx_stset_count(set); i++)
		count_tensor(a, fx_stset_at(set, i));
	/* every value: a model with NaN/Inf is no source for quantization */
	if ((ret = fx_model_scan_values(m, true, model_value_finding, a, err)) < 0) {
		fx_model_close(m);
		return ret;
	}
	/* FLUX, the default family, as before families; the others by title */
	if (!strcmp(c->family->name, "flux") ?
	    asprintf(&a->model_summary,
		     "FLUX.1 %s, %s layout, hidden %d (%d heads), %d double + %d single blocks, "
		     "in_channels %d, text %d, pooled %d, %zu fused groups",
		     c->guidance ? "dev" : "schnell",
		     fx_model_layout(m) == FX_LAYOUT_BFL ? "BFL" : "diffusers",
		     c->hidden, c->heads, c->num_double, c->num_single, c->in_channels,
		     c->joint_dim, c->pooled_dim, fx_model_ngroups(m)) < 0 :
	    asprintf(&a->model_summary,
		     "%s, %s layout, hidden %d (%d heads), %d blocks, in_channels %d, text %d, "
		     "%zu fused groups", c->family->title,
		     fx_model_layout(m) == FX_LAYOUT_BFL ? "BFL" : "diffusers",
		     c->hidden, c->heads, c->num_double + c->num_single, c->in_channels, c->joint_dim,
		     fx_model_ngroups(m)) < 0)
		a->model_summary = NULL;
	fx_model_close(m);
	return 0;
}

/* A packed checkpoint: what it holds (against the model given, when there
 * is one), then its numerics against that model. */
static int audit_packed(struct fx_audit *a, const struct fx_st *st, const struct fx_audit_opts *o,
			struct fx_err *err)
{
	struct fx_model *m = NULL;
	int ret;

	if (o && o->model && (ret = fx_model_open_loras(&m, o->model, o->loras, err)) < 0)
		return ret;
	fx_audit_packed(a, st, m);
	fx_model_close(m);
	return fx_audit_numerics(a, st, o, err);
}

static bool is_dir(const char *p)
{
	struct stat sb;

	return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool looks_like_model(const struct fx_st *st)
{
	return fx_st_find(st, "x_embedder.weight") || fx_st_find(st, "img_in.weight") ||
	       fx_st_find(st, "model.diffusion_model.img_in.weight");
}

static int audit_two_file(struct fx_audit *a, const char *dir, const char *tb, const char *ul,
			  const struct fx_audit_opts *o, struct fx_err *err)
{
	struct fx_st *b = NULL, *p = NULL;
	size_t i;
	int ret;

	(void)o;
	if ((ret = fx_st_open(&b, tb, err)) < 0 || (ret = fx_st_open(&p, ul, err)) < 0)
		goto out;
	snprintf(a->kind, sizeof(a->kind), "nunchaku-folder");
	a->nfiles = 2;
	for (i = 0; i < fx_st_count(b); i++)
		count_tensor(a, fx_st_at(b, i));
	for (i = 0; i < fx_st_count(p); i++)
		count_tensor(a, fx_st_at(p, i));
	fx_audit_packed_two(a, b, p, dir);
out:
	fx_st_close(b);
	fx_st_close(p);
	return ret;
}

int fx_audit_path(struct fx_audit *a, const char *path, const struct fx_audit_opts *o,
		  struct fx_err *err)
{
	struct fx_st *st = NULL;
	size_t i;
	int ret;

	snprintf(a->path, sizeof(a->path), "%s", path);
	if (is_dir(path)) {
		char tb[4096], ul[4096];

		snprintf(tb, sizeof(tb), "%s/transformer_blocks.safetensors", path);
		snprintf(ul, sizeof(ul), "%s/unquantized_layers.safetensors", path);
		if (access(tb, F_OK) == 0)
			return audit_two_file(a, path, tb, ul, o, err);
	}
	if (is_dir(path) || strstr(path, ".index.json"))
		return audit_model(a, path, o, err);
	ret = fx_st_open(&st, path, err);
	if (ret < 0)
		return ret;
	if (!fx_st_meta(st, "fx.format") && !fx_audit_is_packed(st) && looks_like_model(st)) {
		fx_st_close(st);
		return audit_model(a, path, o, err);
	}
	a->nfiles = 1;
	for (i = 0; i < fx_st_count(st); i++)
		count_tensor(a, fx_st_at(st, i));
	if (fx_st_meta(st, "fx.format")) {
		snprintf(a->kind, sizeof(a->kind), "%s", fx_st_meta(st, "fx.format"));
		audit_fx_header(a, st);
		audit_loras(a, st);
		if ((ret = fx_audit_provenance(a, st, o, err)) < 0 ||
		    (ret = fx_audit_prov(a, st, o, err)) < 0)
			goto fail;
		if (fx_audit_is_packed(st)) {
			if ((ret = audit_packed(a, st, o, err)) < 0)
				goto fail;
		}
		else if (!strcmp(fx_st_meta(st, "fx.format"), FX_FMT_BRANCH))
			fx_audit_branch(a, st);
	} else if (fx_audit_is_packed(st)) {
		snprintf(a->kind, sizeof(a->kind), "nunchaku");
		audit_loras(a, st);
		if ((ret = audit_packed(a, st, o, err)) < 0)
			goto fail;
	} else {
		snprintf(a->kind, sizeof(a->kind), "safetensors");
	}
	fx_st_close(st);
	return 0;
fail:
	fx_st_close(st);
	return ret;
}

int fx_audit_input(const struct fx_st *st, const char *want, const char *model_path,
		   const char *tool, struct fx_err *err)
{
	struct fx_audit_opts o = { .model = model_path };
	struct fx_audit a;
	size_t i;
	int ret;

	if ((ret = fx_file_expect(st, want, tool, err)) < 0)
		return ret;
	fx_audit_init(&a);
	snprintf(a.path, sizeof(a.path), "%s", fx_st_path(st));
	audit_fx_header(&a, st);
	if ((ret = fx_audit_prov(&a, st, model_path ? &o : NULL, err)) < 0)
		goto out;
	if (!strcmp(want, FX_FMT_BRANCH))
		fx_audit_branch(&a, st);
	for (i = 0; i < a.nfind; i++) {
		const struct fx_finding *f = &a.find[i];
		const char *msg = f->msg;
		size_t pl = strlen(fx_st_path(st));

		if (f->sev != FX_SEV_ERROR)
			continue;
		/* messages that already start with the file's name */
		if (msg[0] == '\'' && !strncmp(msg + 1, fx_st_path(st), pl) && !strncmp(msg + 1 + pl, "': ", 3))
			msg += pl + 4;
		ret = fx_error(err, !strcmp(f->check, "crc32") ? FX_E_HASH : FX_E_FORMAT,
			       "'%s': %s%s%s (fx-verify lists every finding)", fx_st_path(st),
			       f->where[0] ? f->where : "", f->where[0] ? ": " : "", msg);
		break;
	}
out:
	fx_audit_release(&a);
	return ret;
}

void *fx_audit_json(const struct fx_audit *a)
{
	json_t *o = json_object(), *f = json_array(), *dt = json_object(), *lines = json_array();
	size_t i;

	json_object_set_new(o, "path", json_string(a->path));
	json_object_set_new(o, "kind", json_string(a->kind));
	json_object_set_new(o, "format", a->format ? json_string(a->format) : json_null());
	json_object_set_new(o, "version", a->format ? json_integer(a->version) : json_null());
	json_object_set_new(o, "tool", a->tool ? json_string(a->tool) : json_null());
	json_object_set_new(o, "recipe", a->recipe ? json_string(a->recipe) : json_null());
	json_object_set_new(o, "params", a->params ? json_loads(a->params, 0, NULL) : json_null());
	json_object_set_new(o, "inputs", a->inputs ? json_loads(a->inputs, 0, NULL) : json_null());
	json_object_set_new(o, "files", json_integer((json_int_t)a->nfiles));
	json_object_set_new(o, "tensors", json_integer((json_int_t)a->ntensors));
	json_object_set_new(o, "bytes", json_integer((json_int_t)a->nbytes));
	for (i = 0; i < FX_DTYPE_COUNT; i++)
		if (a->dtype_count[i])
			json_object_set_new(dt, fx_dtype_name(i), json_integer((json_int_t)a->dtype_count[i]));
	json_object_set_new(o, "dtypes", dt);
	json_object_set_new(o, "model", a->model_summary ? json_string(a->model_summary) : json_null());
	for (i = 0; i < a->lines_n; i++)
		json_array_append_new(lines, json_string(a->lines[i]));
	json_object_set_new(o, "layers", lines);
	for (i = 0; i < a->nfind; i++) {
		json_t *e = json_object();

		json_object_set_new(e, "severity", json_string(fx_severity_name(a->find[i].sev)));
		json_object_set_new(e, "check", json_string(a->find[i].check));
		json_object_set_new(e, "where", json_string(a->find[i].where));
		json_object_set_new(e, "message", json_string(a->find[i].msg));
		json_array_append_new(f, e);
	}
	json_object_set_new(o, "findings", f);
	return o;
}
