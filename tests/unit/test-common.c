/* Unit tests of common/: errors, hashing and its cache, atomic outputs,
 * signal cleanup, number parsing, option parsing and logging. */
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
#include <pty.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <zlib.h>

#include "fx-cli.h"
#include "fx-err.h"
#include "fx-hash.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-tensor.h"

static char g_dir[PATH_MAX];

/* helpers */

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

static char *get_file(const char *path)
{
	char *buf = NULL;
	size_t len;

	if (fx_read_file(&buf, &len, path, 1 << 20, NULL) < 0)
		return NULL;
	return buf;
}

static bool exists(const char *path)
{
	struct stat st;

	return lstat(path, &st) == 0;
}

/* Number of entries in g_dir whose name contains needle. */
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

static int rm_one(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st; (void)flag; (void)ftw;
	return remove(p);
}

static void clear_dir(void)
{
	DIR *d = opendir(g_dir);
	struct dirent *e;
	char p[PATH_MAX];

	assert_non_null(d);
	while ((e = readdir(d))) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		path_in(p, e->d_name);
		nftw(p, rm_one, 8, FTW_DEPTH | FTW_PHYS);
	}
	closedir(d);
}

/* A writable argv from string literals (getopt permutes it). */
static char **mkargv(const char *const *src, int *argc)
{
	static char pool[32][64];
	static char *argv[33];
	int i;

	for (i = 0; src[i] && i < 32; i++) {
		snprintf(pool[i], sizeof(pool[i]), "%s", src[i]);
		argv[i] = pool[i];
	}
	argv[i] = NULL;
	*argc = i;
	return argv;
}

/* stderr capture into a temp file */
struct cap {
	int saved;
	FILE *f;
};

static void cap_begin(struct cap *c)
{
	fflush(stderr);
	c->f = tmpfile();
	assert_non_null(c->f);
	c->saved = dup(STDERR_FILENO);
	assert_true(c->saved >= 0);
	assert_true(dup2(fileno(c->f), STDERR_FILENO) >= 0);
}

static char *cap_end(struct cap *c)
{
	static char buf[8192];
	size_t n;

	fflush(stderr);
	dup2(c->saved, STDERR_FILENO);
	close(c->saved);
	rewind(c->f);
	n = fread(buf, 1, sizeof(buf) - 1, c->f);
	buf[n] = '\0';
	fclose(c->f);
	return buf;
}

static int setup_group(void **state)
{
	const char *t = getenv("TMPDIR");

	(void)state;
	snprintf(g_dir, sizeof(g_dir), "%s/fx-test-common.XXXXXX", t && *t ? t : "/tmp");
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
	unsetenv("FX_HASH_CACHE");
	unsetenv("FX_FAULT_IO");
	fx_log_set_level(FX_LOG_INFO);
	clear_dir();
	return 0;
}

/* errors */

static void test_error_basic(void **state)
{
	struct fx_err err = {0};

	(void)state;
	assert_int_equal(fx_error(&err, FX_E_FORMAT, "tensor '%s' has %d dims", "a.b", 3),
			 FX_E_FORMAT);
	assert_int_equal(err.code, FX_E_FORMAT);
	assert_string_equal(err.msg, "tensor 'a.b' has 3 dims");
	assert_int_equal(fx_error_prefix(&err, "in '%s'", "x.safetensors"), FX_E_FORMAT);
	assert_string_equal(err.msg, "in 'x.safetensors': tensor 'a.b' has 3 dims");
	assert_int_equal(fx_error(NULL, FX_E_IO, "ignored"), FX_E_IO);
	fx_err_clear(&err);
	assert_int_equal(err.code, 0);
	assert_string_equal(err.msg, "");
}

static void test_error_exit_map(void **state)
{
	(void)state;
	assert_int_equal(fx_status_exit(FX_OK), 0);
	assert_int_equal(fx_status_exit(FX_E_ARG), 2);
	assert_int_equal(fx_status_exit(FX_E_FORMAT), 3);
	assert_int_equal(fx_status_exit(FX_E_VERSION), 3);
	assert_int_equal(fx_status_exit(FX_E_HASH), 3);
	assert_int_equal(fx_status_exit(FX_E_IO), 4);
	assert_int_equal(fx_status_exit(FX_E_NOMEM), 4);
	assert_string_equal(fx_status_str(FX_E_IO), "i/o error");
}

/* hashing */

static void test_sha256_vectors(void **state)
{
	static const char *abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
	static const char *two = "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1";
	const char *msg2 = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	struct fx_sha256 *h;
	char hex[65];
	size_t i;

	(void)state;
	fx_sha256_hex(hex, "abc", 3);
	assert_string_equal(hex, abc);
	fx_sha256_hex(hex, "", 0);
	assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	h = fx_sha256_new();
	assert_non_null(h);
	for (i = 0; i < strlen(msg2); i += 5)
		fx_sha256_update(h, msg2 + i, strlen(msg2) - i < 5 ? strlen(msg2) - i : 5);
	fx_sha256_final(h, hex);
	assert_string_equal(hex, two);
	fx_sha256_final(NULL, hex);   /* tolerated */
	assert_string_equal(hex, "");
}

