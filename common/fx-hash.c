/* SHA-256 via libcrypto EVP, CRC32 via zlib, and the file-hash cache. */
#include "fx-hash.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-map.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <openssl/evp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <isa-l/crc.h>
#include <xxhash.h>

#define CACHE_NAME ".fx-hash-cache"
#define CACHE_MAX (64u << 20)     /* larger caches are ignored and rewritten */
#define CACHE_KEEP 4096           /* entries kept when rewriting */
#define READ_BUF (8u << 20)

struct fx_sha256 {
	EVP_MD_CTX *ctx;
};

struct fx_sha256 *fx_sha256_new(void)
{
	struct fx_sha256 *h = malloc(sizeof(*h));

	if (!h)
		return NULL;
	h->ctx = EVP_MD_CTX_new();
	if (!h->ctx || EVP_DigestInit_ex(h->ctx, EVP_sha256(), NULL) != 1) {
		EVP_MD_CTX_free(h->ctx);
		free(h);
		return NULL;
	}
	return h;
}

void fx_sha256_update(struct fx_sha256 *h, const void *data, size_t n)
{
	if (h && n)
		EVP_DigestUpdate(h->ctx, data, n);
}

static void to_hex(char *hex, const unsigned char *d, size_t n)
{
	static const char digits[] = "0123456789abcdef";
	size_t i;

	for (i = 0; i < n; i++) {
		hex[2 * i] = digits[d[i] >> 4];
		hex[2 * i + 1] = digits[d[i] & 15];
	}
	hex[2 * n] = '\0';
}

void fx_sha256_final(struct fx_sha256 *h, char hex[65])
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int n = 0;

	hex[0] = '\0';
	if (!h)
		return;
	if (EVP_DigestFinal_ex(h->ctx, md, &n) == 1 && n == 32)
		to_hex(hex, md, 32);
	EVP_MD_CTX_free(h->ctx);
	free(h);
}

void fx_sha256_hex(char hex[65], const void *data, size_t n)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int len = 0;

	if (EVP_Digest(data, n, md, &len, EVP_sha256(), NULL) == 1 && len == 32)
		to_hex(hex, md, 32);
	else
		hex[0] = '\0';
}

/* ISA-L's folding CRC (PCLMULQDQ) is zlib's CRC32 at ~5x the speed. */
uint32_t fx_crc32(uint32_t crc, const void *data, size_t n)
{
	const unsigned char *p = data;

	while (n) {
		uint64_t k = n > (1u << 30) ? (1u << 30) : n;

		crc = crc32_gzip_refl(crc, p, k);
		p += k;
		n -= k;
	}
	return crc;
}

void fx_content_digest(struct fx_sha256 *h, const void *data, size_t n)
{
	const unsigned char *p = data;
	size_t nchunk = n ? (n + FX_DIGEST_CHUNK - 1) / FX_DIGEST_CHUNK : 1;
	XXH128_canonical_t *d = malloc(nchunk * sizeof(*d));
	uint64_t len = n;

	fx_sha256_update(h, &len, sizeof(len));
	if (!d) {
		fx_sha256_update(h, data, n);  /* slow, still a content hash */
		return;
	}
#pragma omp parallel for schedule(dynamic, 1) if (nchunk > 1)
	for (size_t i = 0; i < nchunk; i++) {
		size_t off = i * FX_DIGEST_CHUNK;
		size_t len_i = n - off < FX_DIGEST_CHUNK ? n - off : FX_DIGEST_CHUNK;

		XXH128_canonicalFromHash(&d[i], XXH3_128bits(p + off, len_i));
	}
	fx_sha256_update(h, d, nchunk * sizeof(*d));
	free(d);
}

/* Hash cache: lines "sha256 size mtime_ns inode abspath". */

struct key {
	const char *path;
	uint64_t size, mtime_ns, ino;
};

static pthread_mutex_t g_cache_lock = PTHREAD_MUTEX_INITIALIZER;

