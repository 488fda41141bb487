/* Option parsing shared by all tools: one table drives getopt_long and --help. */
#ifndef FX_CLI_H
#define FX_CLI_H

#include <stdio.h>
#include "fx.h"

enum fx_opt_arg { FX_OPT_NONE, FX_OPT_REQ };

struct fx_opt {
	const char *lng;      /* "model" */
	int shrt;             /* 'o', or 0 */
	enum fx_opt_arg arg;
	const char *argname;  /* "FILE" */
	const char *help;
	int id;               /* returned by fx_cli_next(); >= 256 for long-only */
};

/* Common options every tool accepts (handled inside fx_cli_next). */
struct fx_cli_common {
	int verbosity;        /* 0 default, <0 -q, >0 -v */
	int threads;          /* 0: default */
	const char *output;   /* -o */
	bool force;
	bool json;
	const char *device;   /* "cpu" default */
};

struct fx_cli {
	const char *prog;
	const char *synopsis; /* "fx-quant --model M ... -o FILE" (after "usage: ") */
	const char *summary;  /* one line */
	const struct fx_opt *opts;   /* tool options, terminated by {0} */
	unsigned common;      /* FX_CLI_* bits of the common options to offer */
	struct fx_cli_common c;
	int argc;
	char **argv;
	int optind;           /* first positional after parsing */
};

enum {
	FX_CLI_OUTPUT = 1 << 0, FX_CLI_FORCE = 1 << 1, FX_CLI_JSON = 1 << 2,
	FX_CLI_THREADS = 1 << 3, FX_CLI_DEVICE = 1 << 4,
};

/* Returns an option id, 0 at the end, or -1 after a usage error (message
 * printed, caller exits 2). --help/--version print and exit 0 here. */
int fx_cli_next(struct fx_cli *cli, const char **optarg_out);
void fx_cli_init(struct fx_cli *cli, int argc, char **argv);
/* Prints "prog: error: msg" and a short usage hint to stderr; returns 2. */
int fx_cli_usage_error(const struct fx_cli *cli, const char *fmt, ...) FX_PRINTF(2, 3);
void fx_cli_help(const struct fx_cli *cli, FILE *f);
/* Parses "A-B" or "A" into [a,b]; false when malformed. */
bool fx_parse_range(const char *s, int *a, int *b);
bool fx_parse_int(const char *s, long lo, long hi, long *out);
/* A finite decimal number in [lo, hi] (NaN never); false otherwise. */
bool fx_parse_real(const char *s, double lo, double hi, double *out);
/* Decimal digits only (no sign, no spaces), 0 to 2^64-1; false otherwise. */
bool fx_parse_u64(const char *s, uint64_t *out);
/* --seed of every tool: the full range of the 64-bit generators. On a bad
 * value prints the usage error, which states the range, and returns false. */
bool fx_cli_seed(const struct fx_cli *cli, const char *arg, uint64_t *seed);

#endif
