/* safetensors: validating reader (mmap or memory), sharded sets, streaming
 * writer. Layout: 8-byte little-endian header length N, N bytes of JSON
 * (space padded), then the data area covered by the tensors exactly. */
#include "fx-st.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "fx-hash.h"

#include "fx-io.h"
#include "fx-map.h"

#define META_KEY "__metadata__"
#define JSON_FLAGS (JSON_SORT_KEYS | JSON_COMPACT)

/* ---- shared helpers --------------------------------------------------- */

static int nomem(struct fx_err *err)
{
	return fx_error(err, FX_E_NOMEM, "out of memory");
}

static void get_le64(uint64_t *v, const uint8_t *p)
{
	int i;

	*v = 0;
	for (i = 7; i >= 0; i--)
		*v = (*v << 8) | p[i];
}

static void put_le64(uint8_t *p, uint64_t v)
{
	int i;

	for (i = 0; i < 8; i++)
		p[i] = (uint8_t)(v >> (8 * i));
}

/* Appends " (what 'arg')" to an error message. */
static void err_append(struct fx_err *err, const char *what, const char *arg)
{
	size_t n;

	if (!err)
		return;
	n = strlen(err->msg);
	if (n < sizeof(err->msg) - 1)
		snprintf(err->msg + n, sizeof(err->msg) - n, " (%s '%s')", what, arg);
}

/* qsort that accepts an empty (NULL) array. */
static void sort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *))
{
	if (n > 1)
		qsort(base, n, size, cmp);
}

static bool ends_with(const char *s, const char *suffix)
{
	size_t a = strlen(s), b = strlen(suffix);

	return a >= b && !strcmp(s + a - b, suffix);
}

/* {"dtype":..,"shape":[..],"data_offsets":[b,e]} */
static json_t *tensor_json(enum fx_dtype dt, int ndim, const int64_t *shape,
			   uint64_t begin, uint64_t end)
{
	json_t *o = json_object(), *s = json_array(), *d = json_array();
	int i, bad = !o || !s || !d;

	for (i = 0; !bad && i < ndim; i++)
		bad |= json_array_append_new(s, json_integer(shape[i]));
	if (!bad)
		bad |= json_array_append_new(d, json_integer((json_int_t)begin)) |
		       json_array_append_new(d, json_integer((json_int_t)end));
	if (!bad)
		bad |= json_object_set_new(o, "dtype", json_string(fx_dtype_name(dt))) |
		       json_object_set(o, "shape", s) | json_object_set(o, "data_offsets", d);
	json_decref(s);
	json_decref(d);
	if (bad) {
		json_decref(o);
		return NULL;
	}
	return o;
}

/* ---- reader ------------------------------------------------------------ */

struct ent {
	struct fx_tensor t;
	char *name;
	uint64_t begin, end;
};

struct kv {
	char *key, *val;
};

struct fx_st {
	char *path;
	const uint8_t *base;
	size_t size;
	bool mapped;
	struct fx_file_id id;   /* of the file mapped, when mapped */
	uint64_t hdr_len;
	size_t n;
	struct ent *ents;       /* by offset */
	struct ent **byname;
	size_t nmeta;
	struct kv *meta;        /* by key */
};

static int cmp_offset(const void *a, const void *b)
{
	const struct ent *x = a, *y = b;

	if (x->begin != y->begin)
		return x->begin < y->begin ? -1 : 1;
	if (x->end != y->end)
		return x->end < y->end ? -1 : 1;
	return strcmp(x->name, y->name);
}

static int cmp_entp_name(const void *a, const void *b)
{
	return strcmp((*(struct ent *const *)a)->name, (*(struct ent *const *)b)->name);
}

static int cmp_kv(const void *a, const void *b)
{
	return strcmp(((const struct kv *)a)->key, ((const struct kv *)b)->key);
}

static int parse_meta(struct fx_st *st, json_t *m, struct fx_err *err)
{
	const char *key;
	json_t *v;

	if (!json_is_object(m))
		return fx_error(err, FX_E_FORMAT, "'%s': __metadata__ is not an object", st->path);
	st->meta = calloc(json_object_size(m) + 1, sizeof(*st->meta));
	if (!st->meta)
		return nomem(err);
	json_object_foreach(m, key, v) {
		struct kv *e = &st->meta[st->nmeta];

		if (!json_is_string(v))
			return fx_error(err, FX_E_FORMAT, "'%s': metadata '%s' is not a string",
					st->path, key);
		e->key = strdup(key);
		e->val = strdup(json_string_value(v));
		st->nmeta++;
		if (!e->key || !e->val)
			return nomem(err);
	}
	sort(st->meta, st->nmeta, sizeof(*st->meta), cmp_kv);
	return 0;
}

/* Checks one tensor entry and fills e (name already set). */
static int parse_entry(struct fx_st *st, struct ent *e, json_t *v, uint64_t data_len,
		       struct fx_err *err)
{
	const char *f = st->path, *name = e->name;
	json_t *dt, *shape, *offs, *x;
	char sbuf[256];
	uint64_t numel, need;
	json_int_t b, en;
	size_t i, nd;
	int d;

