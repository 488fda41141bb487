/* fx-encode: T5-XXL and CLIP-L text conditioning of a prompts file (fx.cond). */
#include <stdio.h>
#include <stdlib.h>

#include "fx-cli.h"
#include "fx-cond.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-stage.h"
#include "fx-tool.h"

enum { OPT_T5 = 256, OPT_CLIP, OPT_PROMPTS, OPT_MAX_LEN, OPT_BLOCKS_OF, OPT_TOK_T5, OPT_TOK_CLIP };

static const struct fx_opt opts[] = {
	{ "t5", 0, FX_OPT_REQ, "T5DIR", "T5 encoder: text_encoder_2/ (tokenizer there or in ../tokenizer_2/), or the FLUX folder", OPT_T5 },
	{ "clip", 0, FX_OPT_REQ, "CLIPDIR", "CLIP text model: text_encoder/ (tokenizer there or in ../tokenizer/), or the FLUX folder", OPT_CLIP },
	{ "prompts", 0, FX_OPT_REQ, "FILE", "prompts, one a line ('#' lines and empty lines skipped)", OPT_PROMPTS },
	{ "max-len", 0, FX_OPT_REQ, "L", "T5 tokens per prompt: 512 for dev, 256 for schnell (default 512)", OPT_MAX_LEN },
	{ "blocks-of", 0, FX_OPT_REQ, "N", "prompts encoded per pass over the layers (default 16, with --device cuda 64)", OPT_BLOCKS_OF },
	{ "tokenizer-t5", 0, FX_OPT_REQ, "DIR", "T5 tokenizer folder (tokenizer.json or spiece.model) or file, instead of the search", OPT_TOK_T5 },
	{ "tokenizer-clip", 0, FX_OPT_REQ, "DIR", "CLIP tokenizer folder (vocab.json, merges.txt), instead of the search", OPT_TOK_CLIP },
	{ 0 }
};

int main(int argc, char **argv)
{
	struct fx_cli cli = {
		.synopsis = "fx-encode --t5 T5DIR --clip CLIPDIR --prompts FILE [--max-len L] [--blocks-of N] [--tokenizer-t5 DIR] [--tokenizer-clip DIR] -o cond.safetensors",
		.summary = "Encode prompts with T5-XXL and CLIP-L into a conditioning file (fx.cond).",
		.opts = opts,
		.common = FX_CLI_OUTPUT | FX_CLI_FORCE | FX_CLI_JSON | FX_CLI_THREADS | FX_CLI_DEVICE,
	};
	struct fx_cond_opts o = {0};
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
		case OPT_T5: o.t5 = arg; break;
		case OPT_CLIP: o.clip = arg; break;
		case OPT_PROMPTS: o.prompts = arg; break;
		case OPT_TOK_T5: o.t5_tok = arg; break;
		case OPT_TOK_CLIP: o.clip_tok = arg; break;
		case OPT_MAX_LEN:
			if (!fx_parse_int(arg, 1, 4096, &v))
				return fx_cli_usage_error(&cli, "--max-len wants 1..4096, not '%s'", arg);
			o.max_len = (int)v;
			break;
		case OPT_BLOCKS_OF:
			if (!fx_parse_int(arg, 1, 65536, &v))
				return fx_cli_usage_error(&cli, "--blocks-of wants 1..65536, not '%s'", arg);
			o.blocks_of = (int)v;
			break;
		}
	}
	if (id < 0)
		return FX_EXIT_USAGE;
	if ((ret = fx_tool_require(&cli, argc, argv, o.t5 && o.clip && o.prompts, "--t5, --clip and --prompts are required")))
		return ret;
	o.output = cli.c.output;
	o.force = cli.c.force;
	o.device = cli.c.device;

	ret = fx_cond_run(&o, &utd, &s, &err);
	return fx_tool_stage_done(ret, &err, s, utd, cli.c.json, o.output, "encoded");
}
