/* fx.* metadata: read, validate, provenance, the shared "up to date" check. */
#include "fx-file.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <errno.h>

#include "fx-hash.h"
#include "fx-io.h"
#include "fx-model.h"

int fx_file_info(const struct fx_st *st, struct fx_file_info *info, struct fx_err *err)
{
	const char *v;
	char *end;
	long ver;

	memset(info, 0, sizeof(*info));
	info->format = fx_st_meta(st, "fx.format");
	if (!info->format)
		return 0;
	v = fx_st_meta(st, "fx.version");
	if (!v)
		return fx_error(err, FX_E_FORMAT, "'%s': fx.version missing", fx_st_path(st));
	ver = strtol(v, &end, 10);
	if (end == v || *end || ver < 1 || ver > 1000000)
		return fx_error(err, FX_E_FORMAT, "'%s': fx.version '%s' is not a positive integer",
				fx_st_path(st), v);
	info->version = (int)ver;
	info->tool = fx_st_meta(st, "fx.tool");
	info->params = fx_st_meta(st, "fx.params");
	info->inputs = fx_st_meta(st, "fx.inputs");
	info->recipe = fx_st_meta(st, "fx.recipe");
	info->layers = fx_st_meta(st, "fx.layers");
	info->crc32 = fx_st_meta(st, "fx.crc32");
	return 0;
}

int fx_file_expect(const struct fx_st *st, const char *want, const char *tool,
		   struct fx_err *err)
{
	struct fx_file_info info;
	int ret = fx_file_info(st, &info, err);

	if (ret < 0)
		return ret;
	if (!info.format)
		return fx_error(err, FX_E_FORMAT, "'%s': not an fx file (no fx.format), expected %s",
				fx_st_path(st), want);
	if (strcmp(info.format, want) != 0)
		return fx_error(err, FX_E_FORMAT, "'%s': expected %s, got %s",
				fx_st_path(st), want, info.format);
	if (info.version > FX_FILE_VERSION)
		return fx_error(err, FX_E_VERSION, "'%s': file is version %d, this %s supports up to %d",
				fx_st_path(st), info.version, tool ? tool : "fx", FX_FILE_VERSION);
	return 0;
}

int fx_file_check_crc(const struct fx_st *st, struct fx_err *err)
{
	const char *crcs = fx_st_meta(st, "fx.crc32");
	json_t *root;
	json_error_t jerr;
	size_t i;
	int ret = 0;

	if (!crcs)
		return fx_error(err, FX_E_FORMAT, "'%s': fx.crc32 missing", fx_st_path(st));
	root = json_loads(crcs, 0, &jerr);
	if (!root || !json_is_object(root)) {
		json_decref(root);
		return fx_error(err, FX_E_FORMAT, "'%s': fx.crc32 is not a JSON object", fx_st_path(st));
	}
	for (i = 0; i < fx_st_count(st); i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		json_t *v = json_object_get(root, t->name);
		unsigned long want;
		char *end;
		uint32_t got;

		if (!v || !json_is_string(v)) {
			ret = fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has no fx.crc32 entry",
				       fx_st_path(st), t->name);
			goto out;
		}
		want = strtoul(json_string_value(v), &end, 16);
		if (*end) {
			ret = fx_error(err, FX_E_FORMAT, "'%s': fx.crc32 entry of '%s' is not hex",
				       fx_st_path(st), t->name);
			goto out;
		}
		got = fx_crc32(0, t->data, t->nbytes);
		fx_tensor_release(t);
		if (got != (uint32_t)want) {
			ret = fx_error(err, FX_E_HASH,
				       "'%s': tensor '%s' fails its checksum (crc32 %08x, recorded %08lx)",
				       fx_st_path(st), t->name, got, want);
			goto out;
		}
	}
	if (json_object_size(root) != fx_st_count(st)) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': fx.crc32 lists %zu tensors, file has %zu",
			       fx_st_path(st), json_object_size(root), fx_st_count(st));
		goto out;
	}
out:
	json_decref(root);
	return ret;
}