static void test_crc32_vectors(void **state)
{
	(void)state;
	assert_int_equal(fx_crc32(0, "123456789", 9), 0xcbf43926u);
	assert_int_equal(fx_crc32(fx_crc32(0, "1234", 4), "56789", 5), 0xcbf43926u);
	assert_int_equal(fx_crc32(0, "", 0), 0);
	/* against zlib's own crc32: every length and alignment up to 300 bytes,
	 * chained pieces, and 5 MiB at once */
	{
		size_t n = (size_t)5 << 20;
		unsigned char *b = malloc(n + 64);

		assert_non_null(b);
		for (size_t i = 0; i < n + 64; i++)
			b[i] = (unsigned char)((i * 2654435761u) >> 11);
		for (size_t len = 0; len < 300; len++)
			for (size_t al = 0; al < 8; al++) {
				uLong z = crc32(0L, b + al, (uInt)len);
				uint32_t c = fx_crc32(0, b + al, len);

				assert_int_equal(c, (uint32_t)z);
				assert_int_equal(fx_crc32(c, b + 500, len * 3), (uint32_t)crc32(z, b + 500, (uInt)len * 3));
			}
		assert_int_equal(fx_crc32(0, b, n), (uint32_t)crc32(0L, b, (uInt)n));
		free(b);
	}
}

/* fx_bf16_widen against the scalar conversion: lengths around the vector
 * width, destinations at every float alignment, and a NaN or Inf at every
 * position reported. */
static void test_bf16_widen(void **state)
{
	uint16_t src[301];
	float dst[301 + 8];

	(void)state;
	for (int i = 0; i < 301; i++)
		src[i] = (uint16_t)(0x3f80 + i * 37);
	for (int n = 0; n <= 300; n += (n < 80 ? 1 : 37))
		for (int off = 0; off < 8; off++)
			for (int st = 0; st < 2; st++) {
				assert_false(fx_bf16_widen(dst + off, src + 1, (size_t)n, st));
				for (int i = 0; i < n; i++)
					assert_true(dst[off + i] == fx_bf16_to_f32(src[1 + i]));
			}
	for (int bad = 0; bad < 200; bad++) {
		uint16_t keep = src[bad];

		src[bad] = bad % 2 ? 0x7fc1 : 0xff80;   /* NaN, -Inf */
		assert_true(fx_bf16_widen(dst + bad % 8, src, 200, true));
		assert_true(fx_bf16_widen(dst + bad % 8, src, 200, false));
		src[bad] = keep;
	}
}

/* fx_bf16_copy: the same bits, and a NaN or Inf at any position reported. */
static void test_bf16_copy(void **state)
{
	uint16_t src[301], dst[301];

	(void)state;
	for (int i = 0; i < 301; i++)
		src[i] = (uint16_t)(0x3f80 + i * 37);
	for (int n = 0; n <= 300; n += (n < 80 ? 1 : 37)) {
		assert_false(fx_bf16_copy(dst, src + 1, (size_t)n));
		assert_memory_equal(dst, src + 1, (size_t)n * sizeof(uint16_t));
	}
	for (int bad = 0; bad < 200; bad++) {
		uint16_t keep = src[bad];

		src[bad] = bad % 2 ? 0x7fc1 : 0xff80;   /* NaN, -Inf */
		assert_true(fx_bf16_copy(dst, src, 200));
		assert_false(fx_bf16_copy(dst, src + bad + 1, 200 - (size_t)bad - 1));
		src[bad] = keep;
	}
}

/* fx_content_digest: equal bytes give equal digests whatever the chunking,
 * and one changed byte anywhere (also past the first 4 MiB chunk) or a
 * different length changes it. */
static void digest_of(char hex[65], const void *p, size_t n)
{
	struct fx_sha256 *h = fx_sha256_new();

	assert_non_null(h);
	fx_content_digest(h, p, n);
	fx_sha256_final(h, hex);
}

static void test_content_digest(void **state)
{
	size_t n = FX_DIGEST_CHUNK * 2 + 777;
	unsigned char *b = calloc(1, n + 1);
	char d0[65], d1[65], d2[65];

	(void)state;
	assert_non_null(b);
	for (size_t i = 0; i < n; i++)
		b[i] = (unsigned char)(i * 31u);
	digest_of(d0, b, n);
	digest_of(d1, b, n);
	assert_string_equal(d0, d1);
	assert_int_equal(strlen(d0), 64);
	b[FX_DIGEST_CHUNK + 5] ^= 1;
	digest_of(d1, b, n);
	assert_string_not_equal(d0, d1);
	b[FX_DIGEST_CHUNK + 5] ^= 1;
	b[n - 1] ^= 0x80;
	digest_of(d1, b, n);
	assert_string_not_equal(d0, d1);
	b[n - 1] ^= 0x80;
	digest_of(d1, b, n + 1);   /* one more (zero) byte */
	assert_string_not_equal(d0, d1);
	digest_of(d1, b, 0);
	digest_of(d2, "", 0);
	assert_string_equal(d1, d2);
	assert_string_not_equal(d0, d2);
	free(b);
}

