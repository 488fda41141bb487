/* fx-eval: end-to-end quality of packed checkpoints against the source model. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-cli.h"
#include "fx-eval.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-lora.h"
#include "fx-tool.h"

enum { OPT_MODEL = 256, OPT_LORA, OPT_LORA_IGNORE, OPT_COND, OPT_PROMPTS, OPT_STEPS, OPT_RES, OPT_GUIDANCE, OPT_SEED, OPT_PLOT };

static const struct fx_opt opts[] = {
	{ "model", 0, FX_OPT_REQ, "M", "the source FLUX model the checkpoints were made from", OPT_MODEL },
	FX_TOOL_LORA_OPTS(OPT_LORA),
	{ "cond", 0, FX_OPT_REQ, "C", "conditioning: prompt_embeds + pooled_prompt_embeds", OPT_COND },
	{ "prompts", 0, FX_OPT_REQ, "P", "use the first P prompts (default: all)", OPT_PROMPTS },
	{ "steps", 0, FX_OPT_REQ, "S", "sampling steps (default 4)", OPT_STEPS },
	{ "res", 0, FX_OPT_REQ, "WxH", "image size in pixels, multiples of 16 (default 256x256)", OPT_RES },
	{ "guidance", 0, FX_OPT_REQ, "G", "guidance scale for dev models (default 3.5)", OPT_GUIDANCE },
	{ "seed", 0, FX_OPT_REQ, "N", "noise seed of prompt p is N+p (default 0)", OPT_SEED },
	{ "plot", 0, FX_OPT_REQ, "PNG", "draw per-prompt PSNR per checkpoint into this PNG", OPT_PLOT },
	{ 0 }
};

static json_t *reals(const double *v, int n)
{
	json_t *a = json_array();
	int i;

	for (i = 0; i < n; i++)
		json_array_append_new(a, json_real(v[i]));
	return a;
}

static void print_json(const struct fx_eval_opts *o, const struct fx_eval_result *r)
{
	json_t *root = json_pack("{s:s, s:i, s:i}", "schema", "fx-eval/1", "prompts", r->nprompts,
				 "steps", r->nsteps);
	json_t *arr = json_array();
	int i, p, l, P = r->nprompts, S = r->nsteps;
	char *s;

	for (i = 0; i < r->nckpt; i++) {
		json_t *sp = json_array(), *sc = json_array(), *layers = json_array();

		for (p = 0; p < P; p++) {
			json_array_append_new(sp, reals(&r->step_psnr[((size_t)i * P + p) * S], S));
			json_array_append_new(sc, reals(&r->step_cosine[((size_t)i * P + p) * S], S));
		}
		for (l = 0; l < r->nlayers; l++)
			json_array_append_new(layers, json_pack("{s:s, s:f}", "layer", r->layer[l], "snr",
								r->layer_snr[(size_t)i * r->nlayers + l]));
		json_array_append_new(arr, json_pack("{s:s, s:f, s:f, s:o, s:o, s:o, s:o, s:o, s:o}",
						     "checkpoint", o->ckpt[i], "mean_psnr", r->mean_psnr[i],
						     "mean_cosine", r->mean_cosine[i],
						     "psnr", reals(&r->psnr[i * P], P),
						     "cosine", reals(&r->cosine[i * P], P),
						     "mean_step_psnr", reals(&r->mean_step_psnr[i * S], S),
						     "step_psnr", sp, "step_cosine", sc, "layers", layers));
	}
	json_object_set_new(root, "checkpoints", arr);
	s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
	if (s)
		puts(s);
	free(s);
	json_decref(root);
}

/* Worst layers first. */
static const double *g_snr;

static int by_snr(const void *a, const void *b)
{
	double x = g_snr[*(const int *)a], y = g_snr[*(const int *)b];

	return (x > y) - (x < y);
}

