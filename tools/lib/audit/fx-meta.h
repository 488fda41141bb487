/* Loader metadata of a Nunchaku checkpoint (spec §5): compute, check, write.
 * Beside the audit, which checks it with the rest of a file (and whose
 * findings its own checks add to). */
#ifndef FX_META_H
#define FX_META_H

#include "fx-err.h"
#include "fx-audit.h"
#include "fx-model.h"
#include "fx-st.h"

enum { FX_META_CONFIG, FX_META_COMFY, FX_META_MODEL_CLASS, FX_META_QUANT, FX_META_COUNT };
extern const char *const fx_meta_keys[FX_META_COUNT];

struct fx_meta_opts {
	const char *config_json;   /* the model's config.json; NULL: keep a valid one or infer */
	const char *precision;     /* "fp4" | "int4" | NULL: from the tensors */
	int rank;                  /* < 0: from the tensors */
	const struct fx_family *family;   /* the model's, when given: must be the file's */
};

/* Facts read off the tensors of a checkpoint. */
struct fx_meta_facts {
	const struct fx_family *family;
	char precision[8];         /* "fp4", "int4" or "" */
	int rank;                  /* -1 when no low-rank down tensor */
	/* widths and channels (the family's file_config), block counts */
	struct fx_model_config c;
};

/* The family of a packed file: fx.model's "family" (absent: FLUX, the
 * default), else, for a file another tool wrote, the family whose module
 * names its blocks hold (FLUX when none). FX_E_FORMAT for a family this fx
 * does not know. */
int fx_meta_family(const struct fx_st *st, const struct fx_family **out, struct fx_err *err);
int fx_meta_facts(const struct fx_st *st, struct fx_meta_facts *f, struct fx_err *err);
/* The values the file's family writes (malloc'ed strings in vals[FX_META_*];
 * NULL for a key it does not write: comfy_config of a family without). */
int fx_meta_compute(const struct fx_st *st, const struct fx_meta_opts *o, char *vals[FX_META_COUNT],
		    struct fx_err *err);
/* Findings about missing, invalid or inconsistent metadata. */
void fx_meta_audit(const struct fx_st *st, struct fx_audit *a);
/* Replaces the given metadata keys of path: in place when the header has
 * room, else atomically through a rewritten copy. *in_place tells which. */
int fx_meta_write(const char *path, const char *const *keys, const char *const *vals, size_t n,
		  bool *in_place, struct fx_err *err);

#endif