	if (!json_is_object(v))
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' is not a JSON object", f, name);
	dt = json_object_get(v, "dtype");
	if (!json_is_string(dt))
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has no dtype string", f, name);
	d = fx_dtype_from_name(json_string_value(dt));
	if (d < 0)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has unknown dtype '%s'",
				f, name, json_string_value(dt));
	e->t.dtype = (enum fx_dtype)d;

	shape = json_object_get(v, "shape");
	if (!json_is_array(shape))
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has no shape array", f, name);
	nd = json_array_size(shape);
	if (nd > FX_MAX_DIMS)
		return fx_error(err, FX_E_UNSUPPORTED,
				"'%s': tensor '%s' has %zu dimensions, at most %d are supported",
				f, name, nd, FX_MAX_DIMS);
	e->t.ndim = (int)nd;
	json_array_foreach(shape, i, x) {
		if (!json_is_integer(x))
			return fx_error(err, FX_E_FORMAT,
					"'%s': tensor '%s' has a shape entry that is not an integer",
					f, name);
		if (json_integer_value(x) < 0)
			return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has negative dimension %lld",
					f, name, (long long)json_integer_value(x));
		e->t.shape[i] = json_integer_value(x);
	}
	fx_shape_str(sbuf, sizeof(sbuf), e->t.ndim, e->t.shape);
	if (!fx_shape_numel(e->t.ndim, e->t.shape, &numel) ||
	    numel > UINT64_MAX / fx_dtype_size(e->t.dtype))
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' shape %s of %s overflows 64 bits",
				f, name, sbuf, fx_dtype_name(e->t.dtype));
	need = numel * fx_dtype_size(e->t.dtype);

	offs = json_object_get(v, "data_offsets");
	if (!json_is_array(offs) || json_array_size(offs) != 2 ||
	    !json_is_integer(json_array_get(offs, 0)) || !json_is_integer(json_array_get(offs, 1)))
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has no data_offsets [begin,end]",
				f, name);
	b = json_integer_value(json_array_get(offs, 0));
	en = json_integer_value(json_array_get(offs, 1));
	if (b < 0 || en < 0 || b > en)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has bad data_offsets [%lld,%lld]",
				f, name, (long long)b, (long long)en);
	e->begin = (uint64_t)b;
	e->end = (uint64_t)en;
	if (e->end > data_len)
		return fx_error(err, FX_E_FORMAT,
				"'%s': tensor '%s' data_offsets [%llu,%llu] out of bounds (data area is %llu bytes)",
				f, name, (unsigned long long)e->begin, (unsigned long long)e->end,
				(unsigned long long)data_len);
	if (e->end - e->begin != need)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has %llu bytes, shape %s of %s needs %llu",
				f, name, (unsigned long long)(e->end - e->begin), sbuf,
				fx_dtype_name(e->t.dtype), (unsigned long long)need);
	e->t.nbytes = (size_t)need;
	return 0;
}

/* Sorted by offset: no overlap, no hole, no trailing bytes. */
static int check_layout(struct fx_st *st, uint64_t data_len, struct fx_err *err)
{
	uint64_t at = 0;
	size_t i;

	for (i = 0; i < st->n; i++) {
		const struct ent *e = &st->ents[i];

		if (e->begin < at)
			return fx_error(err, FX_E_FORMAT,
					"'%s': tensors '%s' [%llu,%llu] and '%s' [%llu,%llu] overlap",
					st->path, st->ents[i - 1].name,
					(unsigned long long)st->ents[i - 1].begin,
					(unsigned long long)st->ents[i - 1].end, e->name,
					(unsigned long long)e->begin, (unsigned long long)e->end);
		if (e->begin > at)
			return fx_error(err, FX_E_FORMAT,
					"'%s': hole of %llu bytes at data offset %llu before tensor '%s'",
					st->path, (unsigned long long)(e->begin - at),
					(unsigned long long)at, e->name);
		at = e->end;
	}
	if (at != data_len)
		return fx_error(err, FX_E_FORMAT, "'%s': %llu trailing bytes after the last tensor",
				st->path, (unsigned long long)(data_len - at));
	return 0;
}

static int parse(struct fx_st *st, struct fx_err *err)
{
	const char *f = st->path, *key;
	const uint8_t *hdr = st->base + 8;
	json_t *root = NULL, *v;
	json_error_t jerr;
	uint64_t data_len;
	size_t i;
	int ret = 0;

	if (st->size < 8) {
		ret = fx_error(err, FX_E_FORMAT,
			       "'%s': file too small for a safetensors header (%zu bytes)", f, st->size);
		goto out;
	}
	get_le64(&st->hdr_len, st->base);
	if (st->hdr_len > FX_ST_MAX_HEADER) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': header length %llu exceeds the 100 MiB limit",
			       f, (unsigned long long)st->hdr_len);
		goto out;
	}
	if (st->hdr_len > st->size - 8) {
		ret = fx_error(err, FX_E_FORMAT,
			       "'%s': header length %llu runs past the end of the file (%zu bytes)",
			       f, (unsigned long long)st->hdr_len, st->size);
		goto out;
	}
	if (st->hdr_len == 0 || hdr[0] != '{') {
		ret = fx_error(err, FX_E_FORMAT, "'%s': header does not start with '{'", f);
		goto out;
	}
	data_len = st->size - 8 - st->hdr_len;

	root = json_loadb((const char *)hdr, st->hdr_len, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		enum json_error_code code = json_error_code(&jerr);

		if (code == json_error_invalid_utf8)
			ret = fx_error(err, FX_E_FORMAT, "'%s': header is not valid UTF-8 at byte %d",
				       f, jerr.position);
		else if (code == json_error_duplicate_key)
			ret = fx_error(err, FX_E_FORMAT, "'%s': duplicate name in header at byte %d: %s",
				       f, jerr.position, jerr.text);
		else
			ret = fx_error(err, FX_E_FORMAT, "'%s': invalid header JSON at byte %d: %s",
				       f, jerr.position, jerr.text);
		goto out;
	}
	if (!json_is_object(root)) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': header is not a JSON object", f);
		goto out;
	}

	st->ents = calloc(json_object_size(root) + 1, sizeof(*st->ents));
	if (!st->ents) {
		ret = nomem(err);
		goto out;
	}
	json_object_foreach(root, key, v) {
		struct ent *e;

		if (!strcmp(key, META_KEY)) {
			ret = parse_meta(st, v, err);
			if (ret < 0)
				goto out;
			continue;
		}
		e = &st->ents[st->n++];
		e->name = strdup(key);
		if (!e->name) {
			ret = nomem(err);
			goto out;
		}
		e->t.name = e->name;
		ret = parse_entry(st, e, v, data_len, err);
		if (ret < 0)
			goto out;
	}
	sort(st->ents, st->n, sizeof(*st->ents), cmp_offset);
	ret = check_layout(st, data_len, err);
	if (ret < 0)
		goto out;
	st->byname = malloc((st->n + 1) * sizeof(*st->byname));
	if (!st->byname) {
		ret = nomem(err);
		goto out;
	}
	for (i = 0; i < st->n; i++) {
		st->ents[i].t.data = hdr + st->hdr_len + st->ents[i].begin;
		st->byname[i] = &st->ents[i];
	}
	sort(st->byname, st->n, sizeof(*st->byname), cmp_entp_name);
out:
	json_decref(root);
	return ret;
}

