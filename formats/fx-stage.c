#include "fx-stage.h"

#include <jansson.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fx-io.h"
#include "fx-log.h"
#include "fx-file.h"

struct fx_stage {
	char *tool, *format, *out_path;
	json_t *params, *inputs;
	char *params_canon;
	char recipe[65];
	struct fx_st *old;        /* previous output, for per-layer reuse */
	json_t *old_layers;
	json_t *layers;           /* layer -> recipe of the new output */
	json_t *computed, *reused;
	struct fx_stw *w;
	struct fx_out *out;
	size_t spare, ntensors;
	bool begun, force;
};

/* Input hashes are cached next to the outputs (model folders may be read-only);
 * an FX_HASH_CACHE the user set wins. */
static void set_hash_cache(const char *out_path)
{
	char *dup, *dir;
	char path[4096];

	if (getenv("FX_HASH_CACHE") || !(dup = strdup(out_path)))
		return;
	dir = dirname(dup);
	snprintf(path, sizeof(path), "%s/.fx-hash-cache", dir);
	setenv("FX_HASH_CACHE", path, 0);
	free(dup);
}

int fx_stage_new(struct fx_stage **out, const char *tool, const char *format,
		 const char *out_path, struct fx_err *err)
{
	struct fx_stage *s = calloc(1, sizeof(*s));

	*out = NULL;
	if (!s)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	set_hash_cache(out_path);
	s->tool = strdup(tool);
	s->format = strdup(format);
	s->out_path = strdup(out_path);
	s->params = json_object();
	s->inputs = json_object();
	s->layers = json_object();
	s->computed = json_array();
	s->reused = json_array();
	s->spare = 4096;
	if (!s->tool || !s->format || !s->out_path || !s->params || !s->inputs || !s->layers) {
		fx_stage_free(s);
		return fx_error(err, FX_E_NOMEM, "out of memory");
	}
	*out = s;
	return 0;
}

void fx_stage_free(struct fx_stage *s)
{
	if (!s)
		return;
	fx_stw_free(s->w);   /* its writer thread first: it may still hold the fd */
	fx_out_abort(s->out);
	fx_st_close(s->old);
	json_decref(s->old_layers);
	json_decref(s->params);
	json_decref(s->inputs);
	json_decref(s->layers);
	json_decref(s->computed);
	json_decref(s->reused);
	free(s->params_canon);
	free(s->tool);
	free(s->format);
	free(s->out_path);
	free(s);
}

void fx_stage_param_str(struct fx_stage *s, const char *key, const char *val)
{
	json_object_set_new(s->params, key, val ? json_string(val) : json_null());
}

void fx_stage_param_int(struct fx_stage *s, const char *key, long long val)
{
	json_object_set_new(s->params, key, json_integer(val));
}

void fx_stage_param_real(struct fx_stage *s, const char *key, double val)
{
	json_object_set_new(s->params, key, json_real(val));
}

int fx_stage_input(struct fx_stage *s, const char *role, const char *path, struct fx_err *err)
{
	char id[65];
	int ret = fx_input_id(id, path, err);

	if (ret < 0)
		return ret;
	fx_stage_input_id(s, role, id);
	return 0;
}

void fx_stage_input_id(struct fx_stage *s, const char *role, const char *id)
{
	json_object_set_new(s->inputs, role, json_string(id));
}

const char *fx_stage_params_json(const struct fx_stage *s)
{
	return s->params_canon;
}

const char *fx_stage_recipe(const struct fx_stage *s)
{
	return s->recipe;
}

static void load_old(struct fx_stage *s)
{
	struct fx_st *st = NULL;
	const char *layers;

	if (fx_st_open(&st, s->out_path, NULL) < 0)
		return;
	if (fx_file_expect(st, s->format, s->tool, NULL) < 0 ||
	    fx_file_check_crc(st, NULL) < 0 || !(layers = fx_st_meta(st, "fx.layers"))) {
		fx_st_close(st);
		return;
	}
	s->old_layers = json_loads(layers, 0, NULL);
	if (!s->old_layers || !json_is_object(s->old_layers)) {
		json_decref(s->old_layers);
		s->old_layers = NULL;
		fx_st_close(st);
		return;
	}
	s->old = st;
	fx_out_rewrites(s->out_path);   /* read for reuse, not an input */
}

int fx_stage_check(struct fx_stage *s, bool force, struct fx_err *err)
{
	char *inputs;
	int ret;

	/* before the up-to-date probe reads the output and before any work: an
	 * output that is an input, a link, a device or a FIFO is refused */
	if ((ret = fx_out_check(s->out_path, err)) < 0)
		return ret;
	fx_out_sweep(s->out_path);
	free(s->params_canon);
	s->params_canon = json_dumps(s->params, JSON_SORT_KEYS | JSON_COMPACT);
	inputs = json_dumps(s->inputs, JSON_SORT_KEYS | JSON_COMPACT);
	if (!s->params_canon || !inputs) {
		free(inputs);
		return fx_error(err, FX_E_NOMEM, "out of memory");
	}
	ret = fx_file_recipe(s->recipe, s->format, FX_FILE_VERSION, s->params_canon, inputs, err);
	free(inputs);
	if (ret < 0)
		return ret;
	s->force = force;
	if (force)
		return 0;
	ret = fx_file_up_to_date(s->out_path, s->format, s->recipe, err);
	if (ret == 0)
		load_old(s);
	return ret;
}

