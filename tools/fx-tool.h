/* What the stage tools' mains share after running their stage. */
#ifndef FX_TOOL_H
#define FX_TOOL_H

#include "fx-err.h"

struct fx_stage;

/* Reports a stage run and returns the exit code: on error prints it; else
 * logs "OUTPUT: up to date" or "OUTPUT: N layers VERB, M reused", prints
 * the JSON report on stdout with --json, and frees the stage. */
int fx_tool_stage_done(int ret, const struct fx_err *err, struct fx_stage *s, bool up_to_date,
		       bool json, const char *output, const char *verb);

#endif