static struct fx_st *st_alloc(const char *name)
{
	struct fx_st *st = calloc(1, sizeof(*st));

	if (st && !(st->path = strdup(name ? name : "<memory>"))) {
		free(st);
		st = NULL;
	}
	return st;
}

/* Read-only file mappings of open files are registered (common/fx-map.c).
 * fx_tensor_release unmaps pages only inside one of them: MADV_DONTNEED on a
 * PROT_READ private file mapping drops our page-table entries (resident
 * memory) and leaves the pages in the page cache for the next stage, while on
 * a caller's buffer (fx_st_open_mem) it would zero the data. (MADV_PAGEOUT
 * evicted the input from the page cache, so every stage re-read its model
 * from disk.) */

int fx_st_open_mem(struct fx_st **out, const void *buf, size_t len, const char *name,
		   struct fx_err *err)
{
	struct fx_st *st;
	int ret;

	*out = NULL;
	if (!buf && len)
		return fx_error(err, FX_E_ARG, "no buffer for '%s'", name ? name : "<memory>");
	st = st_alloc(name);
	if (!st)
		return nomem(err);
	st->base = buf;
	st->size = len;
	ret = parse(st, err);
	if (ret < 0) {
		fx_st_close(st);
		return ret;
	}
	*out = st;
	return 0;
}

int fx_st_open(struct fx_st **out, const char *path, struct fx_err *err)
{
	struct fx_st *st = NULL;
	struct stat sb;
	void *map;
	int fd = -1, ret = 0;

	*out = NULL;
	st = st_alloc(path);
	if (!st) {
		ret = nomem(err);
		goto out;
	}
	/* O_NONBLOCK: a FIFO given as an input is refused below, not waited on */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	if (fd < 0 || fstat(fd, &sb) != 0) {
		ret = fx_error(err, FX_E_IO, "cannot open '%s': %s", path, strerror(errno));
		goto out;
	}
	if (!S_ISREG(sb.st_mode)) {
		ret = fx_error(err, FX_E_IO, "'%s': not a regular file", path);
		goto out;
	}
	if ((uint64_t)sb.st_size > SIZE_MAX) {
		ret = fx_error(err, FX_E_IO, "'%s': file too large to map", path);
		goto out;
	}
	st->size = (size_t)sb.st_size;
	if (st->size >= 8) {
		map = mmap(NULL, st->size, PROT_READ, MAP_PRIVATE, fd, 0);
		if (map == MAP_FAILED) {
			ret = fx_error(err, FX_E_IO, "cannot map '%s': %s", path, strerror(errno));
			goto out;
		}
		st->base = map;
		st->mapped = true;
		fx_file_id_of(&st->id, &sb);
		fx_map_add(map, st->size, path, &sb);
	}
	ret = parse(st, err);
out:
	if (fd >= 0)
		close(fd);
	if (ret < 0)
		fx_st_close(st);
	else
		*out = st;
	return ret;
}

void fx_st_close(struct fx_st *st)
{
	size_t i;

	if (!st)
		return;
	if (st->mapped) {
		fx_map_del(st->base);
		munmap((void *)(uintptr_t)st->base, st->size);
	}
	if (st->ents)
		for (i = 0; i < st->n; i++)
			free(st->ents[i].name);
	for (i = 0; i < st->nmeta; i++) {
		free(st->meta[i].key);
		free(st->meta[i].val);
	}
	free(st->ents);
	free(st->byname);
	free(st->meta);
	free(st->path);
	free(st);
}

int fx_st_check_same(const struct fx_st *st, struct fx_err *err)
{
	return st->mapped ? fx_map_check_same(st->path, &st->id, err) : 0;
}

const char *fx_st_path(const struct fx_st *st)
{
	return st->path;
}

size_t fx_st_count(const struct fx_st *st)
{
	return st->n;
}

const struct fx_tensor *fx_st_at(const struct fx_st *st, size_t i)
{
	return i < st->n ? &st->ents[i].t : NULL;
}

const struct fx_tensor *fx_st_find(const struct fx_st *st, const char *name)
{
	size_t lo = 0, hi = st->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, st->byname[mid]->name);

		if (!c)
			return &st->byname[mid]->t;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

