/* safetensors: validating mmap reader, sharded sets, streaming writer. */
#ifndef FX_ST_H
#define FX_ST_H

#include "fx-err.h"
#include "fx-tensor.h"

#define FX_ST_MAX_HEADER (100u << 20)

/* ---- one file ------------------------------------------------------- */
struct fx_st;

/* Opens and validates: header length (<= 100 MiB, within the file), JSON,
 * known dtypes, shape x size == byte length (overflow-checked), offsets in
 * bounds, no overlap, no holes, __metadata__ string->string, no duplicate
 * names. Every message names the file (and the tensor when there is one). */
int fx_st_open(struct fx_st **out, const char *path, struct fx_err *err);
/* Same over a caller-owned buffer (fuzzing, tests); buf must outlive the handle. */
int fx_st_open_mem(struct fx_st **out, const void *buf, size_t len,
		   const char *name, struct fx_err *err);
void fx_st_close(struct fx_st *st);

/* FX_E_IO when this process maps another file under st's path than st
 * (the path was replaced between two opens): an identity read from st would
 * not be of the bytes the run reads. */
int fx_st_check_same(const struct fx_st *st, struct fx_err *err);
const char *fx_st_path(const struct fx_st *st);
size_t fx_st_count(const struct fx_st *st);
/* Tensors in file order (ascending data offset). Borrowed. */
const struct fx_tensor *fx_st_at(const struct fx_st *st, size_t i);
const struct fx_tensor *fx_st_find(const struct fx_st *st, const char *name);
/* Metadata value or NULL; borrowed. */
const char *fx_st_meta(const struct fx_st *st, const char *key);
size_t fx_st_meta_count(const struct fx_st *st);
void fx_st_meta_at(const struct fx_st *st, size_t i, const char **key, const char **val);
/* Layout facts (fx-meta rewrites the header in place when it fits). */
uint64_t fx_st_header_len(const struct fx_st *st);   /* the 8-byte length value */
uint64_t fx_st_file_size(const struct fx_st *st);

/* Maps the pages of [p, p+n) inside an open file's mapping in one call
 * (MADV_POPULATE_READ) instead of a fault per few pages on first read; no-op
 * elsewhere or where the kernel lacks it. */
void fx_mem_prefault(const void *p, size_t n);

/* Drops our mappings of a tensor read from a file (whole pages inside it
 * only): resident memory stays near what a stage works on, the pages stay in
 * the page cache, a later read maps them again. Data in a caller's buffer
 * (fx_st_open_mem) is left alone. */
void fx_tensor_release(const struct fx_tensor *t);

/* ---- a model spread over shards -------------------------------------- */
struct fx_stset;

/* path: a .safetensors file, a *.safetensors.index.json, or a directory
 * holding exactly one index or one .safetensors file. The index's
 * weight_map is checked: every named shard opens, every tensor is where the
 * map says, no tensor is in two shards. */
int fx_stset_open(struct fx_stset **out, const char *path, struct fx_err *err);
void fx_stset_close(struct fx_stset *set);
size_t fx_stset_nfiles(const struct fx_stset *set);
const struct fx_st *fx_stset_file(const struct fx_stset *set, size_t i);
size_t fx_stset_count(const struct fx_stset *set);
/* Tensors over all shards in a deterministic order (by name). */
const struct fx_tensor *fx_stset_at(const struct fx_stset *set, size_t i);
const struct fx_tensor *fx_stset_find(const struct fx_stset *set, const char *name);
/* Which file holds the tensor (for messages). */
const char *fx_stset_path_of(const struct fx_stset *set, const char *name);

/* ---- streaming writer ------------------------------------------------ */
struct fx_stw;

enum fx_stw_flags {
	FX_STW_CRC32 = 1 << 0,   /* add the fx.crc32 metadata map at finish */
};

int fx_stw_new(struct fx_stw **out, unsigned flags, struct fx_err *err);
void fx_stw_free(struct fx_stw *w);
/* Metadata may be set or replaced until finish (values must fit the
 * reserved header space after begin). */
int fx_stw_meta(struct fx_stw *w, const char *key, const char *val, struct fx_err *err);
/* Spare bytes reserved in the header beyond what begin() needs. */
void fx_stw_reserve(struct fx_stw *w, size_t spare);
/* Declare every tensor before begin(). */
int fx_stw_add(struct fx_stw *w, const char *name, enum fx_dtype dt,
	       int ndim, const int64_t *shape, struct fx_err *err);
/* Fixes the layout (tensors sorted by dtype size desc, then name; data
 * 64-byte aligned, no holes) and starts writing to fd at offset 0. */
int fx_stw_begin(struct fx_stw *w, int fd, struct fx_err *err);
/* Appends bytes to a tensor; tensors may be written in any order, each one's
 * chunks in sequence. */
int fx_stw_write(struct fx_stw *w, const char *name, const void *data, size_t n,
		 struct fx_err *err);
/* Checks every tensor is complete, writes the final header. */
int fx_stw_finish(struct fx_stw *w, struct fx_err *err);

/* Serialises a header for the given tensors and metadata into a malloc'ed
 * buffer padded with spaces to total length hdr_len (returns FX_E_ARG when
 * it does not fit); used by fx-meta to rewrite metadata in place. */
int fx_st_header_build(char **out, size_t hdr_len, const struct fx_st *st,
		       size_t nmeta, const char *const *keys, const char *const *vals,
		       struct fx_err *err);

#endif
