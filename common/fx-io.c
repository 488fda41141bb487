/* Atomic outputs (<out>.tmp.<pid>, fsync, rename), signal cleanup, write helpers. */
#include "fx-io.h"
#include "fx-log.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct fx_out {
	int fd;
	int slot;
	char *path;
	char *tmp;
};

/* Live temp files, readable from a signal handler: a slot's path is written
 * before its flag is set, and the flag cleared before the slot is reused. */
#define MAX_TMP 32
static char g_tmp[MAX_TMP][PATH_MAX];
static volatile sig_atomic_t g_used[MAX_TMP];
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static int g_handlers;

static int reg_add(const char *tmp)
{
	int i, slot = -1;

	if (strlen(tmp) >= PATH_MAX)
		return -1;
	pthread_mutex_lock(&g_lock);
	for (i = 0; i < MAX_TMP && slot < 0; i++) {
		if (!g_used[i]) {
			slot = i;
			memcpy(g_tmp[i], tmp, strlen(tmp) + 1);
			__atomic_thread_fence(__ATOMIC_SEQ_CST);
			g_used[i] = 1;
		}
	}
	pthread_mutex_unlock(&g_lock);
	return slot;
}

/* Whether another live output of this process uses the temp path of slot self. */
static bool reg_has_other(int self)
{
	bool has = false;
	int i;

	pthread_mutex_lock(&g_lock);
	for (i = 0; i < MAX_TMP && !has; i++)
		has = i != self && g_used[i] && !strcmp(g_tmp[i], g_tmp[self]);
	pthread_mutex_unlock(&g_lock);
	return has;
}

static void reg_del(int slot)
{
	if (slot < 0)
		return;
	pthread_mutex_lock(&g_lock);
	g_used[slot] = 0;
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	pthread_mutex_unlock(&g_lock);
}

static void on_signal(int sig)
{
	int i;

	(void)sig;
	for (i = 0; i < MAX_TMP; i++)
		if (g_used[i])
			unlink(g_tmp[i]);
	_exit(FX_EXIT_IO);
}

void fx_io_install_signal_cleanup(void)
{
	static const int sigs[] = { SIGINT, SIGTERM, SIGHUP };
	struct sigaction sa, old;
	size_t i;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigfillset(&sa.sa_mask);
	for (i = 0; i < FX_ARRAY_SIZE(sigs); i++) {
		/* keep a signal ignored by the parent ignored (nohup, background jobs) */
		if (sigaction(sigs[i], NULL, &old) == 0 && old.sa_handler == SIG_IGN)
			continue;
		sigaction(sigs[i], &sa, NULL);
	}
	g_handlers = 1;
}

/* Called on first output: install unless the program has its own handlers. */
static void auto_install(void)
{
	struct sigaction old;

	if (g_handlers)
		return;
	if (sigaction(SIGINT, NULL, &old) == 0 && old.sa_handler != SIG_DFL &&
	    old.sa_handler != SIG_IGN) {
		g_handlers = 1;
		return;
	}
	fx_io_install_signal_cleanup();
}

static void out_free(struct fx_out *o)
{
	if (!o)
		return;
	if (o->fd >= 0)
		close(o->fd);
	reg_del(o->slot);
	free(o->path);
	free(o->tmp);
	free(o);
}

int fx_out_open(struct fx_out **out, const char *path, bool force, struct fx_err *err)
{
	struct fx_out *o = NULL;
	struct stat st;
	size_t n;
	int ret = 0;

	*out = NULL;
	if (!path || !*path)
		return fx_error(err, FX_E_ARG, "no output file given");
	if (lstat(path, &st) == 0) {
		if (S_ISDIR(st.st_mode) || (stat(path, &st) == 0 && S_ISDIR(st.st_mode)))
			return fx_error(err, FX_E_ARG, "output '%s' is a directory", path);
		if (!force)
			return fx_error(err, FX_E_ARG, "output '%s' exists (use --force to overwrite)",
					path);
	}
	auto_install();
	o = calloc(1, sizeof(*o));
	n = strlen(path) + 32;
	if (!o || !(o->path = strdup(path)) || !(o->tmp = malloc(n))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory opening '%s'", path);
		goto out;
	}
	o->fd = -1;
	o->slot = -1;
	snprintf(o->tmp, n, "%s.tmp.%ld", path, (long)getpid());
	if ((o->slot = reg_add(o->tmp)) < 0) {
		ret = fx_error(err, FX_E_IO, "cannot create '%s': too many open outputs or path too long",
			       o->tmp);
		goto out;
	}
	o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	if (o->fd < 0 && errno == EEXIST) {
		/* a leftover of a dead process with our pid, unless we own it */
		if (!reg_has_other(o->slot))
			unlink(o->tmp);
		o->fd = open(o->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
	}
	if (o->fd < 0) {
		ret = fx_error(err, FX_E_IO, "cannot create '%s': %s", o->tmp, strerror(errno));
		goto out;
	}
	*out = o;
	o = NULL;
out:
	out_free(o);
	return ret;
}

int fx_out_fd(const struct fx_out *o)
{
	return o ? o->fd : -1;
}

const char *fx_out_tmp_path(const struct fx_out *o)
{
	return o ? o->tmp : NULL;
}

static void fsync_dir(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir = NULL;
	int fd;

	if (!slash)
		dir = strdup(".");
	else if (slash == path)
		dir = strdup("/");
	else
		dir = strndup(path, (size_t)(slash - path));
	if (!dir)
		return;
	fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) != 0)
		fx_log_debug("cannot sync directory '%s': %s", dir, strerror(errno));
	if (fd >= 0)
		close(fd);
	free(dir);
}