static bool parse_line(const char *line, size_t len, char hex[65], struct key *k,
		       size_t *path_off)
{
	int off = 0;
	unsigned long long sz, mt, ino;
	size_t i;

	if (len < 64 + 7 || line[64] != ' ')
		return false;
	for (i = 0; i < 64; i++)
		if (!strchr("0123456789abcdef", line[i]) || !line[i])
			return false;
	if (sscanf(line + 65, "%llu %llu %llu %n", &sz, &mt, &ino, &off) != 3 || off <= 0 ||
	    65 + (size_t)off >= len || line[65 + off] != '/')
		return false;
	if (hex) {
		memcpy(hex, line, 64);
		hex[64] = '\0';
	}
	k->size = sz;
	k->mtime_ns = mt;
	k->ino = ino;
	*path_off = 65 + (size_t)off;
	return true;
}

static bool key_eq(const struct key *a, const struct key *b, const char *bpath, size_t blen)
{
	return a->size == b->size && a->mtime_ns == b->mtime_ns && a->ino == b->ino &&
	       strlen(a->path) == blen && !memcmp(a->path, bpath, blen);
}

static char *cache_path(const char *abspath)
{
	const char *env = getenv("FX_HASH_CACHE");
	const char *slash;
	char *p;
	size_t n;

	if (env && *env)
		return strdup(env);
	slash = strrchr(abspath, '/');
	n = (size_t)(slash - abspath);
	if (!(p = malloc(n + sizeof(CACHE_NAME) + 2)))
		return NULL;
	memcpy(p, abspath, n);
	p[n] = '/';
	memcpy(p + n + 1, CACHE_NAME, sizeof(CACHE_NAME));
	return p;
}

static bool cache_lookup(const char *cpath, const struct key *k, char hex[65])
{
	char *buf = NULL, *line, *nl;
	bool hit = false;
	size_t len;

	if (fx_read_file(&buf, &len, cpath, CACHE_MAX, NULL) < 0)
		return false;
	for (line = buf; !hit && line < buf + len; line = nl + 1) {
		struct key e;
		size_t po;

		nl = memchr(line, '\n', (size_t)(buf + len - line));
		if (!nl)
			break;   /* a partial last line is ignored */
		if (parse_line(line, (size_t)(nl - line), hex, &e, &po) &&
		    key_eq(k, &e, line + po, (size_t)(nl - line) - po))
			hit = true;
	}
	free(buf);
	return hit;
}

/* Writes all of buf without touching the FX_FAULT_IO counter. */
static bool raw_write(int fd, const char *p, size_t n)
{
	while (n) {
		ssize_t w = write(fd, p, n);

		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			return false;
		p += w;
		n -= (size_t)w;
	}
	return true;
}

/* Rewrites the cache: older entries minus any for this path, then this one. */
static void cache_store(const char *cpath, const struct key *k, const char *hex)
{
	struct fx_err err = {0};
	struct fx_out *o = NULL;
	char *buf = NULL, *line, *nl, head[128];
	size_t len = 0, nlines = 0, skip = 0, i;
	int n;

	if (strchr(k->path, '\n'))
		return;
	if (fx_read_file(&buf, &len, cpath, CACHE_MAX, NULL) < 0)
		len = 0;
	for (line = buf; line && line < buf + len && (nl = memchr(line, '\n', (size_t)(buf + len - line)));
	     line = nl + 1)
		nlines++;
	if (nlines >= CACHE_KEEP)
		skip = nlines - CACHE_KEEP + 1;   /* drop the oldest */
	if (fx_out_open(&o, cpath, true, &err) < 0)
		goto fail;
	for (line = buf, i = 0; line && line < buf + len; line = nl + 1, i++) {
		struct key e;
		size_t po, ll;

		nl = memchr(line, '\n', (size_t)(buf + len - line));
		if (!nl)
			break;
		ll = (size_t)(nl - line);
		if (i < skip || !parse_line(line, ll, NULL, &e, &po))
			continue;
		if (ll - po == strlen(k->path) && !memcmp(line + po, k->path, ll - po))
			continue;   /* stale entry for the same file */
		if (!raw_write(fx_out_fd(o), line, ll + 1))
			goto fail_errno;
	}
	n = snprintf(head, sizeof(head), "%s %" PRIu64 " %" PRIu64 " %" PRIu64 " ", hex, k->size,
		     k->mtime_ns, k->ino);
	if (!raw_write(fx_out_fd(o), head, (size_t)n) ||
	    !raw_write(fx_out_fd(o), k->path, strlen(k->path)) || !raw_write(fx_out_fd(o), "\n", 1))
		goto fail_errno;
	if (fx_out_commit(o, &err) < 0) {
		o = NULL;
		goto fail;
	}
	free(buf);
	return;
fail_errno:
	fx_error(&err, FX_E_IO, "write '%s': %s", fx_out_tmp_path(o), strerror(errno));
fail:
	fx_log_debug("hash cache not updated: %s", err.msg);
	fx_out_abort(o);
	free(buf);
}

