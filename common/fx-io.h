/* Atomic output files: <out>.tmp.<pid> in the same directory, fsync, rename.
 * Temp files are unlinked on error, on abort and on SIGINT/SIGTERM/SIGHUP and
 * SIGBUS; those of runs that died (kill -9, the OOM killer) are removed by the
 * next run for the same output. */
#ifndef FX_IO_H
#define FX_IO_H

#include "fx-err.h"

struct fx_out;

/* Whether path may be replaced by an output, even with --force: FX_E_ARG for
 * a directory, a symbolic link, a device, FIFO or socket, and for one of the
 * files this run has mapped to read (same device and inode, through any
 * path or link; see fx_out_rewrites). A path that does not exist is fine. */
int fx_out_check(const char *path, struct fx_err *err);
/* Declares that this run rewrites path from its own content (fx-meta in
 * place, a stage reusing its previous output), so fx_out_check lets an
 * output replace it although it is mapped. */
void fx_out_rewrites(const char *path);
/* Removes the temporaries <path>.tmp.<pid> of runs that died (the pid is not
 * alive and nobody holds the file's lock), saying so on stderr. */
void fx_out_sweep(const char *path);

/* fx_out_check, then refuses an existing path unless force; sweeps, and
 * creates the temporary, locked while this run writes it. */
int fx_out_open(struct fx_out **out, const char *path, bool force, struct fx_err *err);
int fx_out_fd(const struct fx_out *o);
const char *fx_out_tmp_path(const struct fx_out *o);
/* fsync, refuses when an input was rewritten in place meanwhile
 * (fx_map_check_unchanged), rename over path, fsync the directory; frees o. */
int fx_out_commit(struct fx_out *o, struct fx_err *err);
/* Unlinks the temp file; frees o. NULL is a no-op. */
void fx_out_abort(struct fx_out *o);

/* Installs SIGINT/SIGTERM/SIGHUP handlers that unlink live temp files, say
 * "interrupted by SIGTERM, nothing written" and exit 4; and the SIGBUS one. */
void fx_io_install_signal_cleanup(void);
/* SIGBUS in a mapped input (truncated under the run): names the file,
 * unlinks live temp files, exits 4. Installed with the first mapping. */
void fx_io_install_bus_handler(void);

/* Whole-file helpers. */
int fx_write_all(int fd, const void *buf, size_t n, const char *path, struct fx_err *err);
int fx_pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path,
		  struct fx_err *err);
/* Reads a small file into a NUL-terminated malloc'ed buffer. */
int fx_read_file(char **out, size_t *len, const char *path, size_t max, struct fx_err *err);

/* Fault injection (debug/test): FX_FAULT_IO=N makes the Nth write fail with ENOSPC. */
bool fx_fault_io_hit(void);
/* Test hook, in every build: a run reaching the point named by the last
 * component of FX_TEST_SYNC (POINT, or POINT-BASENAME when path is given:
 * "input-id-m.safetensors") creates that file and waits until FILE.go
 * exists (30 s at most), so a test can act at a known moment of the run.
 * Without the variable, or at other points, nothing. */
void fx_test_sync(const char *point, const char *path);

/* "dir/name", malloc'ed (NULL when out of memory). */
char *fx_path_join(const char *dir, const char *name);

#endif
