/* Atomic outputs (<out>.tmp.<pid>, fsync, rename), signal cleanup, write helpers. */
#include "fx-io.h"
#include "fx-log.h"
#include "fx-map.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
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

/* One line on stderr from a signal handler: "PROG: " and the parts. */
static void say(const char *const *parts)
{
	char buf[PATH_MAX + 256];
	const char *pre[] = { fx_log_prog(), ": " };
	size_t n = 0, i, k;

	for (i = 0; i < 2; i++)
		for (k = 0; pre[i][k] && n < sizeof(buf) - 1; k++)
			buf[n++] = pre[i][k];
	for (; *parts; parts++)
		for (k = 0; (*parts)[k] && n < sizeof(buf) - 1; k++)
			buf[n++] = (*parts)[k];
	buf[n++] = '\n';
	(void)!write(STDERR_FILENO, buf, n);
}

static void unlink_live(void)
{
	int i;

	for (i = 0; i < MAX_TMP; i++)
		if (g_used[i])
			unlink(g_tmp[i]);
}

static void on_signal(int sig)
{
	const char *name = sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" :
			   sig == SIGHUP ? "SIGHUP" : "a signal";

	unlink_live();
	say((const char *[]){ "interrupted by ", name, ", nothing written", NULL });
	_exit(FX_EXIT_IO);
}

/* A mapped input truncated under the run faults on its next read. One of
 * our files: name it, clean up, exit 4. Anything else is a bug: clean up
 * and let the fault happen again with the default action (a core dump). */
static void on_bus(int sig, siginfo_t *si, void *ctx)
{
	const char *path = fx_map_path_at(si->si_addr);
	int saved = errno;

	(void)ctx;
	unlink_live();
	if (!path) {
		signal(sig, SIG_DFL);
		errno = saved;
		return;
	}
	say((const char *[]){ "error: '", path, "' changed while the run read it (truncated or "
			      "rewritten in place); nothing written", NULL });
	_exit(FX_EXIT_IO);
}

void fx_io_install_bus_handler(void)
{
	struct sigaction sa, old;

	/* installed already, or a program with its own handler keeps it */
	if (sigaction(SIGBUS, NULL, &old) != 0 || (old.sa_flags & SA_SIGINFO) ||
	    old.sa_handler != SIG_DFL)
		return;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_bus;
	sa.sa_flags = SA_SIGINFO;
	sigfillset(&sa.sa_mask);
	sigaction(SIGBUS, &sa, NULL);
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
	fx_io_install_bus_handler();
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

/* Files this run rewrites from their own content (fx-meta in place, a stage
 * reusing its previous output): mapping them does not make them inputs. */
static struct { dev_t dev; ino_t ino; } g_rewrites[8];
static int g_nrewrites;

void fx_out_rewrites(const char *path)
{
	struct stat sb;

	pthread_mutex_lock(&g_lock);
	if (g_nrewrites < (int)FX_ARRAY_SIZE(g_rewrites) && stat(path, &sb) == 0) {
		g_rewrites[g_nrewrites].dev = sb.st_dev;
		g_rewrites[g_nrewrites++].ino = sb.st_ino;
	}
	pthread_mutex_unlock(&g_lock);
}

static bool is_rewrite(const struct stat *sb)
{
	bool hit = false;
	int i;

	pthread_mutex_lock(&g_lock);
	for (i = 0; i < g_nrewrites && !hit; i++)
		hit = g_rewrites[i].dev == sb->st_dev && g_rewrites[i].ino == sb->st_ino;
	pthread_mutex_unlock(&g_lock);
	return hit;
}

static const char *kind(mode_t m)
{
	return S_ISCHR(m) ? "character device" : S_ISBLK(m) ? "block device" :
	       S_ISFIFO(m) ? "FIFO" : S_ISSOCK(m) ? "socket" : "special file";
}

int fx_out_check(const char *path, struct fx_err *err)
{
	char in[PATH_MAX], to[PATH_MAX];
	struct stat ls, sb;
	ssize_t k;

	if (!path || !*path)
		return fx_error(err, FX_E_ARG, "no output file given");
	if (lstat(path, &ls) != 0)
		return 0;   /* nothing there to replace */
	if (S_ISDIR(ls.st_mode) || (S_ISLNK(ls.st_mode) && stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)))
		return fx_error(err, FX_E_ARG, "output '%s' is a directory", path);
	/* rename() would replace the link itself, not what it points to */
	if (S_ISLNK(ls.st_mode)) {
		k = readlink(path, to, sizeof(to) - 1);
		to[k < 0 ? 0 : k] = '\0';
		return fx_error(err, FX_E_ARG, "output '%s' is a symbolic link to '%s', not a regular "
				"file (refused even with --force)", path, to);
	}
	/* a device node or FIFO would be replaced by a regular file (or hang a read) */
	if (!S_ISREG(ls.st_mode))
		return fx_error(err, FX_E_ARG, "output '%s' is a %s, not a regular file (refused even "
				"with --force)", path, kind(ls.st_mode));
	if (!is_rewrite(&ls) && fx_map_find((uint64_t)ls.st_dev, (uint64_t)ls.st_ino, in, sizeof(in)))
		return fx_error(err, FX_E_ARG, "output '%s' is the input '%s' (the same file): refused "
				"even with --force", path, in);
	return 0;
}

