/* Unit tests of the robustness pieces of common/: the registry of mapped
 * inputs (fx-map), the output checks, the sweep of dead runs' temporaries,
 * the commit-time check and the signal handlers' messages. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fx-err.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-map.h"

static char g_dir[PATH_MAX];

static void path_in(char *buf, const char *name)
{
	if (snprintf(buf, PATH_MAX, "%s/%s", g_dir, name) >= PATH_MAX)
		fail_msg("path too long");
}

static void put_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(text, 1, strlen(text), f), strlen(text));
	assert_int_equal(fclose(f), 0);
}

static bool exists(const char *path)
{
	struct stat sb;

	return lstat(path, &sb) == 0;
}

static int count_entries(const char *needle)
{
	DIR *d = opendir(g_dir);
	struct dirent *e;
	int n = 0;

	assert_non_null(d);
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..") && strstr(e->d_name, needle))
			n++;
	closedir(d);
	return n;
}

/* Maps path as fx_st_open does and registers it; returns the base. */
static void *map_input(const char *path, size_t *size)
{
	struct stat sb;
	void *p;
	int fd = open(path, O_RDONLY);

	assert_true(fd >= 0);
	assert_int_equal(fstat(fd, &sb), 0);
	p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
	assert_true(p != MAP_FAILED);
	close(fd);
	fx_map_add(p, (size_t)sb.st_size, path, &sb);
	*size = (size_t)sb.st_size;
	return p;
}

static void unmap_input(void *p, size_t size)
{
	fx_map_del(p);
	munmap(p, size);
}

/* A pid that is not alive: a child's, once reaped. */
static pid_t dead_pid(void)
{
	pid_t pid = fork();

	assert_true(pid >= 0);
	if (pid == 0)
		_exit(0);
	assert_int_equal(waitpid(pid, NULL, 0), pid);
	return pid;
}

/* The child's stderr, collected in a file. */
static char *read_back(const char *path)
{
	char *buf = NULL;

	if (fx_read_file(&buf, NULL, path, 1 << 16, NULL) < 0)
		return NULL;
	return buf;
}

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(p);
}

static int setup_group(void **state)
{
	const char *t = getenv("TMPDIR");

	(void)state;
	snprintf(g_dir, sizeof(g_dir), "%s/fx-test-robust.XXXXXX", t && *t ? t : "/tmp");
	if (!mkdtemp(g_dir))
		return -1;
	fx_log_set_prog("fx-test");
	return 0;
}

static int teardown_group(void **state)
{
	(void)state;
	nftw(g_dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	return 0;
}

static int setup_each(void **state)
{
	(void)state;
	nftw(g_dir, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	return mkdir(g_dir, 0700);
}

static void test_check_same(void **state)
{
	char p[PATH_MAX], q[PATH_MAX], rel[PATH_MAX + 8];
	struct fx_err err = {0};
	struct fx_file_id id;
	struct stat sb;
	size_t size;
	void *base;

	(void)state;
	path_in(p, "m.st");
	path_in(q, "new.st");
	put_file(p, "old weights");
	base = map_input(p, &size);
	assert_int_equal(stat(p, &sb), 0);
	fx_file_id_of(&id, &sb);
	assert_int_equal(fx_map_check_same(p, &id, &err), 0);
	/* another spelling of the same path */
	snprintf(rel, sizeof(rel), "%s/./m.st", g_dir);
	assert_int_equal(fx_map_check_same(rel, &id, &err), 0);
	assert_true(fx_map_contains((char *)base + 2, 4));
	assert_false(fx_map_contains((char *)base + 2, size));
	assert_string_equal(fx_map_path_at((char *)base + 3), p);
	assert_null(fx_map_path_at(&id));
	/* replaced: the path names another file than the mapped one */
	put_file(q, "new weights, longer");
	assert_int_equal(rename(q, p), 0);
	assert_int_equal(stat(p, &sb), 0);
	fx_file_id_of(&id, &sb);
	assert_int_equal(fx_map_check_same(p, &id, &err), FX_E_IO);
	assert_non_null(strstr(err.msg, "m.st' changed while the run read it; nothing written"));
	/* a path nobody mapped is not checked */
	assert_int_equal(fx_map_check_same(q, &id, &err), 0);
	/* replaced is fine at commit time: the mapping holds the old bytes */
	assert_int_equal(fx_map_check_unchanged(&err), 0);
	unmap_input(base, size);
	assert_int_equal(fx_map_check_same(p, &id, &err), 0);
	assert_null(fx_map_path_at(base));
}

static void test_check_unchanged(void **state)
{
	char p[PATH_MAX], o[PATH_MAX];
	struct fx_err err = {0};
	struct fx_out *out = NULL;
	size_t size;
	void *base;
	int fd;

	(void)state;
	path_in(p, "m.st");
	path_in(o, "out.st");
	put_file(p, "0123456789abcdef");
	base = map_input(p, &size);
	assert_int_equal(fx_map_check_unchanged(&err), 0);
	assert_int_equal(fx_out_open(&out, o, false, &err), 0);
	/* rewritten in place (cp over it): same inode, other size */
	fd = open(p, O_WRONLY | O_TRUNC);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, "01234567", 8), 8);
	close(fd);
	assert_int_equal(fx_map_check_unchanged(&err), FX_E_IO);
	assert_int_equal(fx_out_commit(out, &err), FX_E_IO);
	assert_non_null(strstr(err.msg, "m.st' changed while the run read it; nothing written"));
	assert_false(exists(o));
	assert_int_equal(count_entries(".tmp."), 0);
	unmap_input(base, size);
	assert_int_equal(fx_map_check_unchanged(&err), 0);
}

