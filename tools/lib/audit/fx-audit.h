/* The audit behind fx-verify: findings about one file or model folder. */
#ifndef FX_AUDIT_H
#define FX_AUDIT_H

#include "fx-err.h"
#include "fx-tensor.h"

struct fx_st;

enum fx_severity { FX_SEV_NOTE, FX_SEV_WARN, FX_SEV_ERROR };

struct fx_finding {
	enum fx_severity sev;
	char check[24];      /* "crc32", "header", "missing", ... */
	char where[160];     /* tensor or layer, "" for the file */
	char msg[480];
};

struct fx_loras;

struct fx_audit_opts {
	const char *model;   /* --model, for provenance/numerics (later) */
	const struct fx_loras *loras;   /* --lora: merged into the model */
	const char *calib;
	const char *branch;
	bool strict;         /* warnings count as findings */
};

struct fx_audit {
	char path[4096];
	char kind[32];       /* fx.calib ... | model | safetensors */
	char *format;        /* fx.format or NULL */
	int version;
	char *tool, *params, *inputs, *recipe;
	size_t nfiles, ntensors;
	uint64_t nbytes;
	size_t dtype_count[FX_DTYPE_COUNT];
	uint64_t dtype_bytes[FX_DTYPE_COUNT];
	char *model_summary; /* "dev, hidden 256, 2 double + 2 single blocks, ..." */
	size_t nfind, capfind;
	struct fx_finding *find;
	size_t lines_n, lines_cap;
	char **lines;        /* per-layer report lines ("[OK] qkv_proj (block 0): ...") */
};

void fx_audit_init(struct fx_audit *a);
void fx_audit_release(struct fx_audit *a);
/* Returns <0 when the input cannot be read at all (exit 3); findings otherwise. */
int fx_audit_path(struct fx_audit *a, const char *path, const struct fx_audit_opts *o,
		  struct fx_err *err);
void fx_audit_add(struct fx_audit *a, enum fx_severity sev, const char *check, const char *where,
		  const char *fmt, ...) FX_PRINTF(5, 6);
void fx_audit_line(struct fx_audit *a, const char *fmt, ...) FX_PRINTF(2, 3);
/* Count of findings that fail the audit (errors, and warnings when strict). */
size_t fx_audit_failures(const struct fx_audit *a, bool strict);
/* What a stage checks of an fx intermediate it reads, as fx-verify would:
 * format (want) and version, the header (recipe against params and inputs,
 * so an edited header shows), every tensor's checksum, the groups the model
 * at model_path gives (present, dtype, shape; nothing extra) and, for a
 * branch file, its per-layer audit. The first error is returned as
 * FX_E_FORMAT (FX_E_HASH for a checksum) naming the file and the check. */
int fx_audit_input(const struct fx_st *st, const char *want, const char *model_path,
		   const char *tool, struct fx_err *err);
/* JSON object (jansson json_t *, returned as void * to keep jansson out of
 * callers that don't need it); caller json_decref()s. */
void *fx_audit_json(const struct fx_audit *a);
const char *fx_severity_name(enum fx_severity s);

#endif
