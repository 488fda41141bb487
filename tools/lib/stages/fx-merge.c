#include "fx-merge.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-cli.h"
#include "fx-file.h"
#include "fx-stage.h"
#include "fx-st.h"

struct shard {
	struct fx_st *st;
	json_t *params, *inputs, *layers;
	int first, last;
};

static int cmp_first(const void *a, const void *b)
{
	const struct shard *x = a, *y = b;

	return (x->first > y->first) - (x->first < y->first);
}

static int load(struct shard *s, const char *path, const char *tool, const char *format,
		struct fx_err *err)
{
	const char *blocks;
	int ret;

	if ((ret = fx_st_open(&s->st, path, err)) < 0 ||
	    (ret = fx_file_expect(s->st, format, tool, err)) < 0 ||
	    (ret = fx_file_check_crc(s->st, err)) < 0)
		return ret;
	s->params = json_loads(fx_st_meta(s->st, "fx.params"), 0, NULL);
	s->inputs = json_loads(fx_st_meta(s->st, "fx.inputs"), 0, NULL);
	s->layers = json_loads(fx_st_meta(s->st, "fx.layers") ? fx_st_meta(s->st, "fx.layers") : "{}", 0, NULL);
	blocks = json_string_value(json_object_get(s->params, "blocks"));
	if (!s->params || !s->inputs || !s->layers || !blocks || !fx_parse_range(blocks, &s->first, &s->last))
		return fx_error(err, FX_E_FORMAT, "'%s': fx.params has no block range", path);
	return 0;
}

int fx_merge_run(const char *tool, const char *format, const char *const *paths, int n,
		 const char *out, bool force, bool *up_to_date, struct fx_stage **stage_out,
		 struct fx_err *err)
{
	struct shard *sh = calloc(n > 0 ? n : 1, sizeof(*sh));
	struct fx_stage *s = NULL;
	json_t *params = NULL;
	const char *key;
	json_t *v;
	char blocks[32];
	size_t t;
	int i, ret = 0;

	*up_to_date = false;
	if (stage_out)
		*stage_out = NULL;
	if (!sh)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	if (n < 1) {
		ret = fx_error(err, FX_E_ARG, "nothing to merge");
		goto out;
	}
	for (i = 0; i < n; i++)
		if ((ret = load(&sh[i], paths[i], tool, format, err)) < 0)
			goto out;
	qsort(sh, n, sizeof(*sh), cmp_first);
	for (i = 1; i < n; i++) {
		json_t *a = json_deep_copy(sh[0].params), *b = json_deep_copy(sh[i].params);
		bool same;

		json_object_del(a, "blocks");
		json_object_del(b, "blocks");
		same = json_equal(a, b);
		json_decref(a);
		json_decref(b);
		if (!same) {
			ret = fx_error(err, FX_E_FORMAT, "'%s' and '%s' were made with different parameters",
				       fx_st_path(sh[0].st), fx_st_path(sh[i].st));
			goto out;
		}
		if (!json_equal(sh[0].inputs, sh[i].inputs)) {
			ret = fx_error(err, FX_E_HASH, "'%s' and '%s' were made from different inputs",
				       fx_st_path(sh[0].st), fx_st_path(sh[i].st));
			goto out;
		}
		if (sh[i].first <= sh[i - 1].last) {
			ret = fx_error(err, FX_E_FORMAT, "'%s' (blocks %d-%d) overlaps '%s' (blocks %d-%d)",
				       fx_st_path(sh[i].st), sh[i].first, sh[i].last,
				       fx_st_path(sh[i - 1].st), sh[i - 1].first, sh[i - 1].last);
			goto out;
		}
		if (sh[i].first != sh[i - 1].last + 1) {
			ret = fx_error(err, FX_E_FORMAT, "blocks %d-%d are in no shard (gap between '%s' and '%s')",
				       sh[i - 1].last + 1, sh[i].first - 1, fx_st_path(sh[i - 1].st),
				       fx_st_path(sh[i].st));
			goto out;
		}
	}
	/* the merged file is what one run over the whole range writes */
	snprintf(blocks, sizeof(blocks), "%d-%d", sh[0].first, sh[n - 1].last);
	if ((ret = fx_stage_new(&s, tool, format, out, err)) < 0)
		goto out;
	params = json_deep_copy(sh[0].params);
	json_object_set_new(params, "blocks", json_string(blocks));
	json_object_foreach(params, key, v) {
		if (json_is_string(v))
			fx_stage_param_str(s, key, json_string_value(v));
		else if (json_is_integer(v))
			fx_stage_param_int(s, key, json_integer_value(v));
		else if (json_is_real(v))
			fx_stage_param_real(s, key, json_real_value(v));
	}
	json_object_foreach(sh[0].inputs, key, v)
		fx_stage_input_id(s, key, json_string_value(v));
	ret = fx_stage_check(s, force, err);
	if (ret < 0)
		goto out;
	if (ret == 1) {
		*up_to_date = true;
		ret = 0;
		goto out;
	}
	for (i = 0; i < n; i++)
		for (t = 0; t < fx_st_count(sh[i].st); t++) {
			const struct fx_tensor *x = fx_st_at(sh[i].st, t);

			if ((ret = fx_stage_add(s, x->name, x->dtype, x->ndim, x->shape, err)) < 0)
				goto out;
		}
	{
		const char *model = fx_st_meta(sh[0].st, "fx.model");
		const char *loras = fx_st_meta(sh[0].st, "fx.loras");

		if (model)
			fx_stage_meta(s, "fx.model", model);
		if (loras)   /* one model identity across the shards: theirs */
			fx_stage_meta(s, "fx.loras", loras);
	}
	if ((ret = fx_stage_begin(s, err)) < 0)
		goto out;
	for (i = 0; i < n; i++) {
		for (t = 0; t < fx_st_count(sh[i].st); t++) {
			const struct fx_tensor *x = fx_st_at(sh[i].st, t);

			if ((ret = fx_stage_write(s, x->name, x->data, x->nbytes, err)) < 0)
				goto out;
			fx_tensor_release(x);
		}
		json_object_foreach(sh[i].layers, key, v)
			fx_stage_layer(s, key, json_string_value(v), false);
	}
	ret = fx_stage_commit(s, err);
out:
	json_decref(params);
	for (i = 0; i < n; i++) {
		fx_st_close(sh[i].st);
		json_decref(sh[i].params);
		json_decref(sh[i].inputs);
		json_decref(sh[i].layers);
	}
	free(sh);
	if (stage_out && ret >= 0)
		*stage_out = s;
	else
		fx_stage_free(s);
	return ret;
}