/* Splits the single cache line into hash and rest. */
static int cache_lines(const char *cache, char hex[65], char *rest, size_t cap)
{
	char *txt = get_file(cache), *p;
	int n = 0;

	if (!txt)
		return -1;
	for (p = txt; *p; p++)
		n += *p == '\n';
	if (n >= 1 && strlen(txt) > 65) {
		memcpy(hex, txt, 64);
		hex[64] = '\0';
		snprintf(rest, cap, "%.*s", (int)strcspn(txt + 65, "\n"), txt + 65);
	}
	free(txt);
	return n;
}

static void test_hash_cache(void **state)
{
	static const char *abc = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";
	static const char *fake = "00000000000000000000000000000000000000000000000000000000000000aa";
	char f[PATH_MAX], cache[PATH_MAX], hex[65], chex[65], rest[PATH_MAX + 128], *abs;
	char line[PATH_MAX + 256];
	struct fx_err err = {0};
	struct timespec ts[2];

	(void)state;
	path_in(f, "model.bin");
	path_in(cache, ".fx-hash-cache");
	put_file(f, "abc");
	assert_int_equal(fx_file_sha256(hex, f, &err), 0);
	assert_string_equal(hex, abc);
	/* the cache sits next to the file and names it by absolute path */
	assert_int_equal(cache_lines(cache, chex, rest, sizeof(rest)), 1);
	assert_string_equal(chex, abc);
	abs = realpath(f, NULL);
	assert_non_null(abs);
	assert_non_null(strstr(rest, abs));
	assert_true(!strncmp(rest, "3 ", 2));

	/* a hit is served from the cache: plant a fake hash under the same key */
	snprintf(line, sizeof(line), "%s %s\n", fake, rest);
	put_file(cache, line);
	assert_int_equal(fx_file_sha256(hex, f, &err), 0);
	assert_string_equal(hex, fake);

	/* a changed file (size and mtime) is hashed again and its entry replaced */
	put_file(f, "abcd");
	ts[0].tv_sec = ts[1].tv_sec = 1000000000;
	ts[0].tv_nsec = ts[1].tv_nsec = 123;
	assert_int_equal(utimensat(AT_FDCWD, f, ts, 0), 0);
	assert_int_equal(fx_file_sha256(hex, f, &err), 0);
	assert_string_equal(hex, "88d4266fd4e6338d13b845fcf289579d209c897823b9217da3e161936f031589");
	assert_int_equal(cache_lines(cache, chex, rest, sizeof(rest)), 1);
	assert_string_equal(chex, hex);
	assert_true(!strncmp(rest, "4 1000000000000000123 ", 22));

	/* same size, new mtime: recomputed although the old key is cached */
	snprintf(line, sizeof(line), "%s %s\n", fake, rest);
	put_file(cache, line);
	assert_int_equal(fx_file_sha256(hex, f, &err), 0);
	assert_string_equal(hex, fake);
	put_file(f, "abce");
	ts[0].tv_nsec = ts[1].tv_nsec = 456;
	assert_int_equal(utimensat(AT_FDCWD, f, ts, 0), 0);
	assert_int_equal(fx_file_sha256(hex, f, &err), 0);
	fx_sha256_hex(chex, "abce", 4);
	assert_string_equal(hex, chex);
	assert_int_equal(cache_lines(cache, chex, rest, sizeof(rest)), 1);
	assert_string_equal(chex, hex);
	assert_int_equal(count_entries(".tmp."), 0);
	free(abs);
}

static void test_hash_cache_env(void **state)
{
	char f[PATH_MAX], g[PATH_MAX], cache[PATH_MAX], hex[65], *txt;
	struct fx_err err = {0};

	(void)state;
	path_in(f, "a.bin");
	path_in(g, "b.bin");
	path_in(cache, "my-cache");
	put_file(f, "abc");
	put_file(g, "");
	setenv("FX_HASH_CACHE", cache, 1);
	assert_int_equal(fx_file_sha256(hex, f, &err), 0);
	assert_int_equal(fx_file_sha256(hex, g, &err), 0);
	assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	assert_int_equal(count_entries(".fx-hash-cache"), 0);
	txt = get_file(cache);
	assert_non_null(txt);
	assert_non_null(strstr(txt, "/a.bin\n"));
	assert_non_null(strstr(txt, "/b.bin\n"));
	free(txt);

	/* an unwritable cache is not an error */
	setenv("FX_HASH_CACHE", "/nonexistent-fx-dir/cache", 1);
	assert_int_equal(fx_file_sha256(hex, f, &err), 0);
	assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");

	/* a missing input is */
	path_in(f, "missing.bin");
	assert_int_equal(fx_file_sha256(hex, f, &err), FX_E_IO);
	assert_non_null(strstr(err.msg, "missing.bin"));
	assert_non_null(strstr(err.msg, "No such file"));
}

/* atomic outputs */