/* Removes path when nobody holds its lock; true when removed. A filesystem
 * without flock leaves the decision to the caller's pid test. */
static bool unlink_unlocked(const char *path)
{
	struct stat a, b;
	bool gone = false;
	int fd;

	if (lstat(path, &a) != 0 || !S_ISREG(a.st_mode))
		return false;
	fd = open(path, O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
	if (fd < 0)
		return false;
	if ((flock(fd, LOCK_EX | LOCK_NB) == 0 || errno != EWOULDBLOCK) && fstat(fd, &b) == 0 &&
	    b.st_dev == a.st_dev && b.st_ino == a.st_ino)
		gone = unlink(path) == 0;
	close(fd);
	return gone;
}

void fx_out_sweep(const char *path)
{
	const char *slash = strrchr(path, '/'), *base = slash ? slash + 1 : path;
	char *dir = !slash ? strdup(".") : slash == path ? strdup("/") :
		    strndup(path, (size_t)(slash - path));
	char full[PATH_MAX];
	size_t blen = strlen(base);
	struct dirent *de;
	DIR *d;

	if (!dir || !(d = opendir(dir))) {
		free(dir);
		return;
	}
	while ((de = readdir(d))) {
		const char *nm = de->d_name, *p;
		char *end;
		long pid;

		if (strncmp(nm, base, blen) || strncmp(nm + blen, ".tmp.", 5))
			continue;
		p = nm + blen + 5;
		if (*p < '1' || *p > '9')
			continue;
		errno = 0;
		pid = strtol(p, &end, 10);
		if (*end || errno || pid > INT_MAX || pid == (long)getpid())
			continue;
		/* a live pid (or another user's) may be writing it; so may a lock
		 * holder in another pid namespace */
		if (kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		if (snprintf(full, sizeof(full), "%s%s%s", slash ? dir : "", slash ? "/" : "", nm) >=
		    (int)sizeof(full))
			continue;
		if (unlink_unlocked(full))
			fx_log_info("removed stale temporary '%s' of a run that died", full);
	}
	closedir(d);
	free(dir);
}

/* Creates tmp and locks it: the lock tells a later run's sweep that it is
 * live, even from another pid namespace. A file that such a sweep unlinked
 * between the two steps is created again. */
static int create_locked(const char *tmp)
{
	struct timespec ms = { 0, 1000 * 1000 };
	struct stat sb;
	int fd = -1, i;

	for (i = 0; i < 4; i++) {
		fd = open(tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
		if (fd < 0)
			return -1;
		if (flock(fd, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK) {
			close(fd);
			nanosleep(&ms, NULL);
			continue;
		}
		if (fstat(fd, &sb) == 0 && sb.st_nlink == 0) {
			close(fd);
			continue;
		}
		return fd;
	}
	errno = EEXIST;
	return -1;
}

int fx_out_open(struct fx_out **out, const char *path, bool force, struct fx_err *err)
{
	struct fx_out *o = NULL;
	struct stat st;
	size_t n;
	int ret;

	*out = NULL;
	if ((ret = fx_out_check(path, err)) < 0)
		return ret;
	if (!force && lstat(path, &st) == 0)
		return fx_error(err, FX_E_ARG, "output '%s' exists (use --force to overwrite)", path);
	auto_install();
	fx_out_sweep(path);
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
	o->fd = create_locked(o->tmp);
	if (o->fd < 0 && errno == EEXIST) {
		/* a leftover of a dead process with our pid, unless we own it */
		if (!reg_has_other(o->slot))
			unlink_unlocked(o->tmp);
		o->fd = create_locked(o->tmp);
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
	/* an input rewritten in place during the run: the output would hold
	 * and record bytes that no longer exist */
	if ((ret = fx_map_check_unchanged(err)) < 0)
		goto fail;
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

void fx_test_sync(const char *point, const char *path)
{
	const char *flag = getenv("FX_TEST_SYNC"), *base, *pb;
	struct timespec ts = { 0, 10 * 1000 * 1000 };
	char go[PATH_MAX];
	size_t n;
	int fd, i;

	if (!flag || !*flag)
		return;
	base = strrchr(flag, '/') ? strrchr(flag, '/') + 1 : flag;
	pb = path && strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
	n = strlen(point);
	if (strncmp(base, point, n) || (pb ? base[n] != '-' || strcmp(base + n + 1, pb) : base[n] != 0))
		return;
	if (snprintf(go, sizeof(go), "%s.go", flag) >= (int)sizeof(go))
		return;
	if ((fd = open(flag, O_WRONLY | O_CREAT | O_CLOEXEC, 0644)) >= 0)
		close(fd);
	for (i = 0; i < 3000 && access(go, F_OK) != 0; i++)   /* 30 s at most */
		nanosleep(&ts, NULL);
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

char *fx_path_join(const char *dir, const char *name)
{
	size_t n = strlen(dir) + strlen(name) + 2;
	char *p = malloc(n);

	if (p)
		snprintf(p, n, "%s/%s", dir, name);
	return p;
}
