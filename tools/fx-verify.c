/* fx-verify: audit any fx intermediate, Nunchaku checkpoint or FLUX model. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-audit.h"
#include "fx-cli.h"
#include "fx-log.h"
#include "fx-lora.h"
#include "fx-tool.h"

enum { OPT_MODEL = 256, OPT_LORA, OPT_LORA_IGNORE, OPT_CALIB, OPT_BRANCH, OPT_STRICT };

static const struct fx_opt opts[] = {
	{ "model", 0, FX_OPT_REQ, "M", "source model, for provenance, completeness and numerics", OPT_MODEL },
	FX_TOOL_LORA_OPTS(OPT_LORA),
	{ "calib", 0, FX_OPT_REQ, "C", "fx.calib file, for provenance and output error", OPT_CALIB },
	{ "branch", 0, FX_OPT_REQ, "B", "fx.branch file, for provenance", OPT_BRANCH },
	{ "strict", 0, FX_OPT_NONE, NULL, "warnings count as findings", OPT_STRICT },
	{ 0 }
};

static void human_bytes(char *buf, size_t cap, uint64_t b)
{
	if (b >= (1ull << 30))
		snprintf(buf, cap, "%.2f GiB", b / 1073741824.0);
	else if (b >= (1ull << 20))
		snprintf(buf, cap, "%.1f MiB", b / 1048576.0);
	else if (b >= 1024)
		snprintf(buf, cap, "%.1f KiB", b / 1024.0);
	else
		snprintf(buf, cap, "%llu B", (unsigned long long)b);
}

static void print_human(const struct fx_audit *a)
{
	char sz[32];
	size_t i;
	bool first = true;

	human_bytes(sz, sizeof(sz), a->nbytes);
	printf("%s: %s, %zu file%s, %zu tensors, %s\n", a->path, a->kind, a->nfiles,
	       a->nfiles == 1 ? "" : "s", a->ntensors, sz);
	if (a->model_summary)
		printf("  %s\n", a->model_summary);
	printf("  dtypes:");
	for (i = 0; i < FX_DTYPE_COUNT; i++) {
		if (!a->dtype_count[i])
			continue;
		human_bytes(sz, sizeof(sz), a->dtype_bytes[i]);
		printf("%s %s %zu (%s)", first ? "" : ",", fx_dtype_name(i), a->dtype_count[i], sz);
		first = false;
	}
	printf("%s\n", first ? " none" : "");
	if (a->format) {
		printf("  format: %s version %d, written by %s\n", a->format, a->version,
		       a->tool ? a->tool : "?");
		if (a->params)
			printf("  params: %s\n", a->params);
		if (a->inputs)
			printf("  inputs: %s\n", a->inputs);
		if (a->recipe)
			printf("  recipe: %s\n", a->recipe);
	}
	for (i = 0; i < a->lines_n; i++)
		printf("  %s\n", a->lines[i]);
	for (i = 0; i < a->nfind; i++)
		printf("  %s: %s%s%s: %s\n", fx_severity_name(a->find[i].sev), a->find[i].check,
		       a->find[i].where[0] ? " " : "", a->find[i].where, a->find[i].msg);
}

int main(int argc, char **argv)
{
	struct fx_cli cli = {
		.synopsis = "fx-verify [options] FILE...",
		.summary = "Audit fx intermediates, Nunchaku checkpoints and source models (FLUX.1, Qwen-Image).",
		.opts = opts,
		.common = FX_CLI_JSON,
	};
	static struct fx_loras loras;
	struct fx_audit_opts ao = { .loras = &loras };
	const char *arg;
	json_t *root = NULL, *files = NULL;
	size_t nerr = 0, nwarn = 0, nfail = 0;
	int id, i, unreadable = 0;

	fx_cli_init(&cli, argc, argv);
	while ((id = fx_cli_next(&cli, &arg)) > 0) {
		switch (id) {
		case OPT_MODEL: ao.model = arg; break;
		case OPT_LORA:
		case OPT_LORA_IGNORE:
			if ((i = fx_tool_lora(&cli, &loras, id, OPT_LORA, arg)))
				return i;
			break;
		case OPT_CALIB: ao.calib = arg; break;
		case OPT_BRANCH: ao.branch = arg; break;
		case OPT_STRICT: ao.strict = true; break;
		}
	}
	if (id < 0)
		return FX_EXIT_USAGE;
	if (cli.optind >= argc)
		return fx_cli_usage_error(&cli, "no input files");
	if (loras.n && !ao.model)
		return fx_cli_usage_error(&cli, "--lora needs --model (the LoRAs merge into it)");
	if (cli.c.json) {
		root = json_object();
		files = json_array();
		json_object_set_new(root, "schema", json_string("fx-verify/1"));
	}
	for (i = cli.optind; i < argc; i++) {
		struct fx_audit a;
		struct fx_err err = {0};
		size_t k;

		fx_audit_init(&a);
		if (fx_audit_path(&a, argv[i], &ao, &err) < 0) {
			unreadable = 1;
			fx_log_error("%s", err.msg);
			if (files) {
				json_t *o = json_object();

				json_object_set_new(o, "path", json_string(argv[i]));
				json_object_set_new(o, "error", json_string(err.msg));
				json_array_append_new(files, o);
			}
			fx_audit_release(&a);
			continue;
		}
		for (k = 0; k < a.nfind; k++) {
			nerr += a.find[k].sev == FX_SEV_ERROR;
			nwarn += a.find[k].sev == FX_SEV_WARN;
		}
		nfail += fx_audit_failures(&a, ao.strict);
		if (files)
			json_array_append_new(files, fx_audit_json(&a));
		else
			print_human(&a);
		fx_audit_release(&a);
	}
	if (root) {
		char *s;

		json_object_set_new(root, "files", files);
		json_object_set_new(root, "errors", json_integer((json_int_t)nerr));
		json_object_set_new(root, "warnings", json_integer((json_int_t)nwarn));
		json_object_set_new(root, "status", json_string(unreadable ? "unreadable" :
								 nfail ? "findings" : "ok"));
		s = json_dumps(root, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		if (s)
			puts(s);
		free(s);
		json_decref(root);
	} else {
		printf("summary: %d file%s, %zu error%s, %zu warning%s%s\n", argc - cli.optind,
		       argc - cli.optind == 1 ? "" : "s", nerr, nerr == 1 ? "" : "s", nwarn,
		       nwarn == 1 ? "" : "s", unreadable ? ", some inputs unreadable" : "");
	}
	if (unreadable)
		return FX_EXIT_INPUT;
	return nfail ? FX_EXIT_FINDINGS : FX_EXIT_OK;
}