bool fx_stage_reusable(const struct fx_stage *s, const char *layer, const char *layer_recipe)
{
	json_t *v;

	if (!s->old_layers)
		return false;
	v = json_object_get(s->old_layers, layer);
	return v && json_is_string(v) && !strcmp(json_string_value(v), layer_recipe);
}

void fx_stage_layer(struct fx_stage *s, const char *layer, const char *layer_recipe, bool reused)
{
	json_object_set_new(s->layers, layer, json_string(layer_recipe));
	json_array_append_new(reused ? s->reused : s->computed, json_string(layer));
	fx_log_debug("%s %s", reused ? "reused" : "computed", layer);
}

int fx_stage_add(struct fx_stage *s, const char *name, enum fx_dtype dt, int ndim,
		 const int64_t *shape, struct fx_err *err)
{
	int ret;

	if (!s->w && (ret = fx_stw_new(&s->w, FX_STW_CRC32, err)) < 0)
		return ret;
	s->ntensors++;
	return fx_stw_add(s->w, name, dt, ndim, shape, err);
}

void fx_stage_meta(struct fx_stage *s, const char *key, const char *val)
{
	/* set before the first tensor is declared (fx.loras with the model id) */
	if (!s->w && fx_stw_new(&s->w, FX_STW_CRC32, NULL) < 0)
		return;
	fx_stw_meta(s->w, key, val, NULL);
}

void fx_stage_reserve(struct fx_stage *s, size_t spare)
{
	s->spare = spare;
}

static bool own_output(const struct fx_stage *s)
{
	struct fx_st *st = NULL;
	bool own;

	if (fx_st_open(&st, s->out_path, NULL) < 0)
		return false;
	own = fx_st_meta(st, "fx.format") && !strcmp(fx_st_meta(st, "fx.format"), s->format);
	fx_st_close(st);
	return own;
}

int fx_stage_begin(struct fx_stage *s, struct fx_err *err)
{
	char tool[128], ver[16];
	char *inputs;
	int ret;

	if (!s->w && (ret = fx_stw_new(&s->w, FX_STW_CRC32, err)) < 0)
		return ret;
	inputs = json_dumps(s->inputs, JSON_SORT_KEYS | JSON_COMPACT);
	snprintf(tool, sizeof(tool), "%s %s", s->tool, FX_VERSION);
	snprintf(ver, sizeof(ver), "%d", FX_FILE_VERSION);
	fx_stw_meta(s->w, "fx.format", s->format, NULL);
	fx_stw_meta(s->w, "fx.version", ver, NULL);
	fx_stw_meta(s->w, "fx.tool", tool, NULL);
	fx_stw_meta(s->w, "fx.params", s->params_canon ? s->params_canon : "{}", NULL);
	fx_stw_meta(s->w, "fx.inputs", inputs ? inputs : "{}", NULL);
	fx_stw_meta(s->w, "fx.recipe", s->recipe, NULL);
	free(inputs);
	/* fx.layers is filled at commit; reserve room for one entry per layer */
	fx_stw_reserve(s->w, s->spare + 160 * (s->ntensors + 16));
	/* a rerun replaces its own earlier output; anything else needs --force */
	if (!s->force && access(s->out_path, F_OK) == 0 && !own_output(s))
		return fx_error(err, FX_E_ARG, "output '%s' exists and is not an %s file (use --force to overwrite)",
				s->out_path, s->format);
	ret = fx_out_open(&s->out, s->out_path, true, err);
	if (ret < 0)
		return ret;
	fx_test_sync("stage-begin", NULL);
	ret = fx_stw_begin(s->w, fx_out_fd(s->out), err);
	if (ret < 0)
		return ret;
	s->begun = true;
	return 0;
}

int fx_stage_write(struct fx_stage *s, const char *name, const void *data, size_t n,
		   struct fx_err *err)
{
	return fx_stw_write(s->w, name, data, n, err);
}

int fx_stage_copy(struct fx_stage *s, const char *name, struct fx_err *err)
{
	const struct fx_tensor *t = s->old ? fx_st_find(s->old, name) : NULL;

	if (!t)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' missing from the previous output",
				s->out_path, name);
	return fx_stw_write(s->w, name, t->data, t->nbytes, err);
}

int fx_stage_commit(struct fx_stage *s, struct fx_err *err)
{
	char *layers = json_dumps(s->layers, JSON_SORT_KEYS | JSON_COMPACT);
	int ret;

	if (!layers)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	ret = fx_stw_meta(s->w, "fx.layers", layers, err);
	free(layers);
	if (ret < 0)
		return ret;
	ret = fx_stw_finish(s->w, err);
	if (ret < 0)
		return ret;
	/* the old output stays mapped until the new one replaces it */
	ret = fx_out_commit(s->out, err);
	s->out = NULL;
	return ret;
}

size_t fx_stage_ncomputed(const struct fx_stage *s)
{
	return json_array_size(s->computed);
}

size_t fx_stage_nreused(const struct fx_stage *s)
{
	return json_array_size(s->reused);
}

char *fx_stage_report_json(const struct fx_stage *s, bool up_to_date)
{
	json_t *o = json_object();
	char *txt;

	json_object_set_new(o, "schema", json_string("fx-stage/1"));
	json_object_set_new(o, "tool", json_string(s->tool));
	json_object_set_new(o, "output", json_string(s->out_path));
	json_object_set_new(o, "recipe", json_string(s->recipe));
	json_object_set_new(o, "up_to_date", json_boolean(up_to_date));
	json_object_set_new(o, "computed", json_copy(s->computed));
	json_object_set_new(o, "reused", json_copy(s->reused));
	txt = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(o);
	return txt;
}