const char *fx_st_meta(const struct fx_st *st, const char *key)
{
	size_t lo = 0, hi = st->nmeta;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(key, st->meta[mid].key);

		if (!c)
			return st->meta[mid].val;
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

size_t fx_st_meta_count(const struct fx_st *st)
{
	return st->nmeta;
}

void fx_st_meta_at(const struct fx_st *st, size_t i, const char **key, const char **val)
{
	if (key)
		*key = i < st->nmeta ? st->meta[i].key : NULL;
	if (val)
		*val = i < st->nmeta ? st->meta[i].val : NULL;
}

uint64_t fx_st_header_len(const struct fx_st *st)
{
	return st->hdr_len;
}

uint64_t fx_st_file_size(const struct fx_st *st)
{
	return st->size;
}

/* hdr_len bytes of JSON (no 8-byte prefix), space padded, NUL after. */
int fx_st_header_build(char **out, size_t hdr_len, const struct fx_st *st,
		       size_t nmeta, const char *const *keys, const char *const *vals,
		       struct fx_err *err)
{
	json_t *root = json_object(), *meta = json_object();
	char *text = NULL;
	size_t i, len;
	int ret = 0;

	*out = NULL;
	if (!root || !meta) {
		ret = nomem(err);
		goto out;
	}
	for (i = 0; i < st->n; i++) {
		const struct ent *e = &st->ents[i];

		if (json_object_set_new(root, e->name, tensor_json(e->t.dtype, e->t.ndim, e->t.shape,
								   e->begin, e->end))) {
			ret = nomem(err);
			goto out;
		}
	}
	for (i = 0; i < nmeta; i++) {
		if (!keys[i] || !vals[i] || json_object_set_new(meta, keys[i], json_string(vals[i]))) {
			ret = fx_error(err, FX_E_ARG, "'%s': metadata '%s' is not a valid UTF-8 string",
				       st->path, keys[i] ? keys[i] : "(null)");
			goto out;
		}
	}
	if (json_object_size(meta) && json_object_set(root, META_KEY, meta)) {
		ret = nomem(err);
		goto out;
	}
	text = json_dumps(root, JSON_FLAGS);
	if (!text) {
		ret = nomem(err);
		goto out;
	}
	len = strlen(text);
	if (len > hdr_len) {
		ret = fx_error(err, FX_E_ARG, "'%s': new header needs %zu bytes, %zu available",
			       st->path, len, hdr_len);
		goto out;
	}
	*out = malloc(hdr_len + 1);
	if (!*out) {
		ret = nomem(err);
		goto out;
	}
	memcpy(*out, text, len);
	memset(*out + len, ' ', hdr_len - len);
	(*out)[hdr_len] = '\0';
out:
	free(text);
	json_decref(meta);
	json_decref(root);
	return ret;
}

/* ---- sharded sets ------------------------------------------------------ */

struct sref {
	const struct fx_tensor *t;
	size_t file;
};

struct fx_stset {
	char *path;
	struct fx_st **files;
	size_t nfiles;
	struct sref *all;   /* by name */
	size_t n;
};

static int cmp_sref(const void *a, const void *b)
{
	const struct sref *x = a, *y = b;
	int c = strcmp(x->t->name, y->t->name);

	if (c)
		return c;
	return x->file < y->file ? -1 : x->file > y->file;
}

static int cmp_strp(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/* "dir/name", or name alone when dir is empty. */
static char *join(const char *dir, size_t dlen, const char *name)
{
	size_t n = strlen(name);
	char *p = malloc(dlen + n + 2);

	if (!p)
		return NULL;
	memcpy(p, dir, dlen);
	if (dlen && dir[dlen - 1] != '/')
		p[dlen++] = '/';
	memcpy(p + dlen, name, n + 1);
	return p;
}

static bool safe_rel(const char *s)
{
	const char *p = s;

	if (!*s || *s == '/')
		return false;
	while (p) {
		if (!strncmp(p, "..", 2) && (p[2] == '/' || !p[2]))
			return false;
		p = strchr(p, '/');
		if (p)
			p++;
	}
	return true;
}

static const struct sref *set_lookup(const struct fx_stset *set, const char *name)
{
	size_t lo = 0, hi = set->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, set->all[mid].t->name);

		if (!c)
			return &set->all[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

/* Collects every tensor of every file, sorted by name; rejects duplicates. */
static int set_index(struct fx_stset *set, struct fx_err *err)
{
	size_t i, j, total = 0;

	for (i = 0; i < set->nfiles; i++)
		total += fx_st_count(set->files[i]);
	set->all = malloc((total + 1) * sizeof(*set->all));
	if (!set->all)
		return nomem(err);
	for (i = 0; i < set->nfiles; i++)
		for (j = 0; j < fx_st_count(set->files[i]); j++) {
			set->all[set->n].t = fx_st_at(set->files[i], j);
			set->all[set->n++].file = i;
		}
	sort(set->all, set->n, sizeof(*set->all), cmp_sref);
	for (i = 1; i < set->n; i++)
		if (!strcmp(set->all[i].t->name, set->all[i - 1].t->name))
			return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' is in two shards: '%s' and '%s'",
					set->path, set->all[i].t->name,
					fx_st_path(set->files[set->all[i - 1].file]),
					fx_st_path(set->files[set->all[i].file]));
	return 0;
}

static int open_index(struct fx_stset *set, const char *path, struct fx_err *err)
{
	json_t *root = NULL, *wm, *v;
	json_error_t jerr;
	const char *key, *slash = strrchr(path, '/');
	size_t dlen = slash ? (size_t)(slash - path) + 1 : 0, nsh = 0, i, u;
	const char **shards = NULL;
	int ret = 0;

	root = json_load_file(path, JSON_REJECT_DUPLICATES, &jerr);
	if (!root) {
		if (json_error_code(&jerr) == json_error_cannot_open_file)
			ret = fx_error(err, FX_E_IO, "cannot open '%s': %s", path, jerr.text);
		else
			ret = fx_error(err, FX_E_FORMAT, "'%s': invalid index JSON at line %d: %s",
				       path, jerr.line, jerr.text);
		goto out;
	}
	wm = json_object_get(root, "weight_map");
	if (!json_is_object(wm)) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': index has no weight_map object", path);
		goto out;
	}
	if (!json_object_size(wm)) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': index weight_map is empty", path);
		goto out;
	}
	shards = malloc(json_object_size(wm) * sizeof(*shards));
	if (!shards) {
		ret = nomem(err);
		goto out;
	}
	json_object_foreach(wm, key, v) {
		if (!json_is_string(v)) {
			ret = fx_error(err, FX_E_FORMAT, "'%s': weight_map entry '%s' is not a string",
				       path, key);
			goto out;
		}
		if (!safe_rel(json_string_value(v))) {
			ret = fx_error(err, FX_E_FORMAT,
				       "'%s': shard '%s' of tensor '%s' is not a relative path below the index",
				       path, json_string_value(v), key);
			goto out;
		}
		shards[nsh++] = json_string_value(v);
	}
	sort(shards, nsh, sizeof(*shards), cmp_strp);
	for (i = 0, u = 0; i < nsh; i++)
		if (!u || strcmp(shards[u - 1], shards[i]))
			shards[u++] = shards[i];
	nsh = u;
	set->files = calloc(nsh, sizeof(*set->files));
	if (!set->files) {
		ret = nomem(err);
		goto out;
	}
	for (i = 0; i < nsh; i++) {
		char *sp = join(path, dlen, shards[i]);

		if (!sp) {
			ret = nomem(err);
			goto out;
		}
		ret = fx_st_open(&set->files[i], sp, err);
		free(sp);
		if (ret < 0) {
			err_append(err, "shard listed in", path);
			goto out;
		}
		set->nfiles++;
	}
	/* every mapped tensor is in its shard */
	json_object_foreach(wm, key, v) {
		const char **hit = bsearch(&(const char *){ json_string_value(v) }, shards, nsh,
					   sizeof(*shards), cmp_strp);
		size_t f = (size_t)(hit - shards), k;

		if (fx_st_find(set->files[f], key))
			continue;
		ret = fx_error(err, FX_E_FORMAT, "'%s': index puts tensor '%s' in '%s' but that shard does not hold it",
			       path, key, fx_st_path(set->files[f]));
		for (k = 0; k < nsh; k++)
			if (fx_st_find(set->files[k], key))
				err_append(err, "it is in", fx_st_path(set->files[k]));
		goto out;
	}
	ret = set_index(set, err);
	if (ret < 0)
		goto out;
	/* and every shard tensor is mapped */
	for (i = 0; i < set->n; i++)
		if (!json_object_get(wm, set->all[i].t->name)) {
			ret = fx_error(err, FX_E_FORMAT,
				       "'%s': tensor '%s' in shard '%s' is missing from the weight_map",
				       path, set->all[i].t->name,
				       fx_st_path(set->files[set->all[i].file]));
			goto out;
		}
out:
	free(shards);
	json_decref(root);
	return ret;
}

