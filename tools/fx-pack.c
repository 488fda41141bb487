/* fx-pack: write the Nunchaku checkpoint from fx.quant (+ fx.branch) + model. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-cli.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-lora.h"
#include "fx-packfile.h"
#include "fx-stage.h"
#include "fx-tool.h"

enum { OPT_MODEL = 256, OPT_LORA, OPT_LORA_IGNORE, OPT_QUANT, OPT_BRANCH, OPT_LEGACY };

static const struct fx_opt opts[] = {
	{ "model", 0, FX_OPT_REQ, "M", "FLUX model the quant file was made from", OPT_MODEL },
	FX_TOOL_LORA_OPTS(OPT_LORA),
	{ "quant", 0, FX_OPT_REQ, "Q", "fx.quant file; repeat for block shards", OPT_QUANT },
	{ "branch", 0, FX_OPT_REQ, "B", "fx.branch file; repeat for block shards", OPT_BRANCH },
	{ "legacy", 0, FX_OPT_REQ, "DIR", "also write the two-file folder form into DIR", OPT_LEGACY },
	{ 0 }
};

int main(int argc, char **argv)
{
	struct fx_cli cli = {
		.synopsis = "fx-pack --model M --quant Q [--branch B] -o out.safetensors [--legacy DIR]",
		.summary = "Write the Nunchaku SVDQuant checkpoint (single file; optionally the legacy folder).",
		.opts = opts,
		.common = FX_CLI_OUTPUT | FX_CLI_FORCE | FX_CLI_JSON | FX_CLI_THREADS,
	};
	static struct fx_loras loras;
	struct fx_packfile_opts o = { .loras = &loras };
	struct fx_err err = {0};
	struct fx_stage *s = NULL;
	const char *arg;
	bool utd;
	int id, ret;

	fx_cli_init(&cli, argc, argv);
	fx_io_install_signal_cleanup();
	while ((id = fx_cli_next(&cli, &arg)) > 0) {
		switch (id) {
		case OPT_MODEL: o.model = arg; break;
		case OPT_LORA:
		case OPT_LORA_IGNORE:
			if ((ret = fx_tool_lora(&cli, &loras, id, OPT_LORA, arg)))
				return ret;
			break;
		case OPT_QUANT:
			if (o.nquant == FX_PACK_MAX_SHARDS)
				return fx_cli_usage_error(&cli, "at most %d --quant files", FX_PACK_MAX_SHARDS);
			o.quant[o.nquant++] = arg;
			break;
		case OPT_BRANCH:
			if (o.nbranch == FX_PACK_MAX_SHARDS)
				return fx_cli_usage_error(&cli, "at most %d --branch files", FX_PACK_MAX_SHARDS);
			o.branch[o.nbranch++] = arg;
			break;
		case OPT_LEGACY: o.legacy_dir = arg; break;
		}
	}
	if (id < 0)
		return FX_EXIT_USAGE;
	if ((ret = fx_tool_require(&cli, argc, argv, o.model && o.nquant, "--model and --quant are required")))
		return ret;
	o.output = cli.c.output;
	o.force = cli.c.force;

	ret = fx_packfile_run(&o, &utd, &s, &err);
	return fx_tool_stage_done(ret, &err, s, utd, cli.c.json, o.output, "packed");
}
