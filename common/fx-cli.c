/* getopt_long driven by one option table; --help and --version. */
#include "fx-cli.h"
#include "fx-log.h"
#include "fx-room.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <omp.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#ifndef FX_CUDA
#define FX_CUDA 0
#endif

/* OpenBLAS runtime setter (declared here to keep cblas.h out of common/). */
void openblas_set_num_threads(int n);

/* Ids of the common options, above any tool id. */
enum {
	C_OUTPUT = 0x10000, C_FORCE, C_JSON, C_THREADS, C_DEVICE,
	C_HELP, C_VERSION, C_QUIET, C_VERBOSE,
	TOOL_BASE = 0x20000,   /* long option val = TOOL_BASE + index in the tool table */
	MAX_OPTS = 128
};

struct common_opt {
	unsigned bit;          /* 0: always offered */
	struct fx_opt o;
};

static const struct common_opt common_opts[] = {
	{ FX_CLI_OUTPUT, { "output", 'o', FX_OPT_REQ, "FILE", "write the result to FILE", C_OUTPUT } },
	{ FX_CLI_FORCE, { "force", 0, FX_OPT_NONE, NULL,
			  "overwrite an existing output and recompute everything", C_FORCE } },
	{ FX_CLI_JSON, { "json", 0, FX_OPT_NONE, NULL, "print one JSON object on stdout", C_JSON } },
	{ FX_CLI_THREADS, { "threads", 0, FX_OPT_REQ, "N",
			    "use N CPU threads (default: all cores)", C_THREADS } },
	{ FX_CLI_DEVICE, { "device", 0, FX_OPT_REQ, "DEV",
			   "compute on cpu, cuda or cuda:N (default: cpu)", C_DEVICE } },
	{ 0, { "quiet", 'q', FX_OPT_NONE, NULL, "print only warnings and errors (twice: errors)",
	       C_QUIET } },
	{ 0, { "verbose", 'v', FX_OPT_NONE, NULL, "print more detail on stderr (repeatable)",
	       C_VERBOSE } },
	{ 0, { "help", 'h', FX_OPT_NONE, NULL, "print this help and exit", C_HELP } },
	{ 0, { "version", 'V', FX_OPT_NONE, NULL, "print the version and exit", C_VERSION } },
};

static bool offered(const struct fx_cli *cli, const struct common_opt *c)
{
	return !c->bit || (cli->common & c->bit);
}

static size_t ntool(const struct fx_cli *cli)
{
	size_t n = 0;

	while (cli->opts && cli->opts[n].lng)
		n++;
	return n;
}

/* Builds the getopt tables; both are rebuilt on every call (cheap). */
static void build(const struct fx_cli *cli, struct option *lo, char *so, size_t so_cap)
{
	size_t i, n = 0, s = 0, nt = ntool(cli);

	FX_ASSERT(nt + FX_ARRAY_SIZE(common_opts) < MAX_OPTS);
	so[s++] = ':';   /* report missing arguments as ':' */
	for (i = 0; i < nt + FX_ARRAY_SIZE(common_opts); i++) {
		const struct fx_opt *o;
		int val;

		if (i < nt) {
			o = &cli->opts[i];
			val = TOOL_BASE + (int)i;
			FX_ASSERT(!o->shrt || !strchr("oqvhV", o->shrt));
		} else {
			if (!offered(cli, &common_opts[i - nt]))
				continue;
			o = &common_opts[i - nt].o;
			val = o->id;
		}
		lo[n].name = o->lng;
		lo[n].has_arg = o->arg == FX_OPT_REQ ? required_argument : no_argument;
		lo[n].flag = NULL;
		lo[n].val = val;
		n++;
		if (o->shrt) {
			FX_ASSERT(s + 3 < so_cap);
			so[s++] = (char)o->shrt;
			if (o->arg == FX_OPT_REQ)
				so[s++] = ':';
		}
	}
	memset(&lo[n], 0, sizeof(lo[n]));
	so[s] = '\0';
}

/* The table entry for a getopt return value (a short char or a long val). */
static const struct fx_opt *lookup(const struct fx_cli *cli, int c)
{
	size_t i, nt = ntool(cli);

	if (c >= TOOL_BASE && (size_t)(c - TOOL_BASE) < nt)
		return &cli->opts[c - TOOL_BASE];
	for (i = 0; i < FX_ARRAY_SIZE(common_opts); i++)
		if (offered(cli, &common_opts[i]) &&
		    (common_opts[i].o.id == c || (c < 256 && common_opts[i].o.shrt == c)))
			return &common_opts[i].o;
	for (i = 0; c > 0 && c < 256 && i < nt; i++)
		if (cli->opts[i].shrt == c)
			return &cli->opts[i];
	return NULL;
}