int fx_out_commit(struct fx_out *o, struct fx_err *err)
{
	int ret = 0, fd;

	if (!o)
		return fx_error(err, FX_E_ARG, "no output to commit");
	fd = o->fd;
	o->fd = -1;
	if (fsync(fd) != 0) {
		ret = fx_error(err, FX_E_IO, "fsync '%s': %s", o->tmp, strerror(errno));
		close(fd);
		goto fail;
	}
	if (close(fd) != 0) {
		ret = fx_error(err, FX_E_IO, "close '%s': %s", o->tmp, strerror(errno));
		goto fail;
	}
	if (rename(o->tmp, o->path) != 0) {
		ret = fx_error(err, FX_E_IO, "rename '%s' to '%s': %s", o->tmp, o->path,
			       strerror(errno));
		goto fail;
	}
	fsync_dir(o->path);
	out_free(o);
	return 0;
fail:
	unlink(o->tmp);
	out_free(o);
	return ret;
}

void fx_out_abort(struct fx_out *o)
{
	if (!o)
		return;
	if (o->fd >= 0) {
		close(o->fd);
		o->fd = -1;
	}
	unlink(o->tmp);
	out_free(o);
}

/* Fault injection: the N-th write while FX_FAULT_IO=N is set fails. A change
 * of the variable restarts the count. */
bool fx_fault_io_hit(void)
{
	static long want = -1;
	static long count;
	const char *s = getenv("FX_FAULT_IO");
	long n;
	char *end;

	if (!s || !*s) {
		want = -1;
		return false;
	}
	n = strtol(s, &end, 10);
	if (*end || n <= 0)
		return false;
	if (n != want) {
		want = n;
		__atomic_store_n(&count, 0, __ATOMIC_SEQ_CST);
	}
	return __atomic_add_fetch(&count, 1, __ATOMIC_SEQ_CST) == n;
}

static int write_fail(const char *path, int e, struct fx_err *err)
{
	return fx_error(err, FX_E_IO, "write '%s': %s", path ? path : "?", strerror(e));
}

int fx_write_all(int fd, const void *buf, size_t n, const char *path, struct fx_err *err)
{
	const char *p = buf;

	if (fx_fault_io_hit())
		return write_fail(path, ENOSPC, err);
	while (n) {
		ssize_t w = write(fd, p, n > (1u << 30) ? (1u << 30) : n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return write_fail(path, w < 0 ? errno : EIO, err);
		p += w;
		n -= (size_t)w;
	}
	return 0;
}

int fx_pwrite_all(int fd, const void *buf, size_t n, uint64_t off, const char *path,
		  struct fx_err *err)
{
	const char *p = buf;

	if (fx_fault_io_hit())
		return write_fail(path, ENOSPC, err);
	if (off > (uint64_t)INT64_MAX - n)
		return write_fail(path, EFBIG, err);
	while (n) {
		ssize_t w = pwrite(fd, p, n > (1u << 30) ? (1u << 30) : n, (off_t)off);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return write_fail(path, w < 0 ? errno : EIO, err);
		p += w;
		n -= (size_t)w;
		off += (uint64_t)w;
	}
	return 0;
}

int fx_read_file(char **out, size_t *len, const char *path, size_t max, struct fx_err *err)
{
	char *buf = NULL, *nb;
	size_t cap = 0, n = 0;
	struct stat st;
	int fd, ret = 0;

	*out = NULL;
	if (len)
		*len = 0;
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fx_error(err, FX_E_IO, "cannot open '%s': %s", path, strerror(errno));
	if (fstat(fd, &st) != 0) {
		ret = fx_error(err, FX_E_IO, "cannot stat '%s': %s", path, strerror(errno));
		goto out;
	}
	if (S_ISDIR(st.st_mode)) {
		ret = fx_error(err, FX_E_IO, "cannot read '%s': %s", path, strerror(EISDIR));
		goto out;
	}
	if (S_ISREG(st.st_mode) && (uint64_t)st.st_size > max) {
		ret = fx_error(err, FX_E_FORMAT, "'%s' is too large (%lld bytes, limit %zu)", path,
			       (long long)st.st_size, max);
		goto out;
	}
	for (;;) {
		ssize_t r;

		if (n + 1 >= cap) {
			/* a regular file fits at once, with room to see EOF */
			size_t ncap = cap ? cap * 2 : S_ISREG(st.st_mode) ? (size_t)st.st_size + 2 : 4096;

			if (max < SIZE_MAX - 2 && ncap > max + 2)
				ncap = max + 2;   /* one more byte detects overflow */
			if (ncap <= n + 1) {
				ret = fx_error(err, FX_E_FORMAT, "'%s' is too large (limit %zu bytes)",
					       path, max);
				goto out;
			}
			if (!(nb = realloc(buf, ncap))) {
				ret = fx_error(err, FX_E_NOMEM, "out of memory reading '%s'", path);
				goto out;
			}
			buf = nb;
			cap = ncap;
		}
		r = read(fd, buf + n, cap - n - 1);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ret = fx_error(err, FX_E_IO, "read '%s': %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		n += (size_t)r;
		if (n > max) {
			ret = fx_error(err, FX_E_FORMAT, "'%s' is too large (limit %zu bytes)", path, max);
			goto out;
		}
	}
	if (!buf && !(buf = malloc(1))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory reading '%s'", path);
		goto out;
	}
	buf[n] = '\0';
	*out = buf;
	buf = NULL;
	if (len)
		*len = n;
out:
	free(buf);
	close(fd);
	return ret;
}
