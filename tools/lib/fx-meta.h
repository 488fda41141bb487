/* Loader metadata of a Nunchaku checkpoint (spec §5): compute, check, write. */
#ifndef FX_META_H
#define FX_META_H

#include "fx-err.h"
#include "fx-audit.h"
#include "fx-st.h"

enum { FX_META_CONFIG, FX_META_COMFY, FX_META_MODEL_CLASS, FX_META_QUANT, FX_META_COUNT };
extern const char *const fx_meta_keys[FX_META_COUNT];

struct fx_meta_opts {
	const char *config_json;   /* diffusers config; NULL: keep a valid one or infer */
	const char *precision;     /* "fp4" | "int4" | NULL: from the tensors */
	int rank;                  /* < 0: from the tensors */
};

/* Facts read off the tensors of a checkpoint. */
struct fx_meta_facts {
	char precision[8];         /* "fp4", "int4" or "" */
	int rank;                  /* -1 when no lora_down */
	int hidden, in_channels, joint_dim, pooled_dim, num_double, num_single;
	bool guidance;
};

int fx_meta_facts(const struct fx_st *st, struct fx_meta_facts *f, struct fx_err *err);
/* The four values (malloc'ed strings in vals[FX_META_*]). */
int fx_meta_compute(const struct fx_st *st, const struct fx_meta_opts *o, char *vals[FX_META_COUNT],
		    struct fx_err *err);
/* Findings about missing, invalid or inconsistent metadata. */
void fx_meta_audit(const struct fx_st *st, struct fx_audit *a);
/* Replaces the given metadata keys of path: in place when the header has
 * room, else atomically through a rewritten copy. *in_place tells which. */
int fx_meta_write(const char *path, const char *const *keys, const char *const *vals, size_t n,
		  bool *in_place, struct fx_err *err);

#endif
