/* What every stage shares: params and input identities -> recipe, the
 * "up to date" decision, per-layer reuse from the previous output, and the
 * atomic writing of an fx intermediate with its fx.* metadata. */
#ifndef FX_STAGE_H
#define FX_STAGE_H

#include "fx-err.h"
#include "fx-tensor.h"
#include "fx-st.h"

struct fx_stage;

/* tool: "fx-quant"; format: FX_FMT_QUANT; out: the output path. */
int fx_stage_new(struct fx_stage **out, const char *tool, const char *format,
		 const char *out_path, struct fx_err *err);
void fx_stage_free(struct fx_stage *s);   /* aborts an uncommitted output */

/* Parameters that affect content (canonical JSON is built from them). */
void fx_stage_param_str(struct fx_stage *s, const char *key, const char *val);
void fx_stage_param_int(struct fx_stage *s, const char *key, long long val);
void fx_stage_param_real(struct fx_stage *s, const char *key, double val);
/* Records the content identity of an input file under a role. */
int fx_stage_input(struct fx_stage *s, const char *role, const char *path, struct fx_err *err);
/* Records an already known identity (e.g. several shards). */
void fx_stage_input_id(struct fx_stage *s, const char *role, const char *id);
const char *fx_stage_params_json(const struct fx_stage *s);  /* canonical */

/* Computes the recipe; returns 1 when the output exists with that recipe
 * and verifies (nothing to do), 0 otherwise. With force, always 0. Also
 * loads the old output's per-layer recipes for reuse. */
int fx_stage_check(struct fx_stage *s, bool force, struct fx_err *err);
const char *fx_stage_recipe(const struct fx_stage *s);

/* Per-layer reuse: true when the previous output has this layer with the
 * same layer recipe (then copy its tensors with fx_stage_copy). */
bool fx_stage_reusable(const struct fx_stage *s, const char *layer, const char *layer_recipe);
void fx_stage_layer(struct fx_stage *s, const char *layer, const char *layer_recipe, bool reused);

/* Output: declare tensors, begin, write or copy, commit. */
int fx_stage_add(struct fx_stage *s, const char *name, enum fx_dtype dt, int ndim,
		 const int64_t *shape, struct fx_err *err);
void fx_stage_meta(struct fx_stage *s, const char *key, const char *val);
void fx_stage_reserve(struct fx_stage *s, size_t spare);
int fx_stage_begin(struct fx_stage *s, struct fx_err *err);
int fx_stage_write(struct fx_stage *s, const char *name, const void *data, size_t n,
		   struct fx_err *err);
/* Copies a tensor's bytes from the previous output. */
int fx_stage_copy(struct fx_stage *s, const char *name, struct fx_err *err);
int fx_stage_commit(struct fx_stage *s, struct fx_err *err);

/* Report: layers computed and reused (for logs and --json). */
size_t fx_stage_ncomputed(const struct fx_stage *s);
size_t fx_stage_nreused(const struct fx_stage *s);
/* JSON text {"output":..., "recipe":..., "up_to_date":b, "computed":[...], "reused":[...]};
 * malloc'ed. */
char *fx_stage_report_json(const struct fx_stage *s, bool up_to_date);

#endif
