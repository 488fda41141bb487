/* One error type: a status code plus a message naming file, tensor and reason. */
#ifndef FX_ERR_H
#define FX_ERR_H

#include "fx.h"

#define FX_ERR_MSG_MAX 1024

struct fx_err {
	int code;                  /* enum fx_status, 0 when clear */
	char msg[FX_ERR_MSG_MAX];  /* lowercase, no trailing period, git style */
};

/* Fills err (may be NULL) and returns code, so callers can `return fx_error(...)`. */
int fx_error(struct fx_err *err, int code, const char *fmt, ...) FX_PRINTF(3, 4);
/* Prepends "context: " to an existing message, keeps the code; returns it. */
int fx_error_prefix(struct fx_err *err, const char *fmt, ...) FX_PRINTF(2, 3);
void fx_err_clear(struct fx_err *err);
const char *fx_status_str(int code);
/* Maps a status to the process exit code (design.md §5). */
int fx_status_exit(int code);

#define FX_TRY(expr) do { int fx_try_rc_ = (expr); if (fx_try_rc_ < 0) return fx_try_rc_; } while (0)

#endif