static int open_single(struct fx_stset *set, const char *path, struct fx_err *err)
{
	int ret;

	set->files = calloc(1, sizeof(*set->files));
	if (!set->files)
		return nomem(err);
	ret = fx_st_open(&set->files[0], path, err);
	if (ret < 0)
		return ret;
	set->nfiles = 1;
	return set_index(set, err);
}

/* A directory: exactly one index, else exactly one .safetensors file. */
static int open_dir(struct fx_stset *set, const char *path, struct fx_err *err)
{
	DIR *d = opendir(path);
	struct dirent *de;
	char **idx = NULL, **st = NULL, *p = NULL, list[512];
	size_t nidx = 0, nst = 0, cap = 0, i, used = 0;
	int ret = 0;

	if (!d)
		return fx_error(err, FX_E_IO, "cannot open directory '%s': %s", path, strerror(errno));
	while ((de = readdir(d))) {
		bool is_idx = ends_with(de->d_name, ".safetensors.index.json");
		char ***arr = is_idx ? &idx : &st;
		size_t *n = is_idx ? &nidx : &nst;
		char **grown;

		if (de->d_name[0] == '.' || (!is_idx && !ends_with(de->d_name, ".safetensors")))
			continue;
		if (nidx + nst + 1 > cap) {
			cap = cap ? 2 * cap : 16;
			grown = realloc(idx, cap * sizeof(*idx));
			if (grown)
				idx = grown;
			grown = grown ? realloc(st, cap * sizeof(*st)) : NULL;
			if (grown)
				st = grown;
			if (!grown) {
				ret = nomem(err);
				goto out;
			}
		}
		if (!((*arr)[*n] = strdup(de->d_name))) {
			ret = nomem(err);
			goto out;
		}
		(*n)++;
	}
	sort(idx, nidx, sizeof(*idx), cmp_strp);
	sort(st, nst, sizeof(*st), cmp_strp);
	if (nidx > 1 || (!nidx && nst > 1)) {
		char **arr = nidx > 1 ? idx : st;
		size_t n = nidx > 1 ? nidx : nst;

		list[0] = '\0';
		for (i = 0; i < n && used < sizeof(list) - 1; i++) {
			int k = snprintf(list + used, sizeof(list) - used, "%s'%s'", i ? ", " : "", arr[i]);
			if (k < 0)
				break;
			used += (size_t)k;
		}
		ret = fx_error(err, FX_E_FORMAT, nidx > 1 ? "'%s': directory holds %zu indexes: %s"
				: "'%s': directory holds %zu .safetensors files and no index: %s",
			       path, n, list);
		goto out;
	}
	if (!nidx && !nst) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': directory holds no .safetensors file or index", path);
		goto out;
	}
	p = join(path, strlen(path), nidx ? idx[0] : st[0]);
	if (!p) {
		ret = nomem(err);
		goto out;
	}
	ret = nidx ? open_index(set, p, err) : open_single(set, p, err);
out:
	closedir(d);
	for (i = 0; i < nidx; i++)
		free(idx[i]);
	for (i = 0; i < nst; i++)
		free(st[i]);
	free(idx);
	free(st);
	free(p);
	return ret;
}

int fx_stset_open(struct fx_stset **out, const char *path, struct fx_err *err)
{
	struct fx_stset *set = calloc(1, sizeof(*set));
	struct stat sb;
	int ret;

	*out = NULL;
	if (!set || !(set->path = strdup(path))) {
		free(set);
		return nomem(err);
	}
	if (stat(path, &sb) != 0)
		ret = fx_error(err, FX_E_IO, "cannot open '%s': %s", path, strerror(errno));
	else if (S_ISDIR(sb.st_mode))
		ret = open_dir(set, path, err);
	else if (ends_with(path, ".json"))
		ret = open_index(set, path, err);
	else
		ret = open_single(set, path, err);
	if (ret < 0) {
		fx_stset_close(set);
		return ret;
	}
	*out = set;
	return 0;
}

void fx_stset_close(struct fx_stset *set)
{
	size_t i;

	if (!set)
		return;
	for (i = 0; i < set->nfiles; i++)
		fx_st_close(set->files[i]);
	free(set->files);
	free(set->all);
	free(set->path);
	free(set);
}

size_t fx_stset_nfiles(const struct fx_stset *set)
{
	return set->nfiles;
}

const struct fx_st *fx_stset_file(const struct fx_stset *set, size_t i)
{
	return i < set->nfiles ? set->files[i] : NULL;
}

size_t fx_stset_count(const struct fx_stset *set)
{
	return set->n;
}

const struct fx_tensor *fx_stset_at(const struct fx_stset *set, size_t i)
{
	return i < set->n ? set->all[i].t : NULL;
}

const struct fx_tensor *fx_stset_find(const struct fx_stset *set, const char *name)
{
	const struct sref *r = set_lookup(set, name);

	return r ? r->t : NULL;
}

const char *fx_stset_path_of(const struct fx_stset *set, const char *name)
{
	const struct sref *r = set_lookup(set, name);

	return r ? fx_st_path(set->files[r->file]) : NULL;
}

/* ---- writer ------------------------------------------------------------ */

struct wt {
	char *name;
	enum fx_dtype dt;
	int ndim;
	int64_t shape[FX_MAX_DIMS];
	uint64_t nbytes, off, done;
	uint32_t crc;
};

/* Tensor bytes are copied into a ring of slots and written by a thread, so
 * that the kernel's copy into the page cache overlaps the next layer's
 * work; writeback is started per slot so the final fsync has little left. */
#define STW_SLOTS 8
#define STW_SLOT ((size_t)4 << 20)