static void test_out_commit(void **state)
{
	char p[PATH_MAX], *txt;
	struct fx_err err = {0};
	struct fx_out *o = NULL;
	char want[PATH_MAX + 32];

	(void)state;
	path_in(p, "out.safetensors");
	assert_int_equal(fx_out_open(&o, p, false, &err), 0);
	assert_non_null(o);
	snprintf(want, sizeof(want), "%s.tmp.%ld", p, (long)getpid());
	assert_string_equal(fx_out_tmp_path(o), want);
	assert_true(exists(want));
	assert_false(exists(p));
	assert_int_equal(fx_write_all(fx_out_fd(o), "hello ", 6, p, &err), 0);
	assert_int_equal(fx_pwrite_all(fx_out_fd(o), "world", 5, 6, p, &err), 0);
	assert_int_equal(fx_out_commit(o, &err), 0);
	txt = get_file(p);
	assert_non_null(txt);
	assert_string_equal(txt, "hello world");
	free(txt);
	assert_false(exists(want));
	assert_int_equal(count_entries(".tmp."), 0);
}

static void test_out_abort(void **state)
{
	char p[PATH_MAX];
	struct fx_err err = {0};
	struct fx_out *o = NULL;

	(void)state;
	path_in(p, "out.bin");
	assert_int_equal(fx_out_open(&o, p, false, &err), 0);
	assert_int_equal(fx_write_all(fx_out_fd(o), "x", 1, p, &err), 0);
	fx_out_abort(o);
	fx_out_abort(NULL);
	assert_int_equal(count_entries(""), 0);
}

static void test_out_exists(void **state)
{
	char p[PATH_MAX], *txt;
	struct fx_err err = {0};
	struct fx_out *o = NULL;

	(void)state;
	path_in(p, "out.bin");
	put_file(p, "old");
	assert_int_equal(fx_out_open(&o, p, false, &err), FX_E_ARG);
	assert_null(o);
	assert_non_null(strstr(err.msg, "out.bin' exists (use --force to overwrite)"));
	assert_int_equal(count_entries(".tmp."), 0);
	assert_int_equal(fx_out_open(&o, p, true, &err), 0);
	assert_int_equal(fx_write_all(fx_out_fd(o), "new", 3, p, &err), 0);
	txt = get_file(p);
	assert_string_equal(txt, "old");   /* untouched until commit */
	free(txt);
	assert_int_equal(fx_out_commit(o, &err), 0);
	txt = get_file(p);
	assert_string_equal(txt, "new");
	free(txt);

	/* a directory is never replaced */
	path_in(p, "sub");
	assert_int_equal(mkdir(p, 0755), 0);
	assert_int_equal(fx_out_open(&o, p, true, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "is a directory"));
}

static void test_out_commit_fails(void **state)
{
	char p[PATH_MAX];
	struct fx_err err = {0};
	struct fx_out *o = NULL;

	(void)state;
	/* the target becomes a non-empty directory: rename fails, temp is removed */
	path_in(p, "out.bin");
	assert_int_equal(fx_out_open(&o, p, false, &err), 0);
	assert_int_equal(mkdir(p, 0755), 0);
	path_in(p, "out.bin/x");
	put_file(p, "x");
	path_in(p, "out.bin");
	assert_int_equal(fx_out_commit(o, &err), FX_E_IO);
	assert_non_null(strstr(err.msg, "rename"));
	assert_int_equal(count_entries(".tmp."), 0);
}

static void test_fault_io(void **state)
{
	char p[PATH_MAX];
	struct fx_err err = {0};
	struct fx_out *o = NULL;

	(void)state;
	path_in(p, "out.bin");
	assert_int_equal(fx_out_open(&o, p, false, &err), 0);
	setenv("FX_FAULT_IO", "2", 1);
	assert_int_equal(fx_write_all(fx_out_fd(o), "a", 1, p, &err), 0);
	assert_int_equal(fx_write_all(fx_out_fd(o), "b", 1, p, &err), FX_E_IO);
	assert_int_equal(err.code, FX_E_IO);
	assert_non_null(strstr(err.msg, "write '"));
	assert_non_null(strstr(err.msg, "out.bin': No space left on device"));
	assert_int_equal(fx_write_all(fx_out_fd(o), "c", 1, p, &err), 0);
	setenv("FX_FAULT_IO", "1", 1);
	assert_int_equal(fx_pwrite_all(fx_out_fd(o), "d", 1, 0, p, &err), FX_E_IO);
	unsetenv("FX_FAULT_IO");
	assert_int_equal(fx_pwrite_all(fx_out_fd(o), "d", 1, 0, p, &err), 0);
	fx_out_abort(o);
	assert_int_equal(count_entries(""), 0);
}

static void test_sigint_cleanup(void **state)
{
	char p[PATH_MAX];
	int sigs[] = { SIGINT, SIGTERM, SIGHUP };
	size_t i;

	(void)state;
	path_in(p, "out.bin");
	for (i = 0; i < FX_ARRAY_SIZE(sigs); i++) {
		int status = 0;
		pid_t pid = fork();

		assert_true(pid >= 0);
		if (pid == 0) {
			struct fx_out *o = NULL, *o2 = NULL;
			char q[PATH_MAX];

			signal(sigs[i], SIG_DFL);
			fx_io_install_signal_cleanup();
			path_in(q, "second.bin");
			if (fx_out_open(&o, p, false, NULL) < 0 ||
			    fx_out_open(&o2, q, false, NULL) < 0 ||
			    fx_write_all(fx_out_fd(o), "x", 1, p, NULL) < 0)
				_exit(10);
			if (!exists(fx_out_tmp_path(o)))
				_exit(11);
			raise(sigs[i]);
			_exit(12);
		}
		assert_int_equal(waitpid(pid, &status, 0), pid);
		assert_true(WIFEXITED(status));
		assert_int_equal(WEXITSTATUS(status), 4);
		assert_int_equal(count_entries(".tmp."), 0);
		assert_false(exists(p));
	}
}

