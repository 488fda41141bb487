/* Merging block-shard outputs of one stage into the file an unsharded run
 * would have written: same params but for "blocks", same inputs, block
 * ranges that neither overlap nor leave a gap. */
#ifndef FX_MERGE_H
#define FX_MERGE_H

#include "fx-err.h"

struct fx_stage;

/* tool/format: the stage ("fx-lowrank", FX_FMT_BRANCH). *up_to_date when out
 * already holds the merged result. */
int fx_merge_run(const char *tool, const char *format, const char *const *paths, int n,
		 const char *out, bool force, bool *up_to_date, struct fx_stage **stage_out,
		 struct fx_err *err);

#endif