struct stw_async {
	pthread_t th;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	unsigned char *pool;              /* STW_SLOTS * STW_SLOT */
	struct { uint64_t off; size_t n; } job[STW_SLOTS];
	unsigned head, tail;              /* written / queued slots (tail - head in flight) */
	bool stop, failed, discard;       /* discard: freed unfinished, skip what is queued */
	struct fx_err err;                /* the first failed write */
};

struct fx_stw {
	struct stw_async *as;             /* NULL: synchronous writes */
	struct fx_err failed;             /* a write that failed: every later call reports it */
	unsigned flags;
	size_t spare;
	struct wt *t;         /* layout order after begin */
	size_t n, cap;
	struct wt **byname;
	json_t *meta;
	int fd;
	char path[512];
	uint64_t hdr_len, total;
	bool begun, finished;
};

static int cmp_wt_layout(const void *a, const void *b)
{
	const struct wt *x = a, *y = b;
	size_t sx = fx_dtype_size(x->dt), sy = fx_dtype_size(y->dt);

	if (sx != sy)
		return sx > sy ? -1 : 1;
	return strcmp(x->name, y->name);
}

static int cmp_wtp_name(const void *a, const void *b)
{
	return strcmp((*(struct wt *const *)a)->name, (*(struct wt *const *)b)->name);
}

int fx_stw_new(struct fx_stw **out, unsigned flags, struct fx_err *err)
{
	struct fx_stw *w = calloc(1, sizeof(*w));

	*out = NULL;
	if (!w || !(w->meta = json_object())) {
		free(w);
		return nomem(err);
	}
	w->flags = flags;
	w->fd = -1;
	snprintf(w->path, sizeof(w->path), "<unstarted>");
	*out = w;
	return 0;
}

static void async_stop(struct fx_stw *w, bool discard);

void fx_stw_free(struct fx_stw *w)
{
	size_t i;

	if (!w)
		return;
	async_stop(w, true);
	for (i = 0; i < w->n; i++)
		free(w->t[i].name);
	free(w->t);
	free(w->byname);
	json_decref(w->meta);
	free(w);
}

int fx_stw_meta(struct fx_stw *w, const char *key, const char *val, struct fx_err *err)
{
	if (!key || !val)
		return fx_error(err, FX_E_ARG, "metadata key and value must be set");
	if (w->finished)
		return fx_error(err, FX_E_ARG, "'%s': metadata '%s' set after finish", w->path, key);
	if (json_object_set_new(w->meta, key, json_string(val)))
		return fx_error(err, FX_E_ARG, "metadata '%s' is not a valid UTF-8 string", key);
	return 0;
}

void fx_stw_reserve(struct fx_stw *w, size_t spare)
{
	w->spare = spare;
}

int fx_stw_add(struct fx_stw *w, const char *name, enum fx_dtype dt,
	       int ndim, const int64_t *shape, struct fx_err *err)
{
	struct wt *e;
	json_t *probe;
	uint64_t numel;
	char sbuf[256];

	if (w->begun)
		return fx_error(err, FX_E_ARG, "tensor '%s' added after begin", name ? name : "(null)");
	if (!name || !strcmp(name, META_KEY))
		return fx_error(err, FX_E_ARG, "bad tensor name '%s'", name ? name : "(null)");
	probe = json_string(name);
	if (!probe)
		return fx_error(err, FX_E_ARG, "tensor name '%s' is not valid UTF-8", name);
	json_decref(probe);
	if ((unsigned)dt >= FX_DTYPE_COUNT)
		return fx_error(err, FX_E_ARG, "tensor '%s' has bad dtype %d", name, (int)dt);
	if (ndim < 0 || ndim > FX_MAX_DIMS)
		return fx_error(err, FX_E_ARG, "tensor '%s' has %d dimensions", name, ndim);
	if (!fx_shape_numel(ndim, shape, &numel) || numel > (uint64_t)INT64_MAX / fx_dtype_size(dt))
		return fx_error(err, FX_E_ARG, "tensor '%s' has bad shape %s", name,
				fx_shape_str(sbuf, sizeof(sbuf), ndim, shape));
	if (w->n == w->cap) {
		size_t cap = w->cap ? 2 * w->cap : 64;
		struct wt *grown = realloc(w->t, cap * sizeof(*grown));

		if (!grown)
			return nomem(err);
		w->t = grown;
		w->cap = cap;
	}
	e = &w->t[w->n];
	memset(e, 0, sizeof(*e));
	if (!(e->name = strdup(name)))
		return nomem(err);
	e->dt = dt;
	e->ndim = ndim;
	if (ndim)
		memcpy(e->shape, shape, (size_t)ndim * sizeof(*shape));
	e->nbytes = numel * fx_dtype_size(dt);
	w->n++;
	return 0;
}

/* Header JSON with the current metadata (crc values or placeholders). */
static int stw_header(struct fx_stw *w, bool placeholder, char **text, struct fx_err *err)
{
	json_t *root = json_object(), *crc = NULL;
	char hex[16], *crcs = NULL;
	size_t i;
	int ret = 0;

	*text = NULL;
	if (!root)
		return nomem(err);
	if (w->flags & FX_STW_CRC32) {
		crc = json_object();
		for (i = 0; crc && i < w->n; i++) {
			snprintf(hex, sizeof(hex), "%08x", placeholder ? 0u : (unsigned)w->t[i].crc);
			if (json_object_set_new(crc, w->t[i].name, json_string(hex)))
				break;
		}
		crcs = crc && i == w->n ? json_dumps(crc, JSON_FLAGS) : NULL;
		if (!crcs || json_object_set_new(w->meta, "fx.crc32", json_string(crcs))) {
			ret = nomem(err);
			goto out;
		}
	}
	for (i = 0; i < w->n; i++) {
		const struct wt *e = &w->t[i];

		if (json_object_set_new(root, e->name, tensor_json(e->dt, e->ndim, e->shape, e->off,
								   e->off + e->nbytes))) {
			ret = nomem(err);
			goto out;
		}
	}
	if (json_object_size(w->meta) && json_object_set(root, META_KEY, w->meta)) {
		ret = nomem(err);
		goto out;
	}
	*text = json_dumps(root, JSON_FLAGS);
	if (!*text)
		ret = nomem(err);
out:
	free(crcs);
	json_decref(crc);
	json_decref(root);
	return ret;
}