static void test_read_file(void **state)
{
	char p[PATH_MAX], *buf = NULL;
	struct fx_err err = {0};
	size_t len = 0;

	(void)state;
	path_in(p, "small.txt");
	put_file(p, "0123456789");
	assert_int_equal(fx_read_file(&buf, &len, p, 10, &err), 0);
	assert_int_equal(len, 10);
	assert_string_equal(buf, "0123456789");
	free(buf);
	assert_int_equal(fx_read_file(&buf, &len, p, 9, &err), FX_E_FORMAT);
	assert_null(buf);
	assert_non_null(strstr(err.msg, "too large"));
	put_file(p, "");
	assert_int_equal(fx_read_file(&buf, &len, p, 0, &err), 0);
	assert_int_equal(len, 0);
	assert_string_equal(buf, "");
	free(buf);
	path_in(p, "none.txt");
	assert_int_equal(fx_read_file(&buf, &len, p, 10, &err), FX_E_IO);
	assert_non_null(strstr(err.msg, "none.txt"));
	assert_int_equal(fx_read_file(&buf, &len, g_dir, 10, &err), FX_E_IO);
}

/* number parsing */

static void test_parse_int(void **state)
{
	long v = -1;

	(void)state;
	assert_true(fx_parse_int("42", 0, 100, &v));
	assert_int_equal(v, 42);
	assert_true(fx_parse_int("-5", -5, 5, &v));
	assert_int_equal(v, -5);
	assert_true(fx_parse_int("+7", 0, 10, &v));
	assert_int_equal(v, 7);
	assert_true(fx_parse_int("010", 0, 100, &v));
	assert_int_equal(v, 10);   /* decimal, not octal */
	assert_true(fx_parse_int("100", 0, 100, NULL));
	assert_false(fx_parse_int("101", 0, 100, &v));
	assert_false(fx_parse_int("-6", -5, 5, &v));
	assert_false(fx_parse_int("", 0, 100, &v));
	assert_false(fx_parse_int(NULL, 0, 100, &v));
	assert_false(fx_parse_int(" 5", 0, 100, &v));
	assert_false(fx_parse_int("5 ", 0, 100, &v));
	assert_false(fx_parse_int("12x", 0, 100, &v));
	assert_false(fx_parse_int("0x10", 0, 100, &v));
	assert_false(fx_parse_int("-", -5, 5, &v));
	assert_false(fx_parse_int("99999999999999999999", LONG_MIN, LONG_MAX, &v));
	assert_true(fx_parse_int("9223372036854775807", LONG_MIN, LONG_MAX, &v));
	assert_int_equal(v, LONG_MAX);
}

static void test_parse_range(void **state)
{
	int a = -1, b = -1;

	(void)state;
	assert_true(fx_parse_range("3-7", &a, &b));
	assert_int_equal(a, 3);
	assert_int_equal(b, 7);
	assert_true(fx_parse_range("5", &a, &b));
	assert_int_equal(a, 5);
	assert_int_equal(b, 5);
	assert_true(fx_parse_range("0-0", &a, &b));
	assert_int_equal(a, 0);
	assert_int_equal(b, 0);
	assert_true(fx_parse_range("0-2147483647", &a, &b));
	assert_int_equal(b, INT_MAX);
	assert_false(fx_parse_range("7-3", &a, &b));
	assert_false(fx_parse_range("", &a, &b));
	assert_false(fx_parse_range(NULL, &a, &b));
	assert_false(fx_parse_range("-3", &a, &b));
	assert_false(fx_parse_range("3-", &a, &b));
	assert_false(fx_parse_range("3--7", &a, &b));
	assert_false(fx_parse_range("3-+7", &a, &b));
	assert_false(fx_parse_range("+3", &a, &b));
	assert_false(fx_parse_range("3-7-9", &a, &b));
	assert_false(fx_parse_range(" 3-7", &a, &b));
	assert_false(fx_parse_range("3 -7", &a, &b));
	assert_false(fx_parse_range("3- 7", &a, &b));
	assert_false(fx_parse_range("a-b", &a, &b));
	assert_false(fx_parse_range("2147483648", &a, &b));
}

/* option parsing */

enum { OPT_MODEL = 256, OPT_STRICT, OPT_BLOCKS };

static const struct fx_opt tool_opts[] = {
	{ "model", 0, FX_OPT_REQ, "M", "source model", OPT_MODEL },
	{ "strict", 0, FX_OPT_NONE, NULL, "warnings count as findings", OPT_STRICT },
	{ "blocks", 0, FX_OPT_REQ, "A-B", "only blocks A to B", OPT_BLOCKS },
	{ "jobs", 'j', FX_OPT_REQ, "N", "run N jobs", 'j' },
	{ 0 }
};

