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
struct fx_runner;
struct fx_run_hooks;
struct fx_run_params;
struct fx_st;
struct fx_device;
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

	/* The family's forward and sampler, for calibration and evaluation
	 * (struct fx_runner below). */
	const struct fx_runner_ops *run;

	/* What the runtime's file holds and how its loader metadata reads, for
	 * fx-verify and fx-meta when no model is at hand (struct
	 * fx_family_file below). */
	const struct fx_family_file *file;
};

/* ---- the forward and sampler of a family (fx-calib, fx-eval) ---- */

struct fx_run_hooks {
	void *ctx;
	/* y (m, g->n) = x (m, g->k)·Wᵀ + b of fused group g; NULL: dense f32 */
	int (*linear)(void *ctx, const struct fx_group *g, const float *x, int64_t m, float *y,
		      struct fx_err *err);
	/* The input of every fused group once per forward, before its linear. */
	int (*capture)(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		       struct fx_err *err);
	/* Before each forward: step, its sigma, and the pass (0 the prompt, 1
	 * the negative prompt of true classifier-free guidance). */
	int (*step_begin)(void *ctx, int step, float sigma, int pass, struct fx_err *err);
};

/* Sampling settings; a negative or zero value takes the family's default
 * for the model (fx_runner_ops.defaults fills them all). */
struct fx_run_params {
	int width, height, steps;
	float guidance;          /* FLUX guidance embedder; Qwen-Image true-CFG scale */
	uint64_t seed;
};

struct fx_runner_ops {
	/* The conditioning file's tensors checked against the model: *prompts
	 * is how many prompts it holds. cond_path names the file in errors. */
	int (*open)(struct fx_runner **out, const struct fx_model *m, const struct fx_st *cond,
		    const char *cond_path, int64_t *prompts, struct fx_err *err);
	void (*free)(struct fx_runner *r);
	void (*defaults)(const struct fx_model_config *c, struct fx_run_params *p);
	/* Packed latent tokens of a resolution, or FX_E_ARG. */
	int (*tokens)(const struct fx_model_config *c, int width, int height, int64_t *ni,
		      struct fx_err *err);
	int (*set_device)(struct fx_runner *r, const struct fx_device *dev, bool bf16_gemm,
			  struct fx_err *err);
	void (*set_hooks)(struct fx_runner *r, const struct fx_run_hooks *h);
	/* One trajectory of prompt p from the seed's noise; out: the final
	 * packed latents (tokens, in_channels). */
	int (*sample)(struct fx_runner *r, int64_t p, const struct fx_run_params *par, float *out,
		      struct fx_err *err);
	/* The dense f32 linear of a group (for hooks that handle some). */
	int (*linear_dense)(struct fx_runner *r, const struct fx_group *g, const float *x,
			    int64_t m, float *y, struct fx_err *err);
};

/* fx-synth: one tensor of the file written, made of the diffusers tensors
 * parts[0..nparts) stacked by rows (the generator fills by diffusers name);
 * swap: its two row halves are swapped (BFL norm_out). */
struct fx_synth_sink {
	void *ctx;
	int (*tensor)(void *ctx, const char *name, int ndim, int64_t d0, int64_t d1, bool swap,
		      int nparts, const char *const *parts, const int64_t *rows);
};

/* ---- the runtime's file of a family (fx-verify, fx-meta) ---- */

/* One module of a block in the runtime's file, "<block prefix>.<i>.<name>":
 * N = nd·D + nf·F outputs and K = kd·D + kf·F inputs (D the hidden width,
 * F the MLP's). */
struct fx_family_module {
	const char *name;            /* "qkv_proj", "attn.to_qkv" */
	bool adaln;                  /* W4A16 modulation; else W4A4 */
	int nd, nf, kd, kf;
	int members;                 /* source linears fused by rows */
	bool gelu;                   /* input from GELU: the INT4 shift */
};

/* A config.json integer the tensors fix: its key, the field of struct
 * fx_model_config (offsetof, an int) and the finding when they differ,
 * given the config's value then the file's ("config num_layers %d, file
 * has %d double blocks"). */
struct fx_family_config_key {
	const char *key;
	size_t field;
	const char *fmt;
};

struct fx_st;

struct fx_family_file {
	/* Modules of a block of kind 0 and 1 (block_prefix), in the order of
	 * the model's groups. */
	const struct fx_family_module *modules[2];
	size_t nmodules[2];
	/* Unquantized tensors of a block of each kind (packed names): BF16,
	 * [norm_dim] (0: the head dim, the same in every block). */
	const char *const *norms[2];
	size_t nnorms[2];
	int norm_dim;
	/* Top-level unquantized tensors (packed names), BF16; the first is the
	 * [D, in_channels] input embedder that sizes the model. */
	const char *const *plain;
	size_t nplain;
	/* Source names in a block that must not remain (a layer left in BF16
	 * where its module belongs). */
	const char *const *leftovers;
	size_t nleftovers;
	bool tscale_required;        /* NVFP4 W4A4 modules need wtscale or wcscales */
	bool strict;                 /* the loader refuses every other key (INT4's
				      * wtscale and wcscales too) */

	/* ---- loader metadata ---- */
	bool config_builds;          /* the loader builds the model from config: a
				      * config unlike the tensors is an error,
				      * else a warning */
	bool config_class;           /* config must name diffusers_class */
	bool model_class_required;   /* model_class missing or other: an error,
				      * else a warning (not read) */
	const struct fx_family_config_key *config_keys;
	size_t nconfig_keys;
	/* The config read off a packed file's unquantized tensors (widths,
	 * channels, head dim; not the block counts). */
	int (*file_config)(const struct fx_st *st, struct fx_model_config *c, struct fx_err *err);
	/* The config metadata written when neither a model nor a valid config
	 * is at hand (malloc'ed); NULL: config_to_json. */
	int (*meta_config)(const struct fx_model_config *c, char **out, struct fx_err *err);
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
/* A list of 3 integers 0..4096 (RoPE axes): 1 read into axes, 0 absent or
 * null (axes untouched), < 0 malformed. */
int fx_json_axes(struct json_t *o, const char *key, int axes[3], const char *path,
		 struct fx_err *err);

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