static int pwrite_loop(struct fx_stw *w, const void *buf, size_t n, uint64_t off,
		       struct fx_err *err)
{
	const uint8_t *p = buf;

	while (n) {
		ssize_t k;

		if (fx_fault_io_hit()) {
			errno = ENOSPC;
			k = -1;
		} else {
			k = pwrite(w->fd, p, n, (off_t)off);
		}
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return fx_error(err, FX_E_IO, "'%s': write failed at offset %llu: %s", w->path,
					(unsigned long long)off, k < 0 ? strerror(errno) : "no progress");
		p += k;
		off += (uint64_t)k;
		n -= (size_t)k;
	}
	return 0;
}

static void *async_main(void *arg)
{
	struct fx_stw *w = arg;
	struct stw_async *a = w->as;

	pthread_mutex_lock(&a->mu);
	for (;;) {
		unsigned slot;
		struct fx_err e = { 0 };
		int ret = 0;

		while (a->head == a->tail && !a->stop)
			pthread_cond_wait(&a->cv, &a->mu);
		if (a->head == a->tail)
			break;
		slot = a->head % STW_SLOTS;
		pthread_mutex_unlock(&a->mu);
		if (!a->failed && !a->discard) {
			ret = pwrite_loop(w, a->pool + slot * STW_SLOT, a->job[slot].n,
					  a->job[slot].off, &e);
#ifdef SYNC_FILE_RANGE_WRITE
			if (ret == 0)
				sync_file_range(w->fd, (off_t)a->job[slot].off, (off_t)a->job[slot].n,
						SYNC_FILE_RANGE_WRITE);
#endif
		}
		pthread_mutex_lock(&a->mu);
		if (ret < 0 && !a->failed) {
			a->failed = true;
			a->err = e;
		}
		a->head++;
		pthread_cond_broadcast(&a->cv);
	}
	pthread_mutex_unlock(&a->mu);
	return NULL;
}

/* Starts the writer thread; without memory or a thread, writes stay synchronous. */
static void async_start(struct fx_stw *w)
{
	struct stw_async *a = calloc(1, sizeof(*a));

	if (!a || !(a->pool = malloc(STW_SLOTS * STW_SLOT))) {
		free(a);
		return;
	}
	pthread_mutex_init(&a->mu, NULL);
	pthread_cond_init(&a->cv, NULL);
	w->as = a;
	if (pthread_create(&a->th, NULL, async_main, w) != 0) {
		pthread_mutex_destroy(&a->mu);
		pthread_cond_destroy(&a->cv);
		free(a->pool);
		free(a);
		w->as = NULL;
	}
}

/* Waits for every queued slot; returns the first write error, if any. */
static int async_drain(struct fx_stw *w, struct fx_err *err)
{
	struct stw_async *a = w->as;
	int ret = 0;

	if (!a)
		return 0;
	pthread_mutex_lock(&a->mu);
	while (a->head != a->tail)
		pthread_cond_wait(&a->cv, &a->mu);
	if (a->failed)
		ret = fx_error(err, a->err.code, "%s", a->err.msg);
	pthread_mutex_unlock(&a->mu);
	return ret;
}

/* discard: the output is being abandoned; queued slots are not written. */
static void async_stop(struct fx_stw *w, bool discard)
{
	struct stw_async *a = w->as;

	if (!a)
		return;
	pthread_mutex_lock(&a->mu);
	a->stop = true;
	a->discard = discard;
	pthread_cond_broadcast(&a->cv);
	pthread_mutex_unlock(&a->mu);
	pthread_join(a->th, NULL);
	pthread_mutex_destroy(&a->mu);
	pthread_cond_destroy(&a->cv);
	free(a->pool);
	free(a);
	w->as = NULL;
}

/* Queues n bytes for offset off, slot by slot. */
static int async_write(struct fx_stw *w, const uint8_t *p, size_t n, uint64_t off,
		       struct fx_err *err)
{
	struct stw_async *a = w->as;

	while (n) {
		size_t k = n < STW_SLOT ? n : STW_SLOT;
		unsigned slot;

		pthread_mutex_lock(&a->mu);
		while (a->tail - a->head == STW_SLOTS && !a->failed)
			pthread_cond_wait(&a->cv, &a->mu);
		if (a->failed) {
			int ret = fx_error(err, a->err.code, "%s", a->err.msg);

			pthread_mutex_unlock(&a->mu);
			return ret;
		}
		slot = a->tail % STW_SLOTS;
		pthread_mutex_unlock(&a->mu);
		memcpy(a->pool + slot * STW_SLOT, p, k);   /* the slot is ours until queued */
		pthread_mutex_lock(&a->mu);
		a->job[slot].off = off;
		a->job[slot].n = k;
		a->tail++;
		pthread_cond_broadcast(&a->cv);
		pthread_mutex_unlock(&a->mu);
		p += k;
		off += k;
		n -= k;
	}
	return 0;
}

/* 8-byte length + text + spaces up to hdr_len. */
static int write_header(struct fx_stw *w, const char *text, struct fx_err *err)
{
	size_t len = strlen(text);
	uint8_t *buf;
	int ret;

	if (len > w->hdr_len)
		return fx_error(err, FX_E_ARG,
				"'%s': metadata needs a %zu-byte header, %llu bytes were reserved at begin",
				w->path, len, (unsigned long long)w->hdr_len);
	buf = malloc(8 + w->hdr_len);
	if (!buf)
		return nomem(err);
	put_le64(buf, w->hdr_len);
	memcpy(buf + 8, text, len);
	memset(buf + 8 + len, ' ', w->hdr_len - len);
	ret = pwrite_loop(w, buf, 8 + w->hdr_len, 0, err);
	free(buf);
	return ret;
}