static void cli_make(struct fx_cli *cli, unsigned common)
{
	memset(cli, 0, sizeof(*cli));
	cli->synopsis = "fx-test [options] FILE...";
	cli->summary = "Test the option parser.";
	cli->opts = tool_opts;
	cli->common = common;
}

#define ALL_COMMON (FX_CLI_OUTPUT | FX_CLI_FORCE | FX_CLI_JSON | FX_CLI_THREADS | FX_CLI_DEVICE)

static void test_cli_parse(void **state)
{
	static const char *const args[] = { "/usr/local/bin/fx-test", "--model", "m.st", "-o",
		"out.st", "--force", "in1", "--strict", "-j4", "--threads=2", "--device", "cuda:1",
		"-v", "--json", "--blocks=3-7", "in2", "--", "--in3", NULL };
	int argc;
	char **argv = mkargv(args, &argc);
	struct fx_cli cli;
	const char *arg;

	(void)state;
	cli_make(&cli, ALL_COMMON);
	fx_cli_init(&cli, argc, argv);
	assert_string_equal(cli.prog, "fx-test");
	assert_string_equal(fx_log_prog(), "fx-test");
	assert_string_equal(cli.c.device, "cpu");
	assert_int_equal(fx_cli_next(&cli, &arg), OPT_MODEL);
	assert_string_equal(arg, "m.st");
	assert_int_equal(fx_cli_next(&cli, &arg), OPT_STRICT);
	assert_null(arg);
	assert_int_equal(fx_cli_next(&cli, &arg), 'j');
	assert_string_equal(arg, "4");
	assert_int_equal(fx_cli_next(&cli, &arg), OPT_BLOCKS);
	assert_string_equal(arg, "3-7");
	assert_int_equal(fx_cli_next(&cli, &arg), 0);
	assert_string_equal(cli.c.output, "out.st");
	assert_true(cli.c.force);
	assert_true(cli.c.json);
	assert_int_equal(cli.c.threads, 2);
	assert_string_equal(cli.c.device, "cuda:1");
	assert_int_equal(cli.c.verbosity, 1);
	assert_int_equal(fx_log_level(), FX_LOG_DEBUG);
	/* positionals are permuted to the end, "--" ends the options */
	assert_int_equal(argc - cli.optind, 3);
	assert_string_equal(argv[cli.optind], "in1");
	assert_string_equal(argv[cli.optind + 1], "in2");
	assert_string_equal(argv[cli.optind + 2], "--in3");

	/* a second parse in the same process starts afresh; -q lowers the level */
	{
		static const char *const args2[] = { "fx-test", "-qq", "x", NULL };
		char **argv2 = mkargv(args2, &argc);

		cli_make(&cli, 0);
		fx_cli_init(&cli, argc, argv2);
		assert_int_equal(fx_cli_next(&cli, &arg), 0);
		assert_int_equal(cli.c.verbosity, -2);
		assert_int_equal(fx_log_level(), FX_LOG_ERROR);
		assert_int_equal(cli.optind, 2);
		assert_false(cli.c.force);
	}
}

/* Parses argv and expects a usage error whose stderr contains want. */
static void expect_usage_error(unsigned common, const char *a1, const char *a2, const char *want)
{
	const char *args[] = { "fx-test", a1, a2, NULL };
	int argc, id;
	char **argv = mkargv(args, &argc);
	struct fx_cli cli;
	struct cap cap;
	const char *arg, *out;

	cli_make(&cli, common);
	fx_cli_init(&cli, argc, argv);
	cap_begin(&cap);
	while ((id = fx_cli_next(&cli, &arg)) > 0)
		;
	out = cap_end(&cap);
	assert_int_equal(id, -1);
	if (!strstr(out, want))
		fail_msg("stderr '%s' lacks '%s'", out, want);
	assert_non_null(strstr(out, "usage: fx-test [options] FILE...\n"
				    "Try 'fx-test --help' for more information.\n"));
	assert_true(!strncmp(out, "fx-test: error: ", 16));
}

static void test_cli_usage_errors(void **state)
{
	(void)state;
	expect_usage_error(ALL_COMMON, "--bogus", NULL, "unknown option '--bogus'");
	expect_usage_error(ALL_COMMON, "--bogus=3", NULL, "unknown option '--bogus'");
	expect_usage_error(ALL_COMMON, "-x", NULL, "unknown option '-x'");
	expect_usage_error(ALL_COMMON, "--ver", NULL, "option '--ver' is ambiguous");
	expect_usage_error(ALL_COMMON, "--model", NULL, "option '--model' requires an argument");
	expect_usage_error(ALL_COMMON, "-j", NULL, "option '-j' requires an argument");
	expect_usage_error(ALL_COMMON, "-o", NULL, "option '-o' requires an argument");
	expect_usage_error(ALL_COMMON, "--force=1", NULL, "option '--force' doesn't allow an argument");
	expect_usage_error(ALL_COMMON, "--strict=1", NULL,
			   "option '--strict' doesn't allow an argument");
	expect_usage_error(ALL_COMMON, "--threads", "0", "bad thread count '0'");
	expect_usage_error(ALL_COMMON, "--threads", "two", "bad thread count 'two'");
	expect_usage_error(ALL_COMMON, "--device", "tpu", "unknown device 'tpu'");
	expect_usage_error(ALL_COMMON, "--device", "cuda:x", "unknown device 'cuda:x'");
	/* common options a tool does not offer are unknown */
	expect_usage_error(FX_CLI_JSON, "--output", "x", "unknown option '--output'");
	expect_usage_error(FX_CLI_JSON, "-o", "x", "unknown option '-o'");
	expect_usage_error(0, "--threads=3", NULL, "unknown option '--threads'");
}