char *fx_json_canonical(const char *json_text)
{
	json_error_t jerr;
	json_t *v = json_loads(json_text, JSON_DECODE_ANY, &jerr);
	char *s;

	if (!v)
		return NULL;
	s = json_dumps(v, JSON_SORT_KEYS | JSON_COMPACT | JSON_ENCODE_ANY);
	json_decref(v);
	return s;
}

int fx_file_recipe(char out[65], const char *format, int version,
		   const char *params_json, const char *inputs_json, struct fx_err *err)
{
	json_error_t jerr;
	json_t *root = json_object(), *p, *in;
	char *s;

	p = json_loads(params_json ? params_json : "{}", JSON_DECODE_ANY, &jerr);
	in = json_loads(inputs_json ? inputs_json : "{}", JSON_DECODE_ANY, &jerr);
	if (!root || !p || !in) {
		json_decref(root);
		json_decref(p);
		json_decref(in);
		return fx_error(err, FX_E_ARG, "recipe: params or inputs are not valid JSON");
	}
	json_object_set_new(root, "format", json_string(format));
	json_object_set_new(root, "version", json_integer(version));
	json_object_set_new(root, "params", p);
	json_object_set_new(root, "inputs", in);
	s = json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT);
	json_decref(root);
	if (!s)
		return fx_error(err, FX_E_NOMEM, "recipe: out of memory");
	fx_sha256_hex(out, s, strlen(s));
	free(s);
	return 0;
}

struct fx_layer_hash {
	struct fx_sha256 *h;
};

struct fx_layer_hash *fx_layer_hash_new(void)
{
	struct fx_layer_hash *lh = calloc(1, sizeof(*lh));

	if (lh && !(lh->h = fx_sha256_new())) {
		free(lh);
		lh = NULL;
	}
	return lh;
}

void fx_layer_hash_update(struct fx_layer_hash *h, const void *data, size_t n)
{
	fx_mem_prefault(data, n);
	fx_content_digest(h->h, data, n);   /* length-prefixed: boundaries unambiguous */
}

void fx_layer_hash_str(struct fx_layer_hash *h, const char *s)
{
	uint64_t len = strlen(s);

	fx_sha256_update(h->h, &len, sizeof(len));
	fx_sha256_update(h->h, s, len);
}

void fx_layer_hash_final(struct fx_layer_hash *h, char out[65])
{
	fx_sha256_final(h->h, out);
	free(h);
}

int fx_file_up_to_date(const char *path, const char *format, const char *recipe,
		       struct fx_err *err)
{
	struct fx_st *st = NULL;
	struct fx_file_info info;
	struct fx_err e2;
	struct stat sb;
	int ret = 0;

	(void)err;
	if (stat(path, &sb) != 0)
		return 0;
	/* an unreadable or foreign old output is simply rebuilt */
	if (fx_st_open(&st, path, &e2) < 0)
		return 0;
	if (fx_file_info(st, &info, &e2) < 0 || !info.format || strcmp(info.format, format) ||
	    info.version != FX_FILE_VERSION || !info.recipe || strcmp(info.recipe, recipe))
		goto out;
	if (fx_file_check_crc(st, &e2) < 0)
		goto out;
	ret = 1;
out:
	fx_st_close(st);
	return ret;
}

