/* Registry of the files this process has mapped to read. A fixed table, so
 * that the SIGBUS handler can walk it: a slot's fields are written before
 * its flag is set, and the flag cleared before the slot is reused. */
#include "fx-map.h"
#include "fx-io.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_MAPS 1024

static struct {
	uintptr_t base;
	size_t size;
	char *path;          /* as opened, for messages */
	char *key;           /* as resolved by norm_path, for comparing */
	struct fx_file_id id;
} g_maps[MAX_MAPS];
static volatile sig_atomic_t g_live[MAX_MAPS];
static size_t g_top;     /* slots at and above are unused */
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

void fx_file_id_of(struct fx_file_id *id, const struct stat *sb)
{
	id->dev = (uint64_t)sb->st_dev;
	id->ino = (uint64_t)sb->st_ino;
	id->size = (uint64_t)sb->st_size;
	id->mtime_ns = (uint64_t)sb->st_mtim.tv_sec * 1000000000u + (uint64_t)sb->st_mtim.tv_nsec;
}

bool fx_file_id_eq(const struct fx_file_id *a, const struct fx_file_id *b)
{
	return a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
	       a->mtime_ns == b->mtime_ns;
}

/* path with its directory resolved ("./m.st" and "/w/m.st" compare equal)
 * but not its last component: a link that is repointed names another file. */
static char *norm_path(const char *path)
{
	const char *slash = strrchr(path, '/');
	char *dir, *real, *out = NULL;
	size_t n;

	if (slash && !slash[1])
		return strdup(path);
	dir = !slash ? strdup(".") : slash == path ? strdup("/") : strndup(path, (size_t)(slash - path));
	real = dir ? realpath(dir, NULL) : NULL;
	if (real) {
		n = strlen(real) + strlen(slash ? slash + 1 : path) + 2;
		if ((out = malloc(n)))
			snprintf(out, n, "%s/%s", strcmp(real, "/") ? real : "", slash ? slash + 1 : path);
	}
	free(dir);
	free(real);
	return out ? out : strdup(path);
}

void fx_map_add(const void *base, size_t size, const char *path, const struct stat *sb)
{
	char *np = norm_path(path), *name = strdup(path);
	size_t i;

	if (!np || !name)
		goto out;
	fx_io_install_bus_handler();
	pthread_mutex_lock(&g_lock);
	for (i = 0; i < MAX_MAPS && g_live[i]; i++)
		;
	if (i < MAX_MAPS) {
		g_maps[i].base = (uintptr_t)base;
		g_maps[i].size = size;
		g_maps[i].path = name;
		g_maps[i].key = np;
		fx_file_id_of(&g_maps[i].id, sb);
		np = name = NULL;
		__atomic_thread_fence(__ATOMIC_SEQ_CST);
		g_live[i] = 1;
		if (i >= g_top)
			__atomic_store_n(&g_top, i + 1, __ATOMIC_SEQ_CST);
	}
	pthread_mutex_unlock(&g_lock);
out:
	free(np);
	free(name);
}

void fx_map_del(const void *base)
{
	char *path = NULL, *key = NULL;
	size_t i;

	pthread_mutex_lock(&g_lock);
	for (i = 0; i < g_top; i++)
		if (g_live[i] && g_maps[i].base == (uintptr_t)base) {
			g_live[i] = 0;
			__atomic_thread_fence(__ATOMIC_SEQ_CST);
			path = g_maps[i].path;
			key = g_maps[i].key;
			g_maps[i].path = g_maps[i].key = NULL;
			break;
		}
	while (g_top && !g_live[g_top - 1])
		g_top--;
	pthread_mutex_unlock(&g_lock);
	free(path);
	free(key);
}

static bool contains_locked(const void *p, size_t n)
{
	uintptr_t a = (uintptr_t)p;
	size_t i;

	for (i = 0; i < g_top; i++) {
		uintptr_t b = g_maps[i].base;

		if (g_live[i] && a >= b && a - b <= g_maps[i].size && n <= g_maps[i].size - (a - b))
			return true;
	}
	return false;
}

bool fx_map_contains(const void *p, size_t n)
{
	bool in;

	pthread_mutex_lock(&g_lock);
	in = contains_locked(p, n);
	pthread_mutex_unlock(&g_lock);
	return in;
}

void fx_map_advise(const void *p, size_t n, void *a, size_t len, int advice)
{
	pthread_mutex_lock(&g_lock);
	if (len && contains_locked(p, n))
		madvise(a, len, advice);
	pthread_mutex_unlock(&g_lock);
}

static int changed(const char *path, struct fx_err *err)
{
	return fx_error(err, FX_E_IO, "'%s' changed while the run read it; nothing written", path);
}

int fx_map_check_same(const char *path, const struct fx_file_id *now, struct fx_err *err)
{
	char *np = norm_path(path);
	bool same = true;
	size_t i;

	if (!np)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	pthread_mutex_lock(&g_lock);
	for (i = 0; i < g_top && same; i++)
		if (g_live[i] && !strcmp(g_maps[i].key, np))
			same = fx_file_id_eq(&g_maps[i].id, now);
	pthread_mutex_unlock(&g_lock);
	free(np);
	return same ? 0 : changed(path, err);
}

int fx_map_check_unchanged(struct fx_err *err)
{
	char bad[PATH_MAX] = "";
	struct fx_file_id now;
	struct stat sb;
	size_t i;

	pthread_mutex_lock(&g_lock);
	for (i = 0; i < g_top && !bad[0]; i++) {
		if (!g_live[i] || stat(g_maps[i].key, &sb) != 0)
			continue;
		fx_file_id_of(&now, &sb);
		if (now.dev == g_maps[i].id.dev && now.ino == g_maps[i].id.ino &&
		    !fx_file_id_eq(&now, &g_maps[i].id))
			snprintf(bad, sizeof(bad), "%s", g_maps[i].path);
	}
	pthread_mutex_unlock(&g_lock);
	return bad[0] ? changed(bad, err) : 0;
}

bool fx_map_find(uint64_t dev, uint64_t ino, char *buf, size_t n)
{
	bool hit = false;
	size_t i;

	pthread_mutex_lock(&g_lock);
	for (i = 0; i < g_top && !hit; i++)
		if (g_live[i] && g_maps[i].id.dev == dev && g_maps[i].id.ino == ino) {
			hit = true;
			if (n)
				snprintf(buf, n, "%s", g_maps[i].path);
		}
	pthread_mutex_unlock(&g_lock);
	return hit;
}

const char *fx_map_path_at(const void *addr)
{
	uintptr_t a = (uintptr_t)addr;
	size_t i, top = __atomic_load_n(&g_top, __ATOMIC_SEQ_CST);

	/* no lock: the faulting mapping is live while a thread reads it */
	for (i = 0; i < top && i < MAX_MAPS; i++)
		if (g_live[i] && a >= g_maps[i].base && a - g_maps[i].base < g_maps[i].size)
			return g_maps[i].path;
	return NULL;
}