void fx_cli_init(struct fx_cli *cli, int argc, char **argv)
{
	const char *p = argc > 0 && argv[0] ? argv[0] : "fx";
	const char *slash = strrchr(p, '/');

	if (slash && slash[1])
		p = slash + 1;
	cli->prog = p;
	fx_log_set_prog(p);
	cli->argc = argc;
	cli->argv = argv;
	cli->optind = 1;
	memset(&cli->c, 0, sizeof(cli->c));
	cli->c.device = "cpu";
	optind = 0;   /* full getopt reset (GNU), so a second parse works */
	opterr = 0;
}

static void vusage_error(const struct fx_cli *cli, const char *fmt, va_list ap) FX_PRINTF(2, 0);
static void vusage_error(const struct fx_cli *cli, const char *fmt, va_list ap)
{
	char msg[512];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	fx_log_error("%s", msg);
	fprintf(stderr, "usage: %s\nTry '%s --help' for more information.\n",
		cli->synopsis ? cli->synopsis : cli->prog, cli->prog);
}

int fx_cli_usage_error(const struct fx_cli *cli, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vusage_error(cli, fmt, ap);
	va_end(ap);
	return FX_EXIT_USAGE;
}

static int usage_fail(const struct fx_cli *cli, const char *fmt, ...) FX_PRINTF(2, 3);
static int usage_fail(const struct fx_cli *cli, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vusage_error(cli, fmt, ap);
	va_end(ap);
	return -1;
}

static int left_width(const struct fx_opt *o)
{
	/* "-o, --output FILE" or "    --force" */
	return 4 + 2 + (int)strlen(o->lng) +
	       (o->arg == FX_OPT_REQ ? 1 + (int)strlen(o->argname ? o->argname : "ARG") : 0);
}

static void help_line(FILE *f, const struct fx_opt *o, int width)
{
	char left[160];

	if (o->shrt)
		snprintf(left, sizeof(left), "-%c, --%s", o->shrt, o->lng);
	else
		snprintf(left, sizeof(left), "    --%s", o->lng);
	if (o->arg == FX_OPT_REQ) {
		size_t n = strlen(left);

		snprintf(left + n, sizeof(left) - n, " %s", o->argname ? o->argname : "ARG");
	}
	fprintf(f, "  %-*s  %s\n", width, left, o->help ? o->help : "");
}

void fx_cli_help(const struct fx_cli *cli, FILE *f)
{
	size_t i, nt = ntool(cli);
	int w = 0;

	for (i = 0; i < nt; i++)
		if (left_width(&cli->opts[i]) > w)
			w = left_width(&cli->opts[i]);
	for (i = 0; i < FX_ARRAY_SIZE(common_opts); i++)
		if (offered(cli, &common_opts[i]) && left_width(&common_opts[i].o) > w)
			w = left_width(&common_opts[i].o);
	fprintf(f, "usage: %s\n\n", cli->synopsis ? cli->synopsis : cli->prog);
	if (cli->summary)
		fprintf(f, "%s\n\n", cli->summary);
	fputs("options:\n", f);
	for (i = 0; i < nt; i++)
		help_line(f, &cli->opts[i], w);
	for (i = 0; i < FX_ARRAY_SIZE(common_opts); i++)
		if (offered(cli, &common_opts[i]))
			help_line(f, &common_opts[i].o, w);
}

static FX_NORETURN void finish_stdout(void)
{
	if (fflush(stdout) != 0 || ferror(stdout)) {
		fx_log_error("write error on standard output: %s", strerror(errno));
		exit(FX_EXIT_IO);
	}
	exit(FX_EXIT_OK);
}

static bool device_ok(const char *s)
{
	long idx;

	if (!strcmp(s, "cpu") || !strcmp(s, "cuda"))
		return true;
	return !strncmp(s, "cuda:", 5) && fx_parse_int(s + 5, 0, 1023, &idx);
}

static void set_threads(int n)
{
	omp_set_num_threads(n);
	openblas_set_num_threads(n);
}

/* Names the option a getopt error refers to. */
static void opt_name(const struct fx_cli *cli, int c, char *buf, size_t cap)
{
	const struct fx_opt *o = c ? lookup(cli, c) : NULL;
	const char *arg = optind > 0 && optind <= cli->argc ? cli->argv[optind - 1] : NULL;

	if (o && arg && !strncmp(arg, "--", 2))
		snprintf(buf, cap, "--%s", o->lng);
	else if (c > 0 && c < 256)
		snprintf(buf, cap, "-%c", c);
	else if (o)
		snprintf(buf, cap, "--%s", o->lng);
	else if (arg)
		snprintf(buf, cap, "%.*s", (int)strcspn(arg, "="), arg);
	else
		snprintf(buf, cap, "?");
}

/* Whether "--pre" abbreviates more than one long option. */
static bool ambiguous(const struct option *lo, const char *name)
{
	size_t n = strlen(name + 2);
	int hits = 0;

	if (strncmp(name, "--", 2) || !n)
		return false;
	for (; lo->name; lo++)
		hits += !strncmp(lo->name, name + 2, n);
	return hits > 1;
}

