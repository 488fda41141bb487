/* fx-synth: write a deterministic synthetic transformer of a family (and
 * conditioning) for tests and demos. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fx-cli.h"
#include "fx-families.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-synth.h"

enum {
	OPT_FAMILY = 256, OPT_LAYOUT, OPT_DOUBLE, OPT_SINGLE, OPT_HIDDEN, OPT_TXT_DIM, OPT_IN_CHANNELS,
	OPT_SEED, OPT_SCHNELL, OPT_SHARDS, OPT_COND, OPT_PROMPTS, OPT_TXT_LEN
};

static const struct fx_opt opts[] = {
	{ "family", 0, FX_OPT_REQ, "F", "flux (default) or qwenimage", OPT_FAMILY },
	{ "layout", 0, FX_OPT_REQ, "L", "diffusers (a folder, default) or bfl (one file; FLUX)", OPT_LAYOUT },
	{ "double", 0, FX_OPT_REQ, "N", "double blocks (default 2; Qwen-Image: its blocks)", OPT_DOUBLE },
	{ "blocks", 0, FX_OPT_REQ, "N", "Qwen-Image: transformer blocks (the same as --double)", OPT_DOUBLE },
	{ "single", 0, FX_OPT_REQ, "N", "single blocks (default 2)", OPT_SINGLE },
	{ "hidden", 0, FX_OPT_REQ, "H", "hidden size, a multiple of 128 (default 256)", OPT_HIDDEN },
	{ "txt-dim", 0, FX_OPT_REQ, "D", "text embedding width (default FLUX 4096, Qwen-Image 3584)", OPT_TXT_DIM },
	{ "in-channels", 0, FX_OPT_REQ, "C", "latent channels (default 64)", OPT_IN_CHANNELS },
	{ "seed", 0, FX_OPT_REQ, "S", "generator seed (default 1)", OPT_SEED },
	{ "schnell", 0, FX_OPT_NONE, NULL, "no guidance embedder (FLUX.1-schnell)", OPT_SCHNELL },
	{ "shards", 0, FX_OPT_REQ, "N", "diffusers: spread over N shards with an index (default 1)",
	  OPT_SHARDS },
	{ "cond", 0, FX_OPT_REQ, "FILE", "also write conditioning (FLUX: prompt_embeds, pooled_prompt_embeds; Qwen-Image: prompt_embeds, prompt_embeds_mask and the negative prompt's)",
	  OPT_COND },
	{ "prompts", 0, FX_OPT_REQ, "P", "prompts in --cond (default 4)", OPT_PROMPTS },
	{ "txt-len", 0, FX_OPT_REQ, "L", "text tokens per prompt in --cond (default 64)", OPT_TXT_LEN },
	{ 0 }
};

static bool num(struct fx_cli *cli, const char *opt, const char *arg, long lo, long hi, long *v)
{
	if (fx_parse_int(arg, lo, hi, v))
		return true;
	fx_cli_usage_error(cli, "--%s expects an integer in %ld..%ld, got '%s'", opt, lo, hi, arg);
	return false;
}

int main(int argc, char **argv)
{
	struct fx_cli cli = {
		.prog = "fx-synth",
		.synopsis = "fx-synth [options] [--cond FILE] -o OUT",
		.summary = "Write a deterministic synthetic FLUX.1 or Qwen-Image transformer for tests.",
		.opts = opts,
		.common = FX_CLI_OUTPUT | FX_CLI_FORCE,
	};
	struct fx_synth_opts so;
	struct fx_synth_cond_opts co;
	struct fx_err err = {0};
	const char *arg, *cond = NULL;
	bool cond_opts = false, single_set = false, txt_set = false;
	long v;
	int id, ret;

	fx_synth_opts_init(&so);
	fx_synth_cond_opts_init(&co);
	fx_cli_init(&cli, argc, argv);
	fx_log_set_prog("fx-synth");
	while ((id = fx_cli_next(&cli, &arg)) > 0) {
		switch (id) {
		case OPT_FAMILY:
			if (!(so.family = fx_family_find(arg)))
				return fx_cli_usage_error(&cli, "--family expects one of %s, got '%s'",
							  fx_family_names(), arg);
			break;
		case OPT_LAYOUT:
			if (strcmp(arg, "diffusers") == 0)
				so.layout = FX_LAYOUT_DIFFUSERS;
			else if (strcmp(arg, "bfl") == 0)
				so.layout = FX_LAYOUT_BFL;
			else
				return fx_cli_usage_error(&cli, "--layout expects diffusers or bfl, got '%s'",
							  arg);
			break;
		case OPT_DOUBLE:
			if (!num(&cli, "double", arg, 0, 1000, &v))
				return FX_EXIT_USAGE;
			so.num_double = (int)v;
			break;
		case OPT_SINGLE:
			if (!num(&cli, "single", arg, 0, 1000, &v))
				return FX_EXIT_USAGE;
			so.num_single = (int)v;
			single_set = true;
			break;
		case OPT_HIDDEN:
			if (!num(&cli, "hidden", arg, 128, 16384, &v))
				return FX_EXIT_USAGE;
			if (v % 128)
				return fx_cli_usage_error(&cli, "--hidden must be a multiple of 128, got %ld",
							  v);
			so.hidden = (int)v;
			break;
		case OPT_TXT_DIM:
			if (!num(&cli, "txt-dim", arg, 1, 65536, &v))
				return FX_EXIT_USAGE;
			so.txt_dim = co.txt_dim = (int)v;
			txt_set = true;
			break;
		case OPT_IN_CHANNELS:
			if (!num(&cli, "in-channels", arg, 1, 65536, &v))
				return FX_EXIT_USAGE;
			so.in_channels = (int)v;
			break;
		case OPT_SEED:
			if (!fx_cli_seed(&cli, arg, &so.seed))
				return FX_EXIT_USAGE;
			co.seed = so.seed;
			break;
		case OPT_SCHNELL:
			so.schnell = true;
			break;
		case OPT_SHARDS:
			if (!num(&cli, "shards", arg, 1, 99999, &v))
				return FX_EXIT_USAGE;
			so.shards = (int)v;
			break;
		case OPT_COND:
			cond = arg;
			break;
		case OPT_PROMPTS:
			if (!num(&cli, "prompts", arg, 1, 100000, &v))
				return FX_EXIT_USAGE;
			co.prompts = (int)v;
			cond_opts = true;
			break;
		case OPT_TXT_LEN:
			if (!num(&cli, "txt-len", arg, 1, 100000, &v))
				return FX_EXIT_USAGE;
			co.txt_len = (int)v;
			cond_opts = true;
			break;
		}
	}
	if (id < 0)
		return FX_EXIT_USAGE;
	if (cli.optind < argc)
		return fx_cli_usage_error(&cli, "unexpected argument '%s'", argv[cli.optind]);
	if (!cli.c.output)
		return fx_cli_usage_error(&cli, "no output given (-o OUT)");
	if (so.family && !strcmp(so.family->name, "qwenimage")) {
		if (so.layout != FX_LAYOUT_DIFFUSERS || so.schnell || (single_set && so.num_single))
			return fx_cli_usage_error(&cli, "--family qwenimage: no --layout bfl, --schnell or --single");
		so.num_single = 0;
		if (!txt_set)
			so.txt_dim = co.txt_dim = 3584;
		co.family = so.family;
	}
	if (cond_opts && !cond)
		return fx_cli_usage_error(&cli, "--prompts and --txt-len need --cond FILE");
	if (so.shards > 1 && so.layout != FX_LAYOUT_DIFFUSERS)
		return fx_cli_usage_error(&cli, "--shards needs --layout diffusers");
	so.force = co.force = cli.c.force;
	if (cond && !so.force && access(cond, F_OK) == 0) {
		fx_log_error("'%s' exists (use --force to overwrite)", cond);
		return FX_EXIT_USAGE;
	}

	fx_io_install_signal_cleanup();
	ret = fx_synth_model(cli.c.output, &so, &err);
	if (ret == 0)
		fx_log_info("wrote %s", cli.c.output);
	if (ret == 0 && cond) {
		ret = fx_synth_cond(cond, &co, &err);
		if (ret == 0)
			fx_log_info("wrote %s", cond);
	}
	if (ret < 0) {
		fx_log_error("%s", err.msg);
		return fx_status_exit(ret);
	}
	return 0;
}
