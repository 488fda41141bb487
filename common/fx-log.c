/* Logging to stderr and the TTY progress line. */
#include "fx-log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static char g_prog[64] = "fx";
static int g_level = FX_LOG_INFO;
static struct fx_progress *g_live;   /* progress line currently on screen */

void fx_log_set_prog(const char *prog)
{
	if (prog && *prog)
		snprintf(g_prog, sizeof(g_prog), "%s", prog);
}

const char *fx_log_prog(void)
{
	return g_prog;
}

void fx_log_set_level(int level)
{
	g_level = level < FX_LOG_ERROR ? FX_LOG_ERROR : level;
}

int fx_log_level(void)
{
	return g_level;
}

double fx_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec * 1e-9;
}

static void progress_draw(struct fx_progress *p);

void fx_log(int level, const char *fmt, ...)
{
	static const char *const tag[] = { "error: ", "warning: " };
	char buf[2048];
	size_t n;
	va_list ap;
	int k;

	if (level > g_level)
		return;
	k = snprintf(buf, sizeof(buf), "%s: %s", g_prog,
		     level >= FX_LOG_ERROR && level <= FX_LOG_WARN ? tag[level] : "");
	n = k < 0 ? 0 : (size_t)k;
	if (n < sizeof(buf)) {
		va_start(ap, fmt);
		k = vsnprintf(buf + n, sizeof(buf) - n, fmt, ap);
		va_end(ap);
		if (k > 0)
			n += (size_t)k;
	}
	if (n > sizeof(buf) - 2)
		n = sizeof(buf) - 2;   /* truncated */
	if (n && buf[n - 1] == '\n')
		n--;
	buf[n++] = '\n';
	buf[n] = '\0';

	flockfile(stderr);
	if (g_live)
		fputs("\r\033[K", stderr);
	fputs(buf, stderr);
	if (g_live)
		progress_draw(g_live);
	fflush(stderr);
	funlockfile(stderr);
}

/* Progress line */

static const char *unit_for(double b, double *div)
{
	static const char *const name[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	int i = 0;

	*div = 1.0;
	while (i < 4 && b >= *div * 1024.0) {
		*div *= 1024.0;
		i++;
	}
	return name[i];
}

static void fmt_eta(char *buf, size_t cap, double s)
{
	unsigned long t = s > 359999.0 ? 359999ul : (unsigned long)(s + 0.5);

	if (t >= 3600)
		snprintf(buf, cap, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
	else
		snprintf(buf, cap, "%lu:%02lu", t / 60, t % 60);
}

static void progress_draw(struct fx_progress *p)
{
	char line[256], eta[32];
	double el = fx_now() - p->t_start, frac = -1.0, div;
	const char *u;
	int n, k;

	n = snprintf(line, sizeof(line), "\r%s: %llu/%llu layers", p->what,
		     (unsigned long long)p->items_done, (unsigned long long)p->items_total);
	if (n < 0 || n >= (int)sizeof(line))
		n = n < 0 ? 0 : (int)sizeof(line) - 1;
	if (p->bytes_total) {
		u = unit_for((double)p->bytes_total, &div);
		k = snprintf(line + n, sizeof(line) - (size_t)n, ", %.1f/%.1f %s",
			     p->bytes_done / div, p->bytes_total / div, u);
		n = n + k < (int)sizeof(line) ? n + k : (int)sizeof(line) - 1;
		if (el > 0.5) {
			double rate = p->bytes_done / el;

			u = unit_for(rate, &div);
			k = snprintf(line + n, sizeof(line) - (size_t)n, ", %.*f %s/s",
				     rate / div < 10.0 ? 1 : 0, rate / div, u);
			n = n + k < (int)sizeof(line) ? n + k : (int)sizeof(line) - 1;
		}
		frac = (double)p->bytes_done / (double)p->bytes_total;
	} else if (p->items_total) {
		frac = (double)p->items_done / (double)p->items_total;
	}
	if (frac > 0.0 && frac < 1.0 && el > 1.0) {
		fmt_eta(eta, sizeof(eta), el * (1.0 - frac) / frac);
		snprintf(line + n, sizeof(line) - (size_t)n, ", ETA %s", eta);
	}
	fputs(line, stderr);
	fputs("\033[K", stderr);
	fflush(stderr);
}

void fx_progress_start(struct fx_progress *p, const char *what, uint64_t items, uint64_t bytes)
{
	memset(p, 0, sizeof(*p));
	p->what = what ? what : "";
	p->items_total = items;
	p->bytes_total = bytes;
	p->t_start = fx_now();
	p->active = g_level >= FX_LOG_INFO && isatty(STDERR_FILENO);
	if (!p->active)
		return;
	flockfile(stderr);
	g_live = p;
	p->t_last = p->t_start;
	progress_draw(p);
	funlockfile(stderr);
}

void fx_progress_step(struct fx_progress *p, uint64_t items, uint64_t bytes)
{
	double now;

	p->items_done += items;
	p->bytes_done += bytes;
	if (!p->active)
		return;
	now = fx_now();
	if (now - p->t_last < 0.2 && p->items_done < p->items_total)
		return;
	flockfile(stderr);
	p->t_last = now;
	progress_draw(p);
	funlockfile(stderr);
}

void fx_progress_end(struct fx_progress *p)
{
	if (!p->active)
		return;
	flockfile(stderr);
	progress_draw(p);
	fputc('\n', stderr);
	fflush(stderr);
	if (g_live == p)
		g_live = NULL;
	p->active = false;
	funlockfile(stderr);
}
