/* fx: umbrella header: version, status codes, assertion macros. */
#ifndef FX_H
#define FX_H

#include <stddef.h>
#include <stdint.h>
#include <stdbool.h>

#define FX_VERSION "0.1.0"
#define FX_FILE_VERSION 1

/* Library status: 0 or a negative code. Tools map them to exit codes. */
enum fx_status {
	FX_OK = 0,
	FX_E_ARG = -1,         /* bad argument or usage */
	FX_E_IO = -2,          /* read/write/mmap failure, disk full */
	FX_E_NOMEM = -3,
	FX_E_FORMAT = -4,      /* malformed or inconsistent input */
	FX_E_VERSION = -5,     /* file newer than this tool */
	FX_E_HASH = -6,        /* checksum or provenance mismatch */
	FX_E_UNSUPPORTED = -7,
	FX_E_CUDA = -8,
	FX_E_VALUE = -9,       /* NaN/Inf or out-of-range values in input */
	FX_E_INTERRUPTED = -10,
	FX_STATUS_COUNT = 11
};

/* Process exit codes (design.md §5). */
enum fx_exit {
	FX_EXIT_OK = 0,
	FX_EXIT_FINDINGS = 1,
	FX_EXIT_USAGE = 2,
	FX_EXIT_INPUT = 3,
	FX_EXIT_IO = 4
};

#if defined(__GNUC__)
#define FX_PRINTF(a, b) __attribute__((format(printf, a, b)))
#define FX_NORETURN __attribute__((noreturn))
#define FX_UNUSED __attribute__((unused))
#else
#define FX_PRINTF(a, b)
#define FX_NORETURN
#define FX_UNUSED
#endif

FX_NORETURN void fx_bug(const char *file, int line, const char *cond);
#define FX_ASSERT(c) do { if (!(c)) fx_bug(__FILE__, __LINE__, #c); } while (0)
#define FX_BUG(msg) fx_bug(__FILE__, __LINE__, msg)
#define FX_ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#endif
