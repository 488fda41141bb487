/* fx-meta: write or repair the loader metadata of a Nunchaku checkpoint. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-audit.h"
#include "fx-cli.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-lora.h"
#include "fx-meta.h"
#include "fx-model.h"
#include "fx-tool.h"

enum { OPT_MODEL = 256, OPT_LORA, OPT_LORA_IGNORE, OPT_PRECISION, OPT_RANK, OPT_CHECK };

static const struct fx_opt opts[] = {
	{ "model", 0, FX_OPT_REQ, "M", "take the config from this model", OPT_MODEL },
	FX_TOOL_LORA_OPTS(OPT_LORA),
	{ "precision", 0, FX_OPT_REQ, "fp4|int4", "override the precision read off the tensors", OPT_PRECISION },
	{ "rank", 0, FX_OPT_REQ, "R", "override the rank read off the lora tensors", OPT_RANK },
	{ "check", 0, FX_OPT_NONE, NULL, "only report; exit 1 when metadata is missing or wrong", OPT_CHECK },
	{ 0 }
};

int main(int argc, char **argv)
{
	struct fx_cli cli = {
		.synopsis = "fx-meta [--model M] [--precision fp4|int4] [--rank R] [--check] FILE",
		.summary = "Write or repair model_class, config, quantization_config and comfy_config.",
		.opts = opts,
		.common = FX_CLI_JSON,
	};
	static struct fx_loras loras;
	struct fx_meta_opts mo = { .rank = -1 };
	const char *keys[FX_META_COUNT + 1], *v[FX_META_COUNT + 1];
	char *lj = NULL;
	size_t nkeys = 0;
	struct fx_err err = {0};
	struct fx_model *m = NULL;
	struct fx_st *st = NULL;
	char *vals[FX_META_COUNT] = {0};
	const char *arg, *model = NULL, *file;
	bool check = false, in_place = false, same = true;
	int id, i, ret = 0;
	long r;

	fx_cli_init(&cli, argc, argv);
	fx_io_install_signal_cleanup();
	while ((id = fx_cli_next(&cli, &arg)) > 0) {
		switch (id) {
		case OPT_MODEL: model = arg; break;
		case OPT_LORA:
		case OPT_LORA_IGNORE:
			if ((ret = fx_tool_lora(&cli, &loras, id, OPT_LORA, arg)))
				return ret;
			break;
		case OPT_PRECISION:
			if (strcmp(arg, "fp4") && strcmp(arg, "int4"))
				return fx_cli_usage_error(&cli, "--precision must be fp4 or int4, not '%s'", arg);
			mo.precision = arg;
			break;
		case OPT_RANK:
			if (!fx_parse_int(arg, 0, 4096, &r) || r % 16)
				return fx_cli_usage_error(&cli, "--rank must be a multiple of 16, not '%s'", arg);
			mo.rank = (int)r;
			break;
		case OPT_CHECK: check = true; break;
		}
	}
	if (id < 0)
		return FX_EXIT_USAGE;
	if (cli.optind != argc - 1)
		return fx_cli_usage_error(&cli, "expected exactly one FILE");
	if (loras.n && !model)
		return fx_cli_usage_error(&cli, "--lora needs --model (the LoRAs merge into it)");
	file = argv[cli.optind];

	if ((ret = fx_st_open(&st, file, &err)) < 0)
		goto fail;
	if (check) {
		struct fx_audit a;
		size_t k, n;

		fx_audit_init(&a);
		snprintf(a.path, sizeof(a.path), "%s", file);
		fx_meta_audit(st, &a);
		n = fx_audit_failures(&a, false);
		if (cli.c.json) {
			json_t *o = fx_audit_json(&a);
			char *js;

			json_object_set_new(o, "schema", json_string("fx-meta-check/1"));
			json_object_set_new(o, "status", json_string(n ? "findings" : "ok"));
			js = json_dumps(o, JSON_COMPACT | JSON_SORT_KEYS);
			if (js)
				puts(js);
			free(js);
			json_decref(o);
		} else {
			for (k = 0; k < a.nfind; k++)
				printf("%s: %s: %s\n", file, fx_severity_name(a.find[k].sev), a.find[k].msg);
			if (!n)
				printf("%s: metadata ok\n", file);
		}
		fx_audit_release(&a);
		fx_st_close(st);
		return n ? FX_EXIT_FINDINGS : FX_EXIT_OK;
	}
	if (model) {
		/* the LoRAs are read against the model: a wrong one is refused here */
		if ((ret = fx_model_open_loras(&m, model, &loras, &err)) < 0)
			goto fail;
		mo.config_json = fx_model_config_json(m);
		mo.family = fx_model_config(m)->family;
	}
	if ((ret = fx_meta_compute(st, &mo, vals, &err)) < 0)
		goto fail;
	/* the keys the family writes (comfy_config only where its loaders read it) */
	for (i = 0; i < FX_META_COUNT; i++) {
		const char *have = fx_st_meta(st, fx_meta_keys[i]);

		if (!vals[i])
			continue;
		keys[nkeys] = fx_meta_keys[i];
		v[nkeys++] = vals[i];
		if (!have || strcmp(have, vals[i]))
			same = false;
	}
	/* fx.loras: what fx-pack recorded stays; given LoRAs must be those (an
	 * fx checkpoint's model identity covers them), or are recorded on a
	 * checkpoint another tool wrote */
	if ((ret = fx_lora_describe(&lj, &loras, &err)) < 0)
		goto fail;
	if (lj) {
		const char *have = fx_st_meta(st, "fx.loras");

		if (fx_st_meta(st, "fx.format") && (!have || strcmp(have, lj))) {
			ret = fx_error(&err, FX_E_HASH, "'%s' was made with %s%s, not the LoRAs given (%s): "
				       "give the same --lora options as to fx-pack", file,
				       have ? "the LoRAs " : "no LoRA", have ? have : "", lj);
			goto fail;
		}
		if (!have || strcmp(have, lj)) {
			same = false;
			keys[nkeys] = "fx.loras";
			v[nkeys++] = lj;
		}
	}
	fx_st_close(st);
	st = NULL;
	if (same) {
		fx_log_info("%s: metadata up to date", file);
	} else {
		fx_out_rewrites(file);   /* its own input by design */
		if ((ret = fx_meta_write(file, keys, v, nkeys, &in_place, &err)) < 0)
			goto fail;
		fx_log_info("%s: metadata written (%s)", file, in_place ? "in place" : "rewritten");
	}
	if (cli.c.json) {
		json_t *o = json_pack("{s:s, s:s, s:s, s:b, s:b}", "schema", "fx-stage/1", "tool", "fx-meta",
				      "output", file, "up_to_date", same, "in_place", in_place);
		char *js = o ? json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;

		if (js)
			puts(js);
		free(js);
		json_decref(o);
	}
	for (i = 0; i < FX_META_COUNT; i++)
		free(vals[i]);
	free(lj);
	fx_model_close(m);
	return FX_EXIT_OK;
fail:
	fx_log_error("%s", err.msg);
	free(lj);
	for (i = 0; i < FX_META_COUNT; i++)
		free(vals[i]);
	fx_st_close(st);
	fx_model_close(m);
	return fx_status_exit(ret);
}
