/* fx-calib: per-layer activation statistics from sampling runs (fx.calib). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-calibrate.h"
#include "fx-cli.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-lora.h"
#include "fx-stage.h"
#include "fx-tool.h"

enum { OPT_MODEL = 256, OPT_LORA, OPT_LORA_IGNORE, OPT_COND, OPT_PROMPTS, OPT_STEPS, OPT_RES, OPT_GUIDANCE, OPT_SEED,
       OPT_SAMPLES, OPT_HESSIAN, OPT_HESSIAN_MEM, OPT_BLOCKS, OPT_GEMM };

static const struct fx_opt opts[] = {
	{ "model", 0, FX_OPT_REQ, "M", "FLUX.1 or Qwen-Image model (pipeline or diffusers folder, or single file)", OPT_MODEL },
	FX_TOOL_LORA_OPTS(OPT_LORA),
	{ "cond", 0, FX_OPT_REQ, "C", "conditioning: FLUX prompt_embeds + pooled_prompt_embeds; Qwen-Image prompt_embeds (+ masks, negative prompt)", OPT_COND },
	{ "prompts", 0, FX_OPT_REQ, "P", "use the first P prompts (default: all)", OPT_PROMPTS },
	{ "steps", 0, FX_OPT_REQ, "S", "sampling steps (default: dev 50, schnell 4, Qwen-Image 50)", OPT_STEPS },
	{ "res", 0, FX_OPT_REQ, "WxH", "image size in pixels, multiples of 16 (default 1024x1024)", OPT_RES },
	{ "guidance", 0, FX_OPT_REQ, "G", "FLUX.1-dev guidance (default 3.5); Qwen-Image true-CFG scale (default 4.0)", OPT_GUIDANCE },
	{ "seed", 0, FX_OPT_REQ, "N", "noise seed of prompt p is N+p; also seeds the row sampling (default 0)", OPT_SEED },
	{ "samples", 0, FX_OPT_REQ, "M", "activation rows kept per layer (default 512)", OPT_SAMPLES },
	{ "hessian", 0, FX_OPT_NONE, NULL, "also record XᵀX per layer", OPT_HESSIAN },
	{ "hessian-mem", 0, FX_OPT_REQ, "SIZE", "with --hessian: statistics memory per sampling pass (default 4G)", OPT_HESSIAN_MEM },
	{ "blocks", 0, FX_OPT_REQ, "A-B", "only these blocks (double first, then single)", OPT_BLOCKS },
	{ "gemm", 0, FX_OPT_REQ, "bf16|f32", "block linears on a GPU: BF16 GEMMs (default) or f32 as on the CPU", OPT_GEMM },
	{ 0 }
};

/* SIZE: bytes, or a count with K, M, G or T (powers of 1024; KiB.. too). */
static bool parse_size(const char *s, uint64_t *out)
{
	static const char units[] = "KMGT";
	const char *u;
	uint64_t v = 0;
	int shift = 0;

	if (*s < '0' || *s > '9')
		return false;
	for (; *s >= '0' && *s <= '9'; s++) {
		if (v > (UINT64_MAX - 9) / 10)
			return false;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	if (*s && (u = strchr(units, *s)) != NULL) {
		shift = 10 * (int)(u - units + 1);
		s++;
		if (s[0] == 'i' && s[1] == 'B')
			s += 2;
	} else if (*s == 'B') {
		s++;
	}
	if (*s || v == 0 || v > UINT64_MAX >> shift)
		return false;
	*out = v << shift;
	return true;
}

int main(int argc, char **argv)
{
	struct fx_cli cli = {
		.synopsis = "fx-calib --model M --cond C [--prompts P] [--steps S] [--res WxH] [--guidance G] [--seed N] [--samples M] [--hessian [--hessian-mem SIZE]] [--blocks A-B] [--device DEV [--gemm bf16|f32]] -o calib.safetensors",
		.summary = "Record per-layer activation statistics of sampling runs (fx.calib).",
		.opts = opts,
		.common = FX_CLI_OUTPUT | FX_CLI_FORCE | FX_CLI_JSON | FX_CLI_THREADS | FX_CLI_DEVICE,
	};
	static struct fx_loras loras;
	struct fx_calibrate_opts o = { .loras = &loras,  .guidance = -1, .samples = 512, .first_block = -1, .last_block = -1 };
	struct fx_err err = {0};
	struct fx_stage *s = NULL;
	const char *arg;
	bool utd;
	long v;
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
		case OPT_COND: o.cond = arg; break;
		case OPT_PROMPTS:
			if (!fx_parse_int(arg, 1, 1000000, &v))
				return fx_cli_usage_error(&cli, "--prompts wants a positive count, not '%s'", arg);
			o.prompts = (int)v;
			break;
		case OPT_STEPS:
			if (!fx_parse_int(arg, 1, 1000, &v))
				return fx_cli_usage_error(&cli, "--steps wants 1..1000, not '%s'", arg);
			o.steps = (int)v;
			break;
		case OPT_RES:
			if (sscanf(arg, "%dx%d", &o.width, &o.height) != 2 || o.width <= 0 || o.height <= 0 ||
			    o.width % 16 || o.height % 16)
				return fx_cli_usage_error(&cli, "--res wants WxH in multiples of 16, not '%s'", arg);
			break;
		case OPT_GUIDANCE: {
			double g;

			if (!fx_parse_real(arg, 0.0, 100.0, &g) || g >= 100.0)
				return fx_cli_usage_error(&cli, "--guidance wants a number in [0,100), not '%s'", arg);
			o.guidance = (float)g;
			break;
		}
		case OPT_SEED:
			if (!fx_cli_seed(&cli, arg, &o.seed))
				return FX_EXIT_USAGE;
			break;
		case OPT_SAMPLES:
			if (!fx_parse_int(arg, 1, 1 << 20, &v))
				return fx_cli_usage_error(&cli, "--samples wants a positive count, not '%s'", arg);
			o.samples = (int)v;
			break;
		case OPT_HESSIAN: o.hessian = true; break;
		case OPT_HESSIAN_MEM:
			if (!parse_size(arg, &o.hessian_mem))
				return fx_cli_usage_error(&cli, "--hessian-mem wants a size such as 4G, 512M or "
							  "1073741824 (bytes), not '%s'", arg);
			break;
		case OPT_BLOCKS:
			if (!fx_parse_range(arg, &o.first_block, &o.last_block))
				return fx_cli_usage_error(&cli, "--blocks wants A-B or A, not '%s'", arg);
			break;
		case OPT_GEMM:
			if (strcmp(arg, "bf16") != 0 && strcmp(arg, "f32") != 0)
				return fx_cli_usage_error(&cli, "--gemm wants bf16 or f32, not '%s'", arg);
			o.gemm = arg;
			break;
		}
	}
	if (id < 0)
		return FX_EXIT_USAGE;
	if ((ret = fx_tool_require(&cli, argc, argv, o.model && o.cond, "--model and --cond are required")))
		return ret;
	o.output = cli.c.output;
	o.force = cli.c.force;
	o.device = cli.c.device;

	ret = fx_calibrate_run(&o, &utd, &s, &err);
	return fx_tool_stage_done(ret, &err, s, utd, cli.c.json, o.output, "recorded");
}