int fx_cli_next(struct fx_cli *cli, const char **optarg_out)
{
	struct option lo[MAX_OPTS];
	char so[2 * MAX_OPTS + 4], name[128];
	const struct fx_opt *o;
	long v;
	int c;

	if (optarg_out)
		*optarg_out = NULL;
	build(cli, lo, so, sizeof(so));
	for (;;) {
		c = getopt_long(cli->argc, cli->argv, so, lo, NULL);
		if (c == -1) {
			struct fx_err err;

			cli->optind = optind;
			/* before the model is mapped: OpenBLAS would spin where it does not fit */
			if (fx_room_blas(&err) < 0) {
				fx_log_error("%s", err.msg);
				exit(FX_EXIT_IO);
			}
			return 0;
		}
		if (c == '?') {
			opt_name(cli, optopt, name, sizeof(name));
			if (optopt >= C_OUTPUT)
				return usage_fail(cli, "option '%s' doesn't allow an argument", name);
			if (!optopt && ambiguous(lo, name))
				return usage_fail(cli, "option '%s' is ambiguous", name);
			return usage_fail(cli, "unknown option '%s'", name);
		}
		if (c == ':') {
			opt_name(cli, optopt, name, sizeof(name));
			return usage_fail(cli, "option '%s' requires an argument", name);
		}
		o = lookup(cli, c);
		if (!o)
			return usage_fail(cli, "unknown option '-%c'", c > 0 && c < 256 ? c : '?');
		switch (o->id) {
		case C_OUTPUT:
			if (!*optarg)
				return usage_fail(cli, "option '--output' needs a file name");
			cli->c.output = optarg;
			break;
		case C_FORCE: cli->c.force = true; break;
		case C_JSON: cli->c.json = true; break;
		case C_THREADS:
			if (!fx_parse_int(optarg, 1, 4096, &v))
				return usage_fail(cli, "bad thread count '%s' (expected 1 to 4096)", optarg);
			cli->c.threads = (int)v;
			set_threads(cli->c.threads);
			break;
		case C_DEVICE:
			if (!device_ok(optarg))
				return usage_fail(cli, "unknown device '%s' (expected cpu, cuda or cuda:N)",
						  optarg);
			cli->c.device = optarg;
			break;
		case C_QUIET:
		case C_VERBOSE:
			cli->c.verbosity += o->id == C_VERBOSE ? 1 : -1;
			fx_log_set_level(FX_LOG_INFO + cli->c.verbosity);
			break;
		case C_HELP:
			fx_cli_help(cli, stdout);
			finish_stdout();
		case C_VERSION:
			printf("%s %s (fx-file %d; %s)\n", cli->prog, FX_VERSION, FX_FILE_VERSION,
			       FX_CUDA ? "cuda" : "no-cuda");
			finish_stdout();
		default:
			if (optarg_out)
				*optarg_out = o->arg == FX_OPT_REQ ? optarg : NULL;
			return o->id;
		}
	}
}

bool fx_parse_int(const char *s, long lo, long hi, long *out)
{
	char *end;
	long v;

	if (!s || !*s || isspace((unsigned char)*s))
		return false;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || end == s || *end || v < lo || v > hi)
		return false;
	if (out)
		*out = v;
	return true;
}

bool fx_parse_real(const char *s, double lo, double hi, double *out)
{
	char *end;
	double v;

	if (!s || !*s || isspace((unsigned char)*s))
		return false;
	errno = 0;
	v = strtod(s, &end);
	if (errno || end == s || *end || !(v >= lo && v <= hi))
		return false;
	if (out)
		*out = v;
	return true;
}

bool fx_parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!s || !*s)
		return false;
	for (; *s; s++) {
		unsigned d = (unsigned)(unsigned char)*s - '0';

		if (d > 9 || v > (UINT64_MAX - d) / 10)   /* not a digit, or v·10 + d overflows */
			return false;
		v = v * 10 + d;
	}
	*out = v;
	return true;
}

bool fx_cli_seed(const struct fx_cli *cli, const char *arg, uint64_t *seed)
{
	if (fx_parse_u64(arg, seed))
		return true;
	fx_cli_usage_error(cli, "--seed wants an integer from 0 to 18446744073709551615 (2^64-1), not '%s'",
			   arg);
	return false;
}

bool fx_parse_range(const char *s, int *a, int *b)
{
	char buf[64];
	const char *dash;
	long x, y;

	if (!s || !*s)
		return false;
	dash = strchr(s + 1, '-');
	if (!dash) {
		if (!isdigit((unsigned char)*s) || !fx_parse_int(s, 0, INT_MAX, &x))
			return false;
		y = x;
	} else {
		size_t n = (size_t)(dash - s);

		if (n >= sizeof(buf) || !isdigit((unsigned char)*s) ||
		    !isdigit((unsigned char)dash[1]))
			return false;
		memcpy(buf, s, n);
		buf[n] = '\0';
		if (!fx_parse_int(buf, 0, INT_MAX, &x) || !fx_parse_int(dash + 1, 0, INT_MAX, &y))
			return false;
	}
	if (x > y)
		return false;
	if (a)
		*a = (int)x;
	if (b)
		*b = (int)y;
	return true;
}