static int hash_fd(int fd, const char *path, char hex[65], struct fx_err *err)
{
	struct fx_sha256 *h = fx_sha256_new();
	char *buf = malloc(READ_BUF);
	int ret = 0;

	if (!h || !buf) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory hashing '%s'", path);
		goto out;
	}
#ifdef POSIX_FADV_SEQUENTIAL
	posix_fadvise(fd, 0, 0, POSIX_FADV_SEQUENTIAL);
#endif
	for (;;) {
		ssize_t r = read(fd, buf, READ_BUF);

		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0) {
			ret = fx_error(err, FX_E_IO, "read '%s': %s", path, strerror(errno));
			goto out;
		}
		if (r == 0)
			break;
		fx_sha256_update(h, buf, (size_t)r);
	}
	fx_sha256_final(h, hex);
	h = NULL;
	if (!hex[0])
		ret = fx_error(err, FX_E_NOMEM, "sha-256 failed for '%s'", path);
out:
	if (h)
		fx_sha256_final(h, (char[65]){0});
	free(buf);
	return ret;
}

int fx_file_sha256(char hex[65], const char *path, struct fx_err *err)
{
	char *abspath = NULL, *cpath = NULL;
	struct fx_file_id id;
	struct stat st, st2;
	struct key k;
	int fd, ret = 0;

	hex[0] = '\0';
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return fx_error(err, FX_E_IO, "cannot open '%s': %s", path, strerror(errno));
	if (fstat(fd, &st) != 0) {
		ret = fx_error(err, FX_E_IO, "cannot stat '%s': %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		ret = fx_error(err, FX_E_IO, "'%s' is not a regular file", path);
		goto out;
	}
	/* the identity must be of the bytes the run mapped, not of a file put
	 * at the path since */
	fx_file_id_of(&id, &st);
	if ((ret = fx_map_check_same(path, &id, err)) < 0)
		goto out;
	abspath = realpath(path, NULL);
	cpath = abspath ? cache_path(abspath) : NULL;
	k.path = abspath;
	k.size = (uint64_t)st.st_size;
	k.mtime_ns = (uint64_t)st.st_mtim.tv_sec * 1000000000u + (uint64_t)st.st_mtim.tv_nsec;
	k.ino = (uint64_t)st.st_ino;
	if (cpath) {
		pthread_mutex_lock(&g_cache_lock);
		if (cache_lookup(cpath, &k, hex)) {
			pthread_mutex_unlock(&g_cache_lock);
			fx_log_debug("sha-256 of '%s' from the cache '%s'", path, cpath);
			goto out;
		}
		pthread_mutex_unlock(&g_cache_lock);
	}
	ret = hash_fd(fd, path, hex, err);
	if (ret < 0)
		goto out;
	/* a file that changed while it was read has no identity */
	if (fstat(fd, &st2) != 0 || (uint64_t)st2.st_size != k.size ||
	    st2.st_mtim.tv_sec != st.st_mtim.tv_sec || st2.st_mtim.tv_nsec != st.st_mtim.tv_nsec) {
		hex[0] = '\0';
		ret = fx_error(err, FX_E_IO, "'%s' changed while the run read it; nothing written", path);
		goto out;
	}
	if (!cpath)
		goto out;
	pthread_mutex_lock(&g_cache_lock);
	cache_store(cpath, &k, hex);
	pthread_mutex_unlock(&g_cache_lock);
out:
	close(fd);
	free(abspath);
	free(cpath);
	return ret;
}
