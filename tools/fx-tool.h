/* What the stage tools' mains share after running their stage. */
#ifndef FX_TOOL_H
#define FX_TOOL_H

#include "fx-err.h"

struct fx_stage;
struct fx_cli;
struct fx_loras;

/* The two options of every tool that reads a model (ids id and id + 1). */
#define FX_TOOL_LORA_OPTS(id)                                                                   \
	{ "lora", 0, FX_OPT_REQ, "FILE[:SCALE]",                                                \
	  "merge this LoRA into the model as it is read (repeatable, in order; SCALE 1)", (id) }, \
	{ "lora-ignore-unknown", 0, FX_OPT_NONE, NULL,                                          \
	  "a LoRA's text-encoder keys are a note, not an error", (id) + 1 }

/* --lora FILE[:SCALE] (id) or --lora-ignore-unknown (id + 1) into l; 0, or
 * the usage error's exit code. */
int fx_tool_lora(struct fx_cli *cli, struct fx_loras *l, int id, int lora_id, const char *arg);

/* Reports a stage run and returns the exit code: on error prints it; else
 * logs "OUTPUT: up to date" or "OUTPUT: N layers VERB, M reused", prints
 * the JSON report on stdout with --json, and frees the stage. */
int fx_tool_stage_done(int ret, const struct fx_err *err, struct fx_stage *s, bool up_to_date,
		       bool json, const char *output, const char *verb);

/* After a stage tool's options: a stray argument, !have (missing is the
 * message) or no -o is a usage error. Returns its exit code, or 0. */
int fx_tool_require(struct fx_cli *cli, int argc, char **argv, bool have, const char *missing);

/* --merge: the shard files after the options into -o OUT, checked against
 * the format; returns the exit code. */
int fx_tool_merge(struct fx_cli *cli, int argc, char **argv, const char *tool, const char *format);

#endif
