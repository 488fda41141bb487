/* The files this process has mapped to read: what each one was when it was
 * opened (device, inode, size, mtime). Three checks rest on it: an identity
 * computed later by path must be of the bytes that were mapped, an output
 * must not be one of these files, and a SIGBUS (a mapped file truncated under
 * the run) can name its file from the signal handler. */
#ifndef FX_MAP_H
#define FX_MAP_H

#include <sys/stat.h>

#include "fx-err.h"

struct fx_file_id {
	uint64_t dev, ino, size, mtime_ns;
};

void fx_file_id_of(struct fx_file_id *id, const struct stat *sb);
bool fx_file_id_eq(const struct fx_file_id *a, const struct fx_file_id *b);

/* Registers a read-only mapping of path, whose fstat at mapping time is sb.
 * When the table is full the mapping goes unregistered: its pages are then
 * never released and the checks below do not see it. */
void fx_map_add(const void *base, size_t size, const char *path, const struct stat *sb);
void fx_map_del(const void *base);

/* Whether [p, p+n) lies inside one registered mapping. */
bool fx_map_contains(const void *p, size_t n);
/* madvise(a, len, advice) when [p, p+n) lies inside a registered mapping,
 * under the registry's lock, so that the mapping cannot be unmapped (and its
 * range reused) meanwhile. */
void fx_map_advise(const void *p, size_t n, void *a, size_t len, int advice);

/* FX_E_IO "'PATH' changed while the run read it; nothing written" when a
 * mapping registered under path (compared after resolving the directory,
 * not a link in the last component) is of another file than now. */
int fx_map_check_same(const char *path, const struct fx_file_id *now, struct fx_err *err);
/* The same test for every registered mapping against what its path names
 * now, for a file rewritten in place (same inode, new size or mtime). A
 * path that names another file or none is fine: the mapping still holds the
 * old inode, the bytes that were read. */
int fx_map_check_unchanged(struct fx_err *err);
/* Whether a registered mapping has this device and inode; its path goes to
 * buf (truncated to n). */
bool fx_map_find(uint64_t dev, uint64_t ino, char *buf, size_t n);

/* Async-signal-safe: the path of the registered mapping holding addr, or
 * NULL. */
const char *fx_map_path_at(const void *addr);

#endif
