/* Atomic output files: <out>.tmp.<pid> in the same directory, fsync, rename.
 * Temp files are unlinked on error, on abort and on SIGINT/SIGTERM. */
#ifndef FX_IO_H
#define FX_IO_H

#include "fx-err.h"

struct fx_out;

/* Refuses an existing path unless force. */
int fx_out_open(struct fx_out **out, const char *path, bool force, struct fx_err *err);
int fx_out_fd(const struct fx_out *o);
const char *fx_out_tmp_path(const struct fx_out *o);
/* fsync, rename over path, fsync the directory; frees o. */
int fx_out_commit(struct fx_out *o, struct fx_err *err);
/* Unlinks the temp file; frees o. NULL is a no-op. */
void fx_out_abort(struct fx_out *o);

/* Installs SIGINT/SIGTERM handlers that unlink live temp files and exit 4. */
void fx_io_install_signal_cleanup(void);

/* Whole-file helpers. */
int fx_write_all(int fd, const void *buf, size_t n, const char *path, struct fx_err *err);
int fx_pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path,
		  struct fx_err *err);
/* Reads a small file into a NUL-terminated malloc'ed buffer. */
int fx_read_file(char **out, size_t *len, const char *path, size_t max, struct fx_err *err);

/* Fault injection (debug/test): FX_FAULT_IO=N makes the Nth write fail with ENOSPC. */
bool fx_fault_io_hit(void);

#endif