static void test_out_check(void **state)
{
	char p[PATH_MAX], l[PATH_MAX], f[PATH_MAX], h[PATH_MAX];
	struct fx_err err = {0};
	struct fx_out *o = NULL;
	size_t size;
	void *base;

	(void)state;
	path_in(p, "in.st");
	path_in(l, "link.st");
	path_in(f, "fifo");
	path_in(h, "hard.st");
	put_file(p, "input bytes");
	assert_int_equal(fx_out_check(h, &err), 0);   /* nothing there */
	assert_int_equal(symlink("in.st", l), 0);
	assert_int_equal(fx_out_check(l, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "link.st' is a symbolic link to 'in.st', not a regular file"));
	assert_int_equal(fx_out_open(&o, l, true, &err), FX_E_ARG);
	assert_true(exists(l));
	assert_int_equal(mkfifo(f, 0644), 0);
	assert_int_equal(fx_out_open(&o, f, true, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "fifo' is a FIFO, not a regular file (refused even with --force)"));
	assert_int_equal(fx_out_check("/dev/null", &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "'/dev/null' is a character device"));
	assert_int_equal(fx_out_check(g_dir, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "is a directory"));
	/* a mapped input, through its name or a hard link */
	base = map_input(p, &size);
	assert_int_equal(link(p, h), 0);
	assert_int_equal(fx_out_open(&o, p, true, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "in.st' is the input '"));
	assert_int_equal(fx_out_check(h, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "hard.st' is the input '"));
	assert_non_null(strstr(err.msg, "in.st' (the same file): refused even with --force"));
	assert_int_equal(count_entries(".tmp."), 0);
	/* unless the run rewrites it from its own content */
	fx_out_rewrites(p);
	assert_int_equal(fx_out_open(&o, p, true, &err), 0);
	fx_out_abort(o);
	unmap_input(base, size);
}