static void print_human(const struct fx_eval_opts *o, const struct fx_eval_result *r)
{
	int i, p, s, l, P = r->nprompts, S = r->nsteps;
	int *order = malloc((r->nlayers + 1) * sizeof(int));

	printf("%-48s %10s %10s\n", "checkpoint", "PSNR dB", "cosine");
	for (i = 0; i < r->nckpt; i++) {
		printf("%-48s %10.2f %10.5f\n", o->ckpt[i], r->mean_psnr[i], r->mean_cosine[i]);
		for (p = 0; p < P; p++)
			printf("  prompt %-39d %10.2f %10.5f\n", p, r->psnr[i * P + p], r->cosine[i * P + p]);
		printf("  PSNR after each step:");
		for (s = 0; s < S; s++)
			printf(" %.2f", r->mean_step_psnr[i * S + s]);
		printf("\n");
		if (!order)
			continue;
		for (l = 0; l < r->nlayers; l++)
			order[l] = l;
		g_snr = &r->layer_snr[(size_t)i * r->nlayers];
		qsort(order, r->nlayers, sizeof(int), by_snr);
		printf("  worst layers (output SNR dB):");
		for (l = 0; l < r->nlayers && l < 5; l++)
			printf("%s %s %.1f", l ? "," : "", r->layer[order[l]], g_snr[order[l]]);
		printf("\n");
	}
	printf("PSNR and cosine of the latents against the source weights on the same noise; "
	       "layer SNR on the sampler's own activations\n");
	free(order);
}

int main(int argc, char **argv)
{
	struct fx_cli cli = {
		.synopsis = "fx-eval --model M --cond C [--prompts P] [--steps S] [--res WxH] [--guidance G] [--seed N] [--plot out.png] CKPT...",
		.summary = "Compare sampling with packed checkpoints (emulated runtime) against the source weights.",
		.opts = opts,
		.common = FX_CLI_JSON | FX_CLI_THREADS,
	};
	static struct fx_loras loras;
	struct fx_eval_opts o = { .guidance = -1, .loras = &loras };
	struct fx_eval_result r;
	struct fx_err err = {0};
	const char *arg, *plot = NULL;
	long v;
	int id, ret, i;

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
		case OPT_STEPS:
			if (!fx_parse_int(arg, 1, 1000000, &v))
				return fx_cli_usage_error(&cli, "bad number '%s'", arg);
			if (id == OPT_PROMPTS)
				o.prompts = (int)v;
			else
				o.steps = (int)v;
			break;
		case OPT_SEED:
			if (!fx_cli_seed(&cli, arg, &o.seed))
				return FX_EXIT_USAGE;
			break;
		case OPT_RES:
			if (sscanf(arg, "%dx%d", &o.width, &o.height) != 2 || o.width <= 0 || o.height <= 0 ||
			    o.width % 16 || o.height % 16)
				return fx_cli_usage_error(&cli, "--res wants WxH in multiples of 16, not '%s'", arg);
			break;
		case OPT_GUIDANCE: {
			double g;

			if (!fx_parse_real(arg, 0.0, 1e30, &g))
				return fx_cli_usage_error(&cli, "--guidance wants a number >= 0, not '%s'", arg);
			o.guidance = (float)g;
			break;
		}
		case OPT_PLOT: plot = arg; break;
		}
	}
	if (id < 0)
		return FX_EXIT_USAGE;
	if (!o.model || !o.cond)
		return fx_cli_usage_error(&cli, "--model and --cond are required");
	if (cli.optind >= argc)
		return fx_cli_usage_error(&cli, "no checkpoint given");
	if (argc - cli.optind > FX_EVAL_MAX_CKPT)
		return fx_cli_usage_error(&cli, "at most %d checkpoints", FX_EVAL_MAX_CKPT);
	for (i = cli.optind; i < argc; i++)
		o.ckpt[o.nckpt++] = argv[i];

	ret = fx_eval_run(&o, &r, &err);
	if (ret == 0 && plot)
		ret = fx_eval_plot(plot, &r, &err);
	if (ret < 0) {
		fx_log_error("%s", err.msg);
		fx_eval_result_release(&r);
		return fx_status_exit(ret);
	}
	if (cli.c.json)
		print_json(&o, &r);
	else
		print_human(&o, &r);
	fx_eval_result_release(&r);
	return FX_EXIT_OK;
}
