/* fx-lowrank: smoothing search and low-rank branch of every fused layer (fx.branch). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-cli.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-lowrank.h"
#include "fx-lora.h"
#include "fx-search.h"
#include "fx-stage.h"
#include "fx-tool.h"
#include "fx-merge.h"
#include "fx-file.h"

enum { OPT_MODEL = 256, OPT_LORA, OPT_LORA_IGNORE, OPT_CALIB, OPT_RANK, OPT_PRECISION, OPT_GRID, OPT_ITERS, OPT_FINALISTS,
       OPT_METHOD, OPT_BLOCKS, OPT_JOBS, OPT_MERGE, OPT_FOR_GPTQ, OPT_GPTQ_WEIGHT };

static const struct fx_opt opts[] = {
	{ "model", 0, FX_OPT_REQ, "M", "FLUX model (diffusers folder or single file)", OPT_MODEL },
	FX_TOOL_LORA_OPTS(OPT_LORA),
	{ "calib", 0, FX_OPT_REQ, "C", "fx.calib file recorded from this model", OPT_CALIB },
	{ "rank", 0, FX_OPT_REQ, "R", "rank of the low-rank branch, a multiple of 16 (default 32)", OPT_RANK },
	{ "precision", 0, FX_OPT_REQ, "fp4|int4", "quantization the search measures (default fp4)", OPT_PRECISION },
	{ "alpha-grid", 0, FX_OPT_REQ, "N", "smoothing exponents i/N, 2N-1 candidates (default 20)", OPT_GRID },
	{ "iters", 0, FX_OPT_REQ, "I", "branch refinement rounds, early stop (default 100; 0 with --for-gptq)", OPT_ITERS },
	{ "finalists", 0, FX_OPT_REQ, "F", "best-ranked smoothings refined to the end (default 3)", OPT_FINALISTS },
	{ "for-gptq", 0, FX_OPT_NONE, NULL, "judge smoothings for GPTQ codes (fx-quant's GPTQ; no refinement)", OPT_FOR_GPTQ },
	{ "gptq-weight", 0, FX_OPT_REQ, "W", "weight-rounding share of that score, 0..1 (--for-gptq: 0.05; 0: RTN)", OPT_GPTQ_WEIGHT },
	{ "method", 0, FX_OPT_REQ, "svd|rsvd", "LAPACK SVD or randomized SVD (default rsvd)", OPT_METHOD },
	{ "blocks", 0, FX_OPT_REQ, "A-B", "only these blocks (double first, then single)", OPT_BLOCKS },
	{ "jobs", 0, FX_OPT_REQ, "J", "layers searched at once, sharing the threads (default 2; same bytes)", OPT_JOBS },
	{ "merge", 0, FX_OPT_NONE, NULL, "merge the block-shard files given as arguments into -o", OPT_MERGE },
	{ 0 }
};

int main(int argc, char **argv)
{
	struct fx_cli cli = {
		.synopsis = "fx-lowrank --model M --calib C [--rank R] [--precision fp4|int4] [--alpha-grid N] [--iters I] [--finalists F] [--for-gptq | --gptq-weight W] [--method svd|rsvd] [--blocks A-B] [--jobs J] -o branch.safetensors",
		.summary = "Search the smoothing and the low-rank branch of every fused layer (fx.branch).",
		.opts = opts,
		.common = FX_CLI_OUTPUT | FX_CLI_FORCE | FX_CLI_JSON | FX_CLI_THREADS | FX_CLI_DEVICE,
	};
	static struct fx_loras loras;
	struct fx_lowrank_stage_opts o;
	struct fx_err err = {0};
	struct fx_stage *s = NULL;
	const char *arg;
	bool utd, merge = false, iters_set = false;
	long v;
	int id, ret;

	fx_lowrank_stage_opts_init(&o);
	o.loras = &loras;
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
		case OPT_CALIB: o.calib = arg; break;
		case OPT_RANK:
			if (!fx_parse_int(arg, 16, 4096, &v) || v % 16)
				return fx_cli_usage_error(&cli, "--rank wants a multiple of 16, not '%s'", arg);
			o.rank = (int)v;
			break;
		case OPT_PRECISION:
			if (strcmp(arg, "fp4") && strcmp(arg, "int4"))
				return fx_cli_usage_error(&cli, "--precision wants fp4 or int4, not '%s'", arg);
			o.precision = arg;
			break;
		case OPT_GRID:
			if (!fx_parse_int(arg, 1, 100, &v))
				return fx_cli_usage_error(&cli, "--alpha-grid wants 1..100, not '%s'", arg);
			o.grid = (int)v;
			break;
		case OPT_ITERS:
			if (!fx_parse_int(arg, 0, 1000, &v))
				return fx_cli_usage_error(&cli, "--iters wants 0..1000, not '%s'", arg);
			o.iters = (int)v;
			iters_set = true;
			break;
		case OPT_FINALISTS:
			if (!fx_parse_int(arg, 1, FX_LOWRANK_MAX_FINALISTS, &v))
				return fx_cli_usage_error(&cli, "--finalists wants 1..%d, not '%s'",
							  FX_LOWRANK_MAX_FINALISTS, arg);
			o.finalists = (int)v;
			break;
		case OPT_FOR_GPTQ: o.gptq_weight = FX_SEARCH_GPTQ_WEIGHT; break;
		case OPT_GPTQ_WEIGHT:
			if (!fx_parse_real(arg, 0.0, 1.0, &o.gptq_weight))
				return fx_cli_usage_error(&cli, "--gptq-weight wants 0..1, not '%s'", arg);
			break;
		case OPT_METHOD:
			if (strcmp(arg, "svd") && strcmp(arg, "rsvd"))
				return fx_cli_usage_error(&cli, "--method wants svd or rsvd, not '%s'", arg);
			o.method = arg;
			break;
		case OPT_JOBS:
			if (!fx_parse_int(arg, 1, 256, &v))
				return fx_cli_usage_error(&cli, "--jobs wants 1..256, not '%s'", arg);
			o.jobs = (int)v;
			break;
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
		return fx_tool_merge(&cli, argc, argv, "fx-lowrank", FX_FMT_BRANCH);
	if ((ret = fx_tool_require(&cli, argc, argv, o.model && o.calib, "--model and --calib are required")))
		return ret;
	/* refinement fits the branch to round-to-nearest residuals: with GPTQ
	 * choosing the codes it gains nothing (fx-lowrank(1) NUMERICS) */
	if (o.gptq_weight > 0.0 && !iters_set)
		o.iters = 0;
	o.output = cli.c.output;
	o.force = cli.c.force;
	o.device = cli.c.device;

	ret = fx_lowrank_run(&o, &utd, &s, &err);
	return fx_tool_stage_done(ret, &err, s, utd, cli.c.json, o.output, "computed");
}
