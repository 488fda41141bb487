/* fx-quant: quantize the residual of every fused layer (fx.quant). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-cli.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-lora.h"
#include "fx-quantize.h"
#include "fx-stage.h"
#include "fx-tool.h"
#include "fx-merge.h"
#include "fx-file.h"

enum { OPT_MODEL = 256, OPT_LORA, OPT_LORA_IGNORE, OPT_BRANCH, OPT_CALIB, OPT_PRECISION, OPT_SEARCH, OPT_GPTQ, OPT_GPTQ_DAMP, OPT_GPTQ_THIN_DAMP, OPT_GPTQ_BLOCK, OPT_BLOCKS, OPT_MERGE };

static const struct fx_opt opts[] = {
	{ "model", 0, FX_OPT_REQ, "M", "FLUX model (diffusers folder or single file)", OPT_MODEL },
	FX_TOOL_LORA_OPTS(OPT_LORA),
	{ "branch", 0, FX_OPT_REQ, "B", "fx.branch file (smoothing + low-rank); without it: plain RTN", OPT_BRANCH },
	{ "calib", 0, FX_OPT_REQ, "C", "fx.calib file, used by --search and --gptq", OPT_CALIB },
	{ "precision", 0, FX_OPT_REQ, "fp4|int4", "NVFP4 (group 16) or INT4 (group 64)", OPT_PRECISION },
	{ "search", 0, FX_OPT_NONE, NULL, "clip search of group scales on the calibration samples", OPT_SEARCH },
	{ "gptq", 0, FX_OPT_NONE, NULL, "GPTQ codes against the calib file's XᵀX (its hessian, see fx-calib(1))", OPT_GPTQ },
	{ "gptq-damp", 0, FX_OPT_REQ, "D", "GPTQ damping, a fraction of mean(diag H) (default 0.01)", OPT_GPTQ_DAMP },
	{ "gptq-thin-damp", 0, FX_OPT_REQ, "D", "GPTQ damping of layers whose XᵀX has fewer rows than inputs (default 1)", OPT_GPTQ_THIN_DAMP },
	{ "gptq-block", 0, FX_OPT_REQ, "B", "GPTQ columns per deferred update (default 128)", OPT_GPTQ_BLOCK },
	{ "blocks", 0, FX_OPT_REQ, "A-B", "only these blocks (double first, then single)", OPT_BLOCKS },
	{ "merge", 0, FX_OPT_NONE, NULL, "merge the block-shard files given as arguments into -o", OPT_MERGE },
	{ 0 }
};

/* A GPTQ damping: a fraction of mean(diag H) in (0, 10]. */
static bool parse_damp(const char *arg, double *out)
{
	return fx_parse_real(arg, 0.0, 10.0, out) && *out > 0.0;
}

int main(int argc, char **argv)
{
	struct fx_cli cli = {
		.synopsis = "fx-quant --model M [--branch B] [--calib C] --precision fp4|int4 [--search] [--gptq [--gptq-damp D] [--gptq-thin-damp D] [--gptq-block B]] [--blocks A-B] -o quant.safetensors",
		.summary = "Quantize the residual of every fused layer into an fx.quant file.",
		.opts = opts,
		.common = FX_CLI_OUTPUT | FX_CLI_FORCE | FX_CLI_JSON | FX_CLI_THREADS,
	};
	static struct fx_loras loras;
	struct fx_quantize_opts o = { .loras = &loras,  .first_block = -1, .last_block = -1 };
	struct fx_err err = {0};
	struct fx_stage *s = NULL;
	const char *arg;
	bool utd, merge = false;
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
		case OPT_BRANCH: o.branch = arg; break;
		case OPT_CALIB: o.calib = arg; break;
		case OPT_PRECISION: o.precision = arg; break;
		case OPT_SEARCH: o.search = true; break;
		case OPT_GPTQ: o.gptq = true; break;
		case OPT_GPTQ_DAMP:
			if (!parse_damp(arg, &o.gptq_damp))
				return fx_cli_usage_error(&cli, "--gptq-damp wants a number in (0, 10], not '%s'", arg);
			break;
		case OPT_GPTQ_THIN_DAMP:
			if (!parse_damp(arg, &o.gptq_thin_damp))
				return fx_cli_usage_error(&cli, "--gptq-thin-damp wants a number in (0, 10], not '%s'", arg);
			break;
		case OPT_GPTQ_BLOCK: {
			long v;

			if (!fx_parse_int(arg, 1, 65536, &v))
				return fx_cli_usage_error(&cli, "--gptq-block wants an integer from 1 to 65536, not '%s'", arg);
			o.gptq_block = (int)v;
			break;
		}
		case OPT_MERGE: merge = true; break;
		case OPT_BLOCKS:
			if (!fx_parse_range(arg, &o.first_block, &o.last_block))
				return fx_cli_usage_error(&cli, "--blocks wants A-B or A, not '%s'", arg);
			break;
		}
	}
	if (id < 0)
		return FX_EXIT_USAGE;
	if (merge)
		return fx_tool_merge(&cli, argc, argv, "fx-quant", FX_FMT_QUANT);
	if ((ret = fx_tool_require(&cli, argc, argv, o.model, "--model is required")))
		return ret;
	if (!o.precision || (strcmp(o.precision, "fp4") && strcmp(o.precision, "int4")))
		return fx_cli_usage_error(&cli, "--precision fp4 or int4 is required");
	if (o.search && !o.calib)
		return fx_cli_usage_error(&cli, "--search needs --calib");
	if (o.gptq && !o.calib)
		return fx_cli_usage_error(&cli, "--gptq needs --calib (made with fx-calib --hessian)");
	if ((o.gptq_damp > 0 || o.gptq_thin_damp > 0 || o.gptq_block > 0) && !o.gptq)
		return fx_cli_usage_error(&cli, "--gptq-damp, --gptq-thin-damp and --gptq-block go with --gptq");
	o.output = cli.c.output;
	o.force = cli.c.force;

	ret = fx_quantize_run(&o, &utd, &s, &err);
	return fx_tool_stage_done(ret, &err, s, utd, cli.c.json, o.output, "quantized");
}