int fx_stw_begin(struct fx_stw *w, int fd, struct fx_err *err)
{
	char link[64], *text = NULL;
	uint64_t at = 0, need;
	ssize_t k;
	size_t i;
	int ret = 0;

	if (w->begun)
		return fx_error(err, FX_E_ARG, "'%s': writer already begun", w->path);
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	k = readlink(link, w->path, sizeof(w->path) - 1);
	if (k > 0)
		w->path[k] = '\0';
	else
		snprintf(w->path, sizeof(w->path), "fd %d", fd);
	w->fd = fd;
	sort(w->t, w->n, sizeof(*w->t), cmp_wt_layout);
	w->byname = malloc((w->n + 1) * sizeof(*w->byname));
	if (!w->byname) {
		ret = nomem(err);
		goto out;
	}
	for (i = 0; i < w->n; i++) {
		w->t[i].off = at;
		w->byname[i] = &w->t[i];
		if (w->t[i].nbytes > (uint64_t)INT64_MAX - at) {
			ret = fx_error(err, FX_E_ARG, "'%s': total tensor size overflows 63 bits", w->path);
			goto out;
		}
		at += w->t[i].nbytes;
	}
	w->total = at;
	sort(w->byname, w->n, sizeof(*w->byname), cmp_wtp_name);
	for (i = 1; i < w->n; i++)
		if (!strcmp(w->byname[i]->name, w->byname[i - 1]->name)) {
			ret = fx_error(err, FX_E_ARG, "'%s': tensor '%s' added twice", w->path,
				       w->byname[i]->name);
			goto out;
		}
	ret = stw_header(w, true, &text, err);
	if (ret < 0)
		goto out;
	need = strlen(text) + (uint64_t)w->spare;
	if (need > FX_ST_MAX_HEADER) {
		ret = fx_error(err, FX_E_ARG, "'%s': header of %llu bytes exceeds the 100 MiB limit",
			       w->path, (unsigned long long)need);
		goto out;
	}
	w->hdr_len = (8 + need + 63) / 64 * 64 - 8;
	ret = write_header(w, text, err);
	if (ret < 0)
		goto out;
	w->begun = true;
	async_start(w);
out:
	free(text);
	return ret;
}

static struct wt *stw_find(struct fx_stw *w, const char *name)
{
	size_t lo = 0, hi = w->n;

	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;
		int c = strcmp(name, w->byname[mid]->name);

		if (!c)
			return w->byname[mid];
		if (c < 0)
			hi = mid;
		else
			lo = mid + 1;
	}
	return NULL;
}

int fx_stw_write(struct fx_stw *w, const char *name, const void *data, size_t n,
		 struct fx_err *err)
{
	const uint8_t *p = data;
	struct wt *e;
	int ret;

	if (!w->begun || w->finished)
		return fx_error(err, FX_E_ARG, "'%s': write of '%s' outside begin..finish", w->path,
				name ? name : "(null)");
	e = name ? stw_find(w, name) : NULL;
	if (!e)
		return fx_error(err, FX_E_ARG, "'%s': no tensor '%s' was declared", w->path,
				name ? name : "(null)");
	if (n > e->nbytes - e->done)
		return fx_error(err, FX_E_ARG, "'%s': tensor '%s' gets %llu bytes more than its %llu",
				w->path, name, (unsigned long long)(e->done + n - e->nbytes),
				(unsigned long long)e->nbytes);
	if (!n)
		return 0;
	if (!data)
		return fx_error(err, FX_E_ARG, "'%s': no data for tensor '%s'", w->path, name);
	if (w->failed.code)
		return fx_error(err, w->failed.code, "%s", w->failed.msg);
	if (w->as)
		ret = async_write(w, data, n, 8 + w->hdr_len + e->off + e->done, err);
	else
		ret = pwrite_loop(w, data, n, 8 + w->hdr_len + e->off + e->done, err);
	if (ret < 0) {
		if (err)
			w->failed = *err;
		else
			w->failed.code = ret;
		return ret;
	}
	e->crc = fx_crc32(e->crc, p, n);
	e->done += n;
	return 0;
}

int fx_stw_finish(struct fx_stw *w, struct fx_err *err)
{
	char *text = NULL;
	size_t i;
	int ret = 0;

	if (!w->begun || w->finished)
		return fx_error(err, FX_E_ARG, "'%s': finish without begin, or twice", w->path);
	if (w->failed.code)
		return fx_error(err, w->failed.code, "%s", w->failed.msg);
	{
		struct fx_err e = { 0 };

		ret = async_drain(w, &e);
		async_stop(w, false);
		if (ret < 0) {
			w->failed = e;   /* a later finish must not pass */
			ret = fx_error(err, e.code, "%s", e.msg);
			goto out;
		}
	}
	for (i = 0; i < w->n; i++)
		if (w->t[i].done != w->t[i].nbytes) {
			ret = fx_error(err, FX_E_ARG, "'%s': tensor '%s' is incomplete: %llu of %llu bytes written",
				       w->path, w->t[i].name, (unsigned long long)w->t[i].done,
				       (unsigned long long)w->t[i].nbytes);
			goto out;
		}
	ret = stw_header(w, false, &text, err);
	if (ret < 0)
		goto out;
	ret = write_header(w, text, err);
	if (ret < 0)
		goto out;
	if (ftruncate(w->fd, (off_t)(8 + w->hdr_len + w->total)) != 0) {
		ret = fx_error(err, FX_E_IO, "'%s': cannot set the file size: %s", w->path, strerror(errno));
		goto out;
	}
	w->finished = true;
out:
	free(text);
	return ret;
}

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif

void fx_mem_prefault(const void *p, size_t n)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a, b;

	if (!n || !fx_map_contains(p, n))
		return;
	/* the mapping starts at offset 0 of the file: whole pages stay inside */
	a = (uintptr_t)p & ~(pg - 1);
	b = ((uintptr_t)p + n + pg - 1) & ~(pg - 1);
	madvise((void *)a, b - a, MADV_POPULATE_READ);   /* older kernels: EINVAL, harmless */
}

void fx_tensor_release(const struct fx_tensor *t)
{
	uintptr_t pg = (uintptr_t)sysconf(_SC_PAGESIZE), a, b;

	if (!t || !t->nbytes)
		return;
	/* only whole pages inside the tensor: neighbours may still be in use */
	a = ((uintptr_t)t->data + pg - 1) & ~(pg - 1);
	b = ((uintptr_t)t->data + t->nbytes) & ~(pg - 1);
	/* under the registry's lock: a file closed meanwhile must not leave the
	 * range to someone else's memory */
	if (b > a)
		fx_map_advise(t->data, t->nbytes, (void *)a, b - a, MADV_DONTNEED);
}