static void test_cli_usage_error_fn(void **state)
{
	static const char *const args[] = { "fx-test", NULL };
	int argc;
	char **argv = mkargv(args, &argc);
	struct fx_cli cli;
	struct cap cap;
	const char *out;

	(void)state;
	cli_make(&cli, 0);
	fx_cli_init(&cli, argc, argv);
	cap_begin(&cap);
	assert_int_equal(fx_cli_usage_error(&cli, "no input %s", "files"), 2);
	out = cap_end(&cap);
	assert_string_equal(out, "fx-test: error: no input files\n"
				 "usage: fx-test [options] FILE...\n"
				 "Try 'fx-test --help' for more information.\n");
}

/* Runs fx_cli_next in a child with one argument; returns its stdout. */
static char *run_child(const char *opt, unsigned common, int *status)
{
	static char buf[8192];
	int pfd[2];
	size_t n = 0;
	pid_t pid;

	assert_int_equal(pipe(pfd), 0);
	fflush(stdout);
	pid = fork();
	assert_true(pid >= 0);
	if (pid == 0) {
		const char *args[] = { "fx-test", opt, NULL };
		int argc;
		char **argv = mkargv(args, &argc);
		struct fx_cli cli;
		const char *arg;

		close(pfd[0]);
		dup2(pfd[1], STDOUT_FILENO);
		cli_make(&cli, common);
		fx_cli_init(&cli, argc, argv);
		while (fx_cli_next(&cli, &arg) > 0)
			;
		_exit(9);   /* not reached: --help/--version exit */
	}
	close(pfd[1]);
	for (;;) {
		ssize_t r = read(pfd[0], buf + n, sizeof(buf) - 1 - n);

		if (r < 0 && errno == EINTR)
			continue;
		if (r <= 0)
			break;
		n += (size_t)r;
	}
	buf[n] = '\0';
	close(pfd[0]);
	assert_int_equal(waitpid(pid, status, 0), pid);
	return buf;
}

static void test_cli_help(void **state)
{
	const char *out, *p;
	int status = 0, col = -1;
	static const char *const longs[] = { "--model M", "--strict", "--blocks A-B", "-j, --jobs N",
		"-o, --output FILE", "--force", "--json", "--threads N", "--device DEV",
		"-q, --quiet", "-v, --verbose", "-h, --help", "-V, --version" };
	size_t i;

	(void)state;
	out = run_child("--help", ALL_COMMON, &status);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	{
		static const char head[] = "usage: fx-test [options] FILE...\n\n"
					   "Test the option parser.\n\noptions:\n";

		assert_true(!strncmp(out, head, strlen(head)));
	}
	for (i = 0; i < FX_ARRAY_SIZE(longs); i++)
		if (!strstr(out, longs[i]))
			fail_msg("--help lacks '%s':\n%s", longs[i], out);
	assert_non_null(strstr(out, "\n      --model M "));
	assert_non_null(strstr(out, "\n  -o, --output FILE "));
	/* tool options come first, and every help text starts in one column */
	assert_true(strstr(out, "--model") < strstr(out, "--output"));
	for (p = strstr(out, "options:\n") + 9; *p; p = strchr(p, '\n') + 1) {
		const char *t = p + 2, *nl = strchr(p, '\n');

		while (*t == ' ')
			t++;
		while (*t != ' ' || t[1] != ' ')
			t++;
		while (*t == ' ')
			t++;
		if (col < 0)
			col = (int)(t - p);
		assert_int_equal((int)(t - p), col);
		assert_true(t < nl);
	}

	/* only the offered common options are listed */
	out = run_child("-h", FX_CLI_JSON, &status);
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_null(strstr(out, "--output"));
	assert_null(strstr(out, "--threads"));
	assert_non_null(strstr(out, "--json"));
}

static void test_cli_version(void **state)
{
	char want[128];
	const char *out;
	int status = 0;

	(void)state;
#if defined(FX_CUDA) && FX_CUDA
	snprintf(want, sizeof(want), "fx-test %s (fx-file %d; cuda)\n", FX_VERSION, FX_FILE_VERSION);
#else
	snprintf(want, sizeof(want), "fx-test %s (fx-file %d; no-cuda)\n", FX_VERSION,
		 FX_FILE_VERSION);
#endif
	out = run_child("--version", 0, &status);
	assert_true(WIFEXITED(status));
	assert_int_equal(WEXITSTATUS(status), 0);
	assert_string_equal(out, want);
	out = run_child("-V", 0, &status);
	assert_string_equal(out, want);
}

/* logging */