static void test_sweep(void **state)
{
	char p[PATH_MAX], dead[PATH_MAX + 32], live[PATH_MAX + 32], locked[PATH_MAX + 32];
	char other[PATH_MAX], odd[PATH_MAX];
	struct fx_err err = {0};
	struct fx_out *o = NULL;
	pid_t d1 = dead_pid(), d2 = dead_pid();
	int fd;

	(void)state;
	fx_log_set_level(FX_LOG_ERROR);
	path_in(p, "out.st");
	snprintf(dead, sizeof(dead), "%s.tmp.%ld", p, (long)d1);
	snprintf(live, sizeof(live), "%s.tmp.%ld", p, (long)getppid());
	snprintf(locked, sizeof(locked), "%s.tmp.%ld", p, (long)d2);
	path_in(other, "other.st.tmp.1");
	path_in(odd, "out.st.tmp.12x");
	put_file(dead, "partial");
	put_file(live, "partial");
	put_file(locked, "partial");
	put_file(other, "partial");
	put_file(odd, "partial");
	/* a writer in another pid namespace: its pid looks dead, its lock is held */
	fd = open(locked, O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(flock(fd, LOCK_EX), 0);
	fx_out_sweep(p);
	assert_false(exists(dead));
	assert_true(exists(live));
	assert_true(exists(locked));
	assert_true(exists(other));
	assert_true(exists(odd));
	close(fd);
	/* fx_out_open sweeps too, and locks its own temporary */
	assert_int_equal(fx_out_open(&o, p, false, &err), 0);
	assert_false(exists(locked));
	fd = open(fx_out_tmp_path(o), O_RDONLY);
	assert_true(fd >= 0);
	assert_int_equal(flock(fd, LOCK_EX | LOCK_NB), -1);
	assert_int_equal(errno, EWOULDBLOCK);
	close(fd);
	assert_int_equal(fx_out_commit(o, &err), 0);
	assert_true(exists(p));
	fx_log_set_level(FX_LOG_INFO);
}

/* Runs body in a child with stderr in a file; returns its exit status and
 * the file's text in *text. */
static int in_child(void (*body)(void), char **text)
{
	char e[PATH_MAX];
	int status = 0, fd;
	pid_t pid;

	path_in(e, "stderr.txt");
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		fd = open(e, O_WRONLY | O_CREAT | O_TRUNC, 0644);
		if (fd < 0 || dup2(fd, 2) < 0)
			_exit(20);
		body();
		_exit(21);
	}
	assert_int_equal(waitpid(pid, &status, 0), pid);
	*text = read_back(e);
	unlink(e);
	return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

static void term_body(void)
{
	char p[PATH_MAX];
	struct fx_out *o = NULL;

	signal(SIGTERM, SIG_DFL);
	fx_io_install_signal_cleanup();
	path_in(p, "out.st");
	if (fx_out_open(&o, p, false, NULL) < 0)
		_exit(10);
	raise(SIGTERM);
}

static void test_signal_message(void **state)
{
	char *text = NULL;

	(void)state;
	assert_int_equal(in_child(term_body, &text), 4);
	assert_non_null(text);
	assert_string_equal(text, "fx-test: interrupted by SIGTERM, nothing written\n");
	free(text);
	assert_int_equal(count_entries(".tmp."), 0);
}

static void bus_body(void)
{
	char p[PATH_MAX], o[PATH_MAX];
	struct fx_out *out = NULL;
	volatile const char *base;
	size_t size;

	signal(SIGBUS, SIG_DFL);   /* cmocka's own handler would keep ours out */
	fx_io_install_signal_cleanup();
	path_in(p, "m.st");
	path_in(o, "out.st");
	base = map_input(p, &size);
	if (fx_out_open(&out, o, false, NULL) < 0 || truncate(p, 0) != 0)
		_exit(10);
	(void)base[size - 1];
	_exit(11);
}

static void bus_unknown_body(void)
{
	char p[PATH_MAX], o[PATH_MAX];
	struct fx_out *out = NULL;
	volatile const char *base;
	int fd;

	signal(SIGBUS, SIG_DFL);
	fx_io_install_signal_cleanup();
	path_in(p, "m.st");
	path_in(o, "out.st");
	/* a mapping that is not a registered input: a bug, the default action */
	fd = open(p, O_RDONLY);
	base = mmap(NULL, 1 << 16, PROT_READ, MAP_PRIVATE, fd, 0);
	if (fd < 0 || base == MAP_FAILED || fx_out_open(&out, o, false, NULL) < 0 ||
	    truncate(p, 0) != 0)
		_exit(10);
	(void)base[100];
	_exit(11);
}

static void test_sigbus(void **state)
{
	char p[PATH_MAX], big[1 << 16], *text = NULL, want[PATH_MAX + 128];

	(void)state;
	path_in(p, "m.st");
	memset(big, 'w', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	put_file(p, big);
	assert_int_equal(in_child(bus_body, &text), 4);
	assert_non_null(text);
	snprintf(want, sizeof(want), "fx-test: error: '%s' changed while the run read it (truncated "
		 "or rewritten in place); nothing written\n", p);
	assert_string_equal(text, want);
	free(text);
	assert_int_equal(count_entries(".tmp."), 0);
	put_file(p, big);
	assert_int_equal(in_child(bus_unknown_body, &text), 128 + SIGBUS);
	free(text);
	assert_int_equal(count_entries(".tmp."), 0);
}

static void test_sync_hook(void **state)
{
	char flag[PATH_MAX], go[PATH_MAX + 8];

	(void)state;
	path_in(flag, "input-id-m.st");
	snprintf(go, sizeof(go), "%s.go", flag);
	unsetenv("FX_TEST_SYNC");
	fx_test_sync("input-id", "/x/m.st");
	assert_false(exists(flag));
	setenv("FX_TEST_SYNC", flag, 1);
	put_file(go, "");
	fx_test_sync("input-id", "/x/other.st");   /* another point: nothing */
	fx_test_sync("stage-begin", NULL);
	assert_false(exists(flag));
	fx_test_sync("input-id", "/x/m.st");        /* its point: returns once .go exists */
	assert_true(exists(flag));
	unsetenv("FX_TEST_SYNC");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_check_same, setup_each),
		cmocka_unit_test_setup(test_check_unchanged, setup_each),
		cmocka_unit_test_setup(test_out_check, setup_each),
		cmocka_unit_test_setup(test_sweep, setup_each),
		cmocka_unit_test_setup(test_signal_message, setup_each),
		cmocka_unit_test_setup(test_sigbus, setup_each),
		cmocka_unit_test_setup(test_sync_hook, setup_each),
	};

	return cmocka_run_group_tests_name("robust", tests, setup_group, teardown_group);
}
