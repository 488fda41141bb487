/* What a model family (FLUX.1, Qwen-Image, ...) tells the rest of fx.
 *
 * The generic model reader (fx-model.c) resolves a path, opens the tensors
 * and asks each registered family whether they are its model; the family
 * then infers or parses its config and declares its fused groups and plain
 * tensors through the builder calls below. Stages, packers, the audit and
 * metadata ask the family of a model (fx_model_config(m)->family) for
 * everything architecture-specific. Families live in tools/lib/<name>/;
 * tools/lib/fx-families.c lists them (the one registry). */
#ifndef FX_FAMILY_H
#define FX_FAMILY_H

#include <stdbool.h>
#include <stdint.h>

#include "fx-err.h"

struct fx_model;
struct fx_model_config;
struct fx_synth_sink;
struct fx_tensor;
struct fx_group;

/* Tensor suffixes of one W4A4 module in the runtime's file: FLUX's C++
 * names (smooth, lora_down ...) or the Python module names of the newer
 * loaders (smooth_factor, proj_down ...). */
struct fx_packed_names {
	const char *smooth, *smooth_orig, *down, *up;
};

struct fx_family {
	const char *name;            /* "flux": --family, fx.family, file names */
	const char *title;           /* "FLUX.1" for messages */
	const char *diffusers_class; /* config.json _class_name */

	/* Whether the model's tensors (fx_model_build_*) are this family's:
	 * 1 yes (prefix and layout set), 0 no, < 0 an error that also names
	 * what is missing. Called in registry order; the last family's
	 * error is the one reported when none matches. */
	int (*detect)(struct fx_model *m, bool last, struct fx_err *err);
	/* config.json text -> config (path for messages). */
	int (*parse_config)(struct fx_model *m, const char *text, const char *path,
			    struct fx_err *err);
	/* No config.json: config from the tensor shapes. */
	int (*infer_config)(struct fx_model *m, struct fx_err *err);
	/* Declares every plain tensor and fused group, checking shapes. */
	int (*build)(struct fx_model *m, struct fx_err *err);
	/* A diffusers config.json for c (malloc'ed). */
	int (*config_to_json)(const struct fx_model_config *c, char **out, struct fx_err *err);
	/* "a FLUX transformer with 2 double and 2 single blocks" for messages. */
	void (*describe)(const struct fx_model_config *c, char *buf, size_t cap);
	/* Block kinds: prefixes of kind 0 and 1 ("transformer_blocks",
	 * "single_transformer_blocks"); NULL when the family has one kind. */
	const char *block_prefix[2];

	/* ---- the runtime's file ---- */
	const struct fx_packed_names *packed;
	/* The name a plain tensor (diffusers name) has in the packed file. */
	const char *(*packed_plain_name)(const char *dname, char *buf, size_t cap);
	const char *model_class;     /* metadata model_class */
	bool comfy_config;           /* writes comfy_config */
	bool two_file_form;          /* the loader also reads a two-file folder */

	/* Every tensor of a synthetic model of config c (bfl: the family's
	 * other layout), in file order; < 0 when the sink fails. */
	int (*synth_tensors)(const struct fx_model_config *c, bool bfl,
			     const struct fx_synth_sink *s);
};

/* fx-synth: one tensor of the file written, made of the diffusers tensors
 * parts[0..nparts) stacked by rows (the generator fills by diffusers name);
 * swap: its two row halves are swapped (BFL norm_out). */
struct fx_synth_sink {
	void *ctx;
	int (*tensor)(void *ctx, const char *name, int ndim, int64_t d0, int64_t d1, bool swap,
		      int nparts, const char *const *parts, const int64_t *rows);
};

/* ---- builder calls (only inside detect/infer_config/build) ---- */
enum fx_layout;
enum fx_group_kind;

/* The tensor "<prefix><name>" or NULL; its file for messages. */
const struct fx_tensor *fx_model_build_find(const struct fx_model *m, const char *name);
const char *fx_model_build_file(const struct fx_model *m, const struct fx_tensor *t);
int64_t fx_model_build_dim(const struct fx_model *m, const char *name, int ax);
/* Every tensor of the files (for scanning names), and the path opened. */
size_t fx_model_build_count(const struct fx_model *m);
const struct fx_tensor *fx_model_build_at(const struct fx_model *m, size_t i);
const char *fx_model_build_src(const struct fx_model *m);
void fx_model_build_set_layout(struct fx_model *m, enum fx_layout layout, const char *prefix);
const char *fx_model_build_prefix(const struct fx_model *m);
struct fx_model_config *fx_model_build_config(struct fx_model *m);
/* Highest block index + 1 of names "<prefix><block>.<i>." (0 when none). */
int fx_model_build_count_blocks(const struct fx_model *m, const char *block, int *n,
				struct fx_err *err);
/* Checks a source tensor (present, dtype, shape; ndim 1 or 2) and marks it
 * used. */
int fx_model_build_want(struct fx_model *m, const char *name, int ndim, int64_t d0, int64_t d1,
			const struct fx_tensor **out, struct fx_err *err);
/* "<base>.weight" [n,k] and, when b is not NULL, "<base>.bias" [n]. */
int fx_model_build_want_linear(struct fx_model *m, const char *base, int64_t n, int64_t k,
			       const struct fx_tensor **w, const struct fx_tensor **b,
			       struct fx_err *err);
/* A plain tensor under its diffusers name dname read from srcname; swap:
 * its two row halves are swapped in the source (BFL norm_out). */
int fx_model_build_plain(struct fx_model *m, const char *dname, const char *srcname, int ndim,
			 int64_t d0, int64_t d1, bool swap, struct fx_err *err);
/* A new fused group "<block prefix>.<fused>" (fused must be static). */
struct fx_group *fx_model_build_group(struct fx_model *m, bool single, int blk,
				      const char *fused, enum fx_group_kind kind, int64_t n,
				      int64_t k, int chunks, bool gelu);
int fx_model_build_member(struct fx_model *m, struct fx_group *g, const char *name,
			  const struct fx_tensor *w, const struct fx_tensor *b, int64_t row0,
			  int64_t nrows, int64_t col0, int64_t out_row0, struct fx_err *err);

/* An integer config key (default def when absent or null; lo..hi). */
struct json_t;
int fx_json_int(struct json_t *o, const char *key, int def, int lo, int hi, int *v,
		const char *path, struct fx_err *err);

/* fx_model_open and fx_model_open_loras with the given families (NULL-
 * terminated, detection order); the registry (tools/lib/fx-families.c)
 * defines those two with every family fx has. */
struct fx_loras;
int fx_model_open_families(struct fx_model **out, const char *path,
			   const struct fx_family *const *fams, struct fx_err *err);
int fx_model_open_loras_families(struct fx_model **out, const char *path,
				 const struct fx_loras *l, const struct fx_family *const *fams,
				 struct fx_err *err);

#endif