static void test_log_levels(void **state)
{
	struct cap cap;
	const char *out;

	(void)state;
	fx_log_set_prog("fx-test");
	cap_begin(&cap);
	fx_log_error("tensor '%s' is bad", "a");
	fx_log_warn("careful");
	fx_log_info("hello %d", 1);
	fx_log_debug("hidden");
	out = cap_end(&cap);
	assert_string_equal(out, "fx-test: error: tensor 'a' is bad\n"
				 "fx-test: warning: careful\n"
				 "fx-test: hello 1\n");
	fx_log_set_level(FX_LOG_ERROR);
	cap_begin(&cap);
	fx_log_warn("careful");
	fx_log_error("still shown\n");
	out = cap_end(&cap);
	assert_string_equal(out, "fx-test: error: still shown\n");
	fx_log_set_level(FX_LOG_DEBUG);
	cap_begin(&cap);
	fx_log_debug("shown");
	out = cap_end(&cap);
	assert_string_equal(out, "fx-test: shown\n");
}

static void test_progress_not_tty(void **state)
{
	struct fx_progress p;
	struct cap cap;
	const char *out;

	(void)state;
	cap_begin(&cap);
	fx_progress_start(&p, "quant", 3, 3u << 30);
	fx_progress_step(&p, 1, 1u << 30);
	fx_progress_end(&p);
	out = cap_end(&cap);
	assert_string_equal(out, "");
	assert_int_equal(p.items_done, 1);
	assert_false(p.active);
}

static void test_progress_tty(void **state)
{
	struct fx_progress p;
	int master, slave, saved;
	char buf[4096];
	size_t n = 0;
	double t0;

	(void)state;
	if (openpty(&master, &slave, NULL, NULL, NULL) != 0)
		skip();
	fflush(stderr);
	saved = dup(STDERR_FILENO);
	dup2(slave, STDERR_FILENO);
	fx_progress_start(&p, "quant", 2, 3u << 30);
	fx_progress_step(&p, 1, 1u << 29);
	t0 = fx_now();
	while (fx_now() - t0 < 0.6)
		;
	fx_progress_step(&p, 0, 1u << 29);   /* redrawn: 0.2 s passed */
	fx_log_warn("in between");
	fx_progress_step(&p, 1, 2u << 30);
	fx_progress_end(&p);
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	close(slave);
	for (;;) {
		ssize_t r = read(master, buf + n, sizeof(buf) - 1 - n);

		if (r <= 0)
			break;   /* EIO once the slave is closed and drained */
		n += (size_t)r;
	}
	buf[n] = '\0';
	close(master);
	assert_true(p.active == false);
	if (!strstr(buf, "\rquant: 0/2 layers, 0.0/3.0 GiB") ||
	    !strstr(buf, "\rquant: 1/2 layers, 1.0/3.0 GiB") ||
	    !strstr(buf, "fx-test: warning: in between") ||
	    !strstr(buf, "\rquant: 2/2 layers, 3.0/3.0 GiB") || !strstr(buf, " GiB/s") ||
	    buf[n - 1] != '\n')
		fail_msg("unexpected progress output: '%s'", buf);
}

static void test_now(void **state)
{
	double a = fx_now(), b = fx_now();

	(void)state;
	assert_true(a > 0);
	assert_true(b >= a);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup(test_error_basic, setup_each),
		cmocka_unit_test_setup(test_error_exit_map, setup_each),
		cmocka_unit_test_setup(test_sha256_vectors, setup_each),
		cmocka_unit_test_setup(test_crc32_vectors, setup_each),
		cmocka_unit_test_setup(test_content_digest, setup_each),
		cmocka_unit_test_setup(test_bf16_widen, setup_each),
		cmocka_unit_test_setup(test_bf16_copy, setup_each),
		cmocka_unit_test_setup(test_hash_cache, setup_each),
		cmocka_unit_test_setup(test_hash_cache_env, setup_each),
		cmocka_unit_test_setup(test_out_commit, setup_each),
		cmocka_unit_test_setup(test_out_abort, setup_each),
		cmocka_unit_test_setup(test_out_exists, setup_each),
		cmocka_unit_test_setup(test_out_commit_fails, setup_each),
		cmocka_unit_test_setup(test_fault_io, setup_each),
		cmocka_unit_test_setup(test_sigint_cleanup, setup_each),
		cmocka_unit_test_setup(test_read_file, setup_each),
		cmocka_unit_test_setup(test_parse_int, setup_each),
		cmocka_unit_test_setup(test_parse_range, setup_each),
		cmocka_unit_test_setup(test_cli_parse, setup_each),
		cmocka_unit_test_setup(test_cli_usage_errors, setup_each),
		cmocka_unit_test_setup(test_cli_usage_error_fn, setup_each),
		cmocka_unit_test_setup(test_cli_help, setup_each),
		cmocka_unit_test_setup(test_cli_version, setup_each),
		cmocka_unit_test_setup(test_log_levels, setup_each),
		cmocka_unit_test_setup(test_progress_not_tty, setup_each),
		cmocka_unit_test_setup(test_progress_tty, setup_each),
		cmocka_unit_test_setup(test_now, setup_each),
	};

	return cmocka_run_group_tests_name("common", tests, setup_group, teardown_group);
}
