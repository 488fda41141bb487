#include "fx-tool.h"

#include <stdio.h>
#include <stdlib.h>

#include "fx-cli.h"
#include "fx-log.h"
#include "fx-lora.h"
#include "fx-merge.h"
#include "fx-stage.h"

int fx_tool_stage_done(int ret, const struct fx_err *err, struct fx_stage *s, bool up_to_date,
		       bool json, const char *output, const char *verb)
{
	if (ret < 0) {
		fx_log_error("%s", err->msg);
		fx_stage_free(s);
		return fx_status_exit(ret);
	}
	if (up_to_date)
		fx_log_info("%s: up to date", output);
	else if (fx_stage_nreused(s))
		fx_log_info("%s: %zu layers %s, %zu reused", output, fx_stage_ncomputed(s), verb,
			    fx_stage_nreused(s));
	else
		fx_log_info("%s: %zu layers %s", output, fx_stage_ncomputed(s), verb);
	if (json) {
		char *js = fx_stage_report_json(s, up_to_date);

		if (js)
			puts(js);
		free(js);
	}
	fx_stage_free(s);
	return FX_EXIT_OK;
}

int fx_tool_lora(struct fx_cli *cli, struct fx_loras *l, int id, int lora_id, const char *arg)
{
	struct fx_err err = {0};

	if (id == lora_id + 1) {
		l->ignore_unknown = true;
		return 0;
	}
	if (fx_loras_add(l, arg, &err) < 0)
		return fx_cli_usage_error(cli, "%s", err.msg);
	return 0;
}

int fx_tool_require(struct fx_cli *cli, int argc, char **argv, bool have, const char *missing)
{
	if (cli->optind < argc)
		return fx_cli_usage_error(cli, "unexpected argument '%s'", argv[cli->optind]);
	if (!have)
		return fx_cli_usage_error(cli, "%s", missing);
	if (!cli->c.output)
		return fx_cli_usage_error(cli, "-o/--output is required");
	return 0;
}

int fx_tool_merge(struct fx_cli *cli, int argc, char **argv, const char *tool, const char *format)
{
	struct fx_err err = {0};
	struct fx_stage *s = NULL;
	bool utd = false;
	int ret;

	if (!cli->c.output || cli->optind >= argc)
		return fx_cli_usage_error(cli, "--merge wants -o OUT and the shard files");
	ret = fx_merge_run(tool, format, (const char *const *)argv + cli->optind, argc - cli->optind,
			   cli->c.output, cli->c.force, &utd, &s, &err);
	return fx_tool_stage_done(ret, &err, s, utd, cli->c.json, cli->c.output, "merged");
}
