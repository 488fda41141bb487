/* The fx-pack stage: fx.quant (+ fx.branch) + model -> Nunchaku single-file
 * checkpoint (fx.packed), optionally the legacy two-file folder too. */
#ifndef FX_PACKFILE_H
#define FX_PACKFILE_H

#include "fx-err.h"

#define FX_PACK_MAX_SHARDS 64

struct fx_loras;

struct fx_packfile_opts {
	const char *model;
	const struct fx_loras *loras;   /* merged into the model; NULL: none */
	const char *quant[FX_PACK_MAX_SHARDS];    /* fx.quant files (block shards) */
	int nquant;
	const char *branch[FX_PACK_MAX_SHARDS];   /* fx.branch files, or none */
	int nbranch;
	const char *output;
	const char *legacy_dir;   /* also write the two-file form here */
	bool force;
};

struct fx_stage;

int fx_packfile_run(const struct fx_packfile_opts *o, bool *up_to_date,
		    struct fx_stage **stage_out, struct fx_err *err);

/* Nunchaku names of a block's norm weights and their diffusers sources. */
int fx_pack_norm_names(bool single, int i, const char **nunchaku_suffix, const char **src_suffix);

#endif
