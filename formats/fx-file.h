/* fx intermediate files: the fx.* metadata of design.md §3, provenance and
 * the shared "up to date" decision. */
#ifndef FX_FILE_H
#define FX_FILE_H

#include "fx-err.h"
#include "fx-st.h"

#define FX_FMT_CALIB  "fx.calib"
#define FX_FMT_BRANCH "fx.branch"
#define FX_FMT_QUANT  "fx.quant"
#define FX_FMT_PACKED "fx.packed"

/* Parsed fx.* metadata of an open file; strings borrowed from the file. */
struct fx_file_info {
	const char *format;      /* NULL when the file has no fx.format */
	int version;
	const char *tool;
	const char *params;      /* canonical JSON */
	const char *inputs;      /* JSON map role -> sha256 */
	const char *recipe;      /* hex sha256 */
	const char *layers;      /* JSON map layer -> hex sha256 */
	const char *crc32;       /* JSON map tensor -> 8 hex digits */
};

/* Reads the fx.* keys; a file without fx.format gives info->format NULL, 0. */
int fx_file_info(const struct fx_st *st, struct fx_file_info *info, struct fx_err *err);
/* Checks format == want ("expected fx.branch, got fx.calib") and version
 * <= FX_FILE_VERSION ("file is version N, this TOOL supports up to M"). */
int fx_file_expect(const struct fx_st *st, const char *want, const char *tool,
		   struct fx_err *err);
/* Recomputes every tensor's CRC32 against fx.crc32; FX_E_HASH naming the
 * first mismatching tensor. Missing fx.crc32 -> FX_E_FORMAT. */
int fx_file_check_crc(const struct fx_st *st, struct fx_err *err);

/* Canonical JSON (sorted keys, compact) -> malloc'ed string. */
char *fx_json_canonical(const char *json_text);
/* hex SHA-256 of canonical {format, version, params, inputs} into out[65]. */
int fx_file_recipe(char out[65], const char *format, int version,
		   const char *params_json, const char *inputs_json, struct fx_err *err);

/* Per-layer recipe accumulator: feed the layer's weight bytes, its calib
 * bytes, the params, then finish into a hex digest. */
struct fx_layer_hash;
struct fx_layer_hash *fx_layer_hash_new(void);
void fx_layer_hash_update(struct fx_layer_hash *h, const void *data, size_t n);
void fx_layer_hash_str(struct fx_layer_hash *h, const char *s);
void fx_layer_hash_final(struct fx_layer_hash *h, char out[65]);   /* frees h */

/* The stage cache decision: returns 1 when `path` exists, is an fx file of
 * `format` with fx.recipe == recipe and its CRCs verify; 0 when it must be
 * (re)built; <0 on error. */
int fx_file_up_to_date(const char *path, const char *format, const char *recipe,
		       struct fx_err *err);

/* Identity of an input for fx.inputs: an fx file -> its fx.recipe; any other
 * file or shard set -> SHA-256 of content (via the hash cache). For a model
 * over several shards: SHA-256 over the shards' hashes in name order. */
int fx_input_id(char out[65], const char *path, struct fx_err *err);

/* What fx.inputs records for a role: 1 when it is id, 0 when it is another
 * id, -1 when the role (or fx.inputs itself) is missing or unreadable. */
int fx_file_input_is(const struct fx_st *st, const char *role, const char *id);

/* Identity of a set of fx files that together cover some layers (block
 * shards): SHA-256 over their merged fx.layers and fx.crc32 maps, so the
 * same content split differently has the same identity. A layer present in
 * two files is an error naming both. */
struct fx_st;
int fx_shards_id(char out[65], const struct fx_st *const *files, int n, struct fx_err *err);

/* fx.branch `P.F.stats` (F32, FX_BRANCH_STAT_COUNT): what the search chose.
 * Errors are relative: ‖E‖²/‖X·Wᵀ‖² over all calibration rows of the group,
 * E the runtime-emulated output error (kernels/fx-lowrank.h). */
enum fx_branch_stat {
	FX_BRANCH_STAT_ALPHA,       /* chosen α of s = xmax^α / wmax^β */
	FX_BRANCH_STAT_BETA,        /* chosen β */
	FX_BRANCH_STAT_ERR_RTN,     /* plain round to nearest: s = 1, no branch */
	FX_BRANCH_STAT_ERR_FINAL,   /* with this smooth/down/up */
	FX_BRANCH_STAT_ERR_BRANCH,  /* chosen s and its SVD branch, before refinement */
	FX_BRANCH_STAT_ROUNDS,      /* refinement rounds kept */
	FX_BRANCH_STAT_COUNT
};


#endif
