/* Logging to stderr with verbosity levels, and a progress line on a TTY. */
#ifndef FX_LOG_H
#define FX_LOG_H

#include "fx.h"

enum fx_log_level { FX_LOG_ERROR = 0, FX_LOG_WARN = 1, FX_LOG_INFO = 2, FX_LOG_DEBUG = 3 };

void fx_log_set_prog(const char *prog);
const char *fx_log_prog(void);
void fx_log_set_level(int level);     /* default FX_LOG_INFO; -q -> WARN... */
int fx_log_level(void);
void fx_log(int level, const char *fmt, ...) FX_PRINTF(2, 3);
/* "fx-quant: error: ..." */
#define fx_log_error(...) fx_log(FX_LOG_ERROR, __VA_ARGS__)
#define fx_log_warn(...) fx_log(FX_LOG_WARN, __VA_ARGS__)
#define fx_log_info(...) fx_log(FX_LOG_INFO, __VA_ARGS__)
#define fx_log_debug(...) fx_log(FX_LOG_DEBUG, __VA_ARGS__)

/* Progress: redrawn on stderr only when stderr is a TTY and level >= INFO. */
struct fx_progress {
	const char *what;
	uint64_t items_total, items_done;
	uint64_t bytes_total, bytes_done;
	double t_start, t_last;
	bool active;
};
void fx_progress_start(struct fx_progress *p, const char *what, uint64_t items, uint64_t bytes);
/* items and bytes are increments (done since the last call). */
void fx_progress_step(struct fx_progress *p, uint64_t items, uint64_t bytes);
void fx_progress_end(struct fx_progress *p);
double fx_now(void);   /* monotonic seconds */

#endif
