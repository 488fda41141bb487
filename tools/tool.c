#include "fx-tool.h"

#include <stdio.h>
#include <stdlib.h>

#include "fx-log.h"
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
