#include "fx-err.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void fx_bug(const char *file, int line, const char *cond)
{
	fprintf(stderr, "BUG: %s:%d: %s\n", file, line, cond);
	abort();
}

int fx_error(struct fx_err *err, int code, const char *fmt, ...)
{
	if (err) {
		va_list ap;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
		err->code = code;
	}
	return code;
}

int fx_error_prefix(struct fx_err *err, const char *fmt, ...)
{
	char pre[FX_ERR_MSG_MAX], tmp[2 * FX_ERR_MSG_MAX + 4];
	va_list ap;

	if (!err)
		return FX_E_ARG;
	va_start(ap, fmt);
	vsnprintf(pre, sizeof(pre), fmt, ap);
	va_end(ap);
	snprintf(tmp, sizeof(tmp), "%s: %s", pre, err->msg);
	memcpy(err->msg, tmp, sizeof(err->msg) - 1);
	err->msg[sizeof(err->msg) - 1] = '\0';
	return err->code;
}

void fx_err_clear(struct fx_err *err)
{
	if (err) {
		err->code = 0;
		err->msg[0] = '\0';
	}
}

const char *fx_status_str(int code)
{
	switch (code) {
	case FX_OK: return "ok";
	case FX_E_ARG: return "invalid argument";
	case FX_E_IO: return "i/o error";
	case FX_E_NOMEM: return "out of memory";
	case FX_E_FORMAT: return "bad format";
	case FX_E_VERSION: return "unsupported version";
	case FX_E_HASH: return "checksum or provenance mismatch";
	case FX_E_UNSUPPORTED: return "unsupported";
	case FX_E_CUDA: return "cuda error";
	case FX_E_VALUE: return "invalid value";
	case FX_E_INTERRUPTED: return "interrupted";
	}
	return "unknown error";
}

int fx_status_exit(int code)
{
	switch (code) {
	case FX_OK: return FX_EXIT_OK;
	case FX_E_ARG: return FX_EXIT_USAGE;
	case FX_E_IO: case FX_E_NOMEM: case FX_E_CUDA: case FX_E_INTERRUPTED:
		return FX_EXIT_IO;
	default: return FX_EXIT_INPUT;
	}
}