int fx_input_id(char out[65], const char *path, struct fx_err *err)
{
	struct fx_stset *set = NULL;
	struct fx_sha256 *h = NULL;
	char *src = NULL, *cfg = NULL;
	struct stat sb;
	size_t i;
	int ret;

	fx_test_sync("input-id", path);
	if (stat(path, &sb) != 0)
		return fx_error(err, FX_E_IO, "cannot open '%s': %s", path, strerror(errno));
	if (S_ISREG(sb.st_mode)) {
		struct fx_st *st = NULL;
		const char *recipe;

		/* an fx file is identified by its recipe plus its CRCs, read from
		 * the file the run has open (fx_st_check_same) */
		if (fx_st_open(&st, path, NULL) == 0 && fx_st_meta(st, "fx.format") &&
		    (recipe = fx_st_meta(st, "fx.recipe")) && fx_st_meta(st, "fx.crc32")) {
			struct fx_sha256 *hh;
			const char *crc = fx_st_meta(st, "fx.crc32");

			if ((ret = fx_st_check_same(st, err)) < 0) {
				fx_st_close(st);
				return ret;
			}
			hh = fx_sha256_new();
			fx_sha256_update(hh, recipe, strlen(recipe));
			fx_sha256_update(hh, crc, strlen(crc));
			fx_sha256_final(hh, out);
			fx_st_close(st);
			return 0;
		}
		fx_st_close(st);
	}
	/* a model: resolved as the loader resolves it (a pipeline folder reads
	 * transformer/, a shard reads its set) */
	if ((ret = fx_model_resolve(path, &src, &cfg, err)) < 0)
		return ret;
	free(cfg);
	if (stat(src, &sb) == 0 && S_ISREG(sb.st_mode) && strstr(src, ".index.json") == NULL) {
		ret = fx_file_sha256(out, src, err);
		free(src);
		return ret;
	}
	/* a model folder or index: hash of the shards' hashes in name order */
	ret = fx_stset_open(&set, src, err);
	free(src);
	if (ret < 0)
		return ret;
	h = fx_sha256_new();
	for (i = 0; i < fx_stset_nfiles(set); i++) {
		char one[65];

		ret = fx_file_sha256(one, fx_st_path(fx_stset_file(set, i)), err);
		if (ret < 0)
			goto out;
		fx_sha256_update(h, one, 64);
	}
	fx_sha256_final(h, out);
	h = NULL;
	ret = 0;
out:
	if (h)
		fx_sha256_final(h, (char[65]){0});
	fx_stset_close(set);
	return ret;
}

static int merge_map(json_t *dst, const struct fx_st *st, const char *key, bool unique,
		     struct fx_err *err)
{
	const char *txt = fx_st_meta(st, key), *k;
	json_t *m, *v;

	if (!txt)
		return fx_error(err, FX_E_FORMAT, "'%s': %s missing", fx_st_path(st), key);
	m = json_loads(txt, 0, NULL);
	if (!m || !json_is_object(m)) {
		json_decref(m);
		return fx_error(err, FX_E_FORMAT, "'%s': %s is not a JSON object", fx_st_path(st), key);
	}
	json_object_foreach(m, k, v) {
		if (unique && json_object_get(dst, k)) {
			int ret = fx_error(err, FX_E_FORMAT, "'%s': layer '%s' is also in another shard",
					   fx_st_path(st), k);

			json_decref(m);
			return ret;
		}
		json_object_set(dst, k, v);
	}
	json_decref(m);
	return 0;
}

int fx_shards_id(char out[65], const struct fx_st *const *files, int n, struct fx_err *err)
{
	json_t *layers = json_object(), *crcs = json_object();
	char *a = NULL, *b = NULL;
	struct fx_sha256 *h;
	int i, ret = 0;

	for (i = 0; i < n && ret == 0; i++) {
		ret = merge_map(layers, files[i], "fx.layers", true, err);
		if (ret == 0)
			ret = merge_map(crcs, files[i], "fx.crc32", false, err);
	}
	if (ret == 0) {
		a = json_dumps(layers, JSON_SORT_KEYS | JSON_COMPACT);
		b = json_dumps(crcs, JSON_SORT_KEYS | JSON_COMPACT);
		if (!a || !b) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
		} else {
			h = fx_sha256_new();
			fx_sha256_update(h, a, strlen(a));
			fx_sha256_update(h, "|", 1);
			fx_sha256_update(h, b, strlen(b));
			fx_sha256_final(h, out);
		}
	}
	free(a);
	free(b);
	json_decref(layers);
	json_decref(crcs);
	return ret;
}

int fx_file_input_is(const struct fx_st *st, const char *role, const char *id)
{
	const char *txt = fx_st_meta(st, "fx.inputs");
	json_t *j = txt ? json_loads(txt, 0, NULL) : NULL;
	const char *have = json_is_object(j) ? json_string_value(json_object_get(j, role)) : NULL;
	int ret = !have ? -1 : !strcmp(have, id);

	json_decref(j);
	return ret;
}
