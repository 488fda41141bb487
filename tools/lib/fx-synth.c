/* Deterministic synthetic checkpoints of every family; the generator is
 * described in fx-synth.h, the tensors come from the family. */
#include "fx-synth.h"

#include <dirent.h>
#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fx-family.h"
#include "fx-families.h"
#include "fx-io.h"
#include "fx-st.h"

#define NAME_CAP 160
#define MAX_PARTS 4
#define LOWRANK 4
#define ST_BASE "diffusion_pytorch_model"

/* ---- generator -------------------------------------------------------- */

struct rng {
	uint64_t s[4];
};

static uint64_t splitmix64(uint64_t *x)
{
	uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint64_t fnv1a(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
	return h;
}

static void rng_seed(struct rng *r, uint64_t seed, const char *stream)
{
	uint64_t x = seed;
	int i;

	x = splitmix64(&x) ^ fnv1a(stream);
	for (i = 0; i < 4; i++)
		r->s[i] = splitmix64(&x);
}

static uint64_t rotl(uint64_t x, int k)
{
	return (x << k) | (x >> (64 - k));
}

/* xoshiro256** */
static uint64_t rng_next(struct rng *r)
{
	uint64_t *s = r->s, res = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;

	s[2] ^= s[0];
	s[3] ^= s[1];
	s[1] ^= s[2];
	s[0] ^= s[3];
	s[2] ^= t;
	s[3] = rotl(s[3], 45);
	return res;
}

static double rng_uniform(struct rng *r)
{
	return (double)(rng_next(r) >> 11) * 0x1.0p-53;
}

/* Irwin-Hall: 12 uniforms of 32 bits; the sum is exact in a double. */
static double rng_normal(struct rng *r)
{
	double s = 0;
	int i;

	for (i = 0; i < 6; i++) {
		uint64_t x = rng_next(r);

		s += (double)(x >> 32) * 0x1.0p-32 + (double)(x & 0xffffffffu) * 0x1.0p-32;
	}
	return s - 6.0;
}

/* exp() from IEEE arithmetic only: range reduction by ln 2, Taylor series. */
static double det_exp(double x)
{
	static const double ln2 = 0.6931471805599453;
	double k = floor(x / ln2 + 0.5), r = x - k * ln2, term = 1, sum = 1;
	int i;

	for (i = 1; i < 24; i++) {
		term *= r / i;
		sum += term;
	}
	return ldexp(sum, (int)k);
}

static void fill_linear(uint16_t *dst, int64_t n, int64_t k, struct rng *r, double *work)
{
	int64_t mn = n < k ? n : k;
	int rk = mn < LOWRANK ? (int)mn : LOWRANK;
	double *rows = work, *cols = rows + n, *u = cols + k, *v = u + n * rk;
	double inv = 1.0 / sqrt((double)k);
	int64_t i, j, nout = 2 + k / 512;
	uint64_t base;
	int t;

	for (i = 0; i < n; i++)
		rows[i] = det_exp(0.5 * rng_normal(r)) * inv;
	for (i = 0; i < n * rk; i++)
		u[i] = rng_normal(r);
	for (i = 0; i < k * rk; i++)
		v[i] = rng_normal(r) * inv / (i % rk + 1);   /* singular values 1/(t+1) */
	for (j = 0; j < k; j++)
		cols[j] = 1.0;
	if (nout > k)
		nout = k;
	for (i = 0; i < nout; i++)
		cols[rng_next(r) % (uint64_t)k] = 10.0 + 20.0 * rng_uniform(r);
	/* each row has its own stream, so rows can be made in parallel */
	base = rng_next(r);
#pragma omp parallel for schedule(static) private(j, t) if (n * k > 65536)
	for (i = 0; i < n; i++) {
		struct rng rr;
		uint64_t x0 = base ^ (uint64_t)i;
		int q;

		for (q = 0; q < 4; q++)
			rr.s[q] = splitmix64(&x0);
		for (j = 0; j < k; j++) {
			double x = rng_normal(&rr) * rows[i];

			for (t = 0; t < rk; t++)
				x += u[i * rk + t] * v[j * rk + t];
			dst[i * k + j] = fx_f32_to_bf16((float)(x * cols[j]));
		}
	}
}

static bool ends(const char *s, const char *p)
{
	size_t a = strlen(s), b = strlen(p);

	return a >= b && strcmp(s + a - b, p) == 0;
}

int fx_synth_fill(uint16_t *dst, const char *name, int ndim, const int64_t *shape,
		  uint64_t seed, struct fx_err *err)
{
	struct rng r;
	int64_t i, n;

	rng_seed(&r, seed, name);
	if (ndim == 2 && !ends(name, ".bias")) {
		double *work;

		n = shape[0];
		work = malloc(((size_t)(shape[0] + shape[1]) * (1 + LOWRANK)) * sizeof(double));
		if (!work)
			return fx_error(err, FX_E_NOMEM, "out of memory");
		fill_linear(dst, shape[0], shape[1], &r, work);
		free(work);
		return 0;
	}
	if (ndim != 1)
		return fx_error(err, FX_E_ARG, "cannot synthesise tensor '%s' with %d dimensions",
				name, ndim);
	n = shape[0];
	for (i = 0; i < n; i++) {
		double z = rng_normal(&r);

		dst[i] = fx_f32_to_bf16((float)(ends(name, ".bias") ? 0.05 * z : 1.0 + 0.2 * z));
	}
	return 0;
}

/* ---- tensor lists ----------------------------------------------------- */

/* A file tensor made of diffusers tensors whose rows are concatenated
 * (all have the entry's columns); swap writes the two row halves of its one
 * part in reverse order (BFL final_layer.adaLN_modulation.1). */
struct entry {
	char name[NAME_CAP];
	int ndim;
	int64_t shape[2];
	int nparts;
	char part[MAX_PARTS][NAME_CAP];
	int64_t prows[MAX_PARTS];
	bool swap;
};

struct list {
	struct entry *e;
	size_t n, cap;
};

static struct entry *push(struct list *l, const char *name, int ndim, int64_t d0, int64_t d1)
{
	struct entry *e;

	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 64;
		struct entry *ne = realloc(l->e, cap * sizeof(*ne));

		if (!ne)
			return NULL;
		l->e = ne;
		l->cap = cap;
	}
	e = &l->e[l->n++];
	memset(e, 0, sizeof(*e));
	snprintf(e->name, sizeof(e->name), "%s", name);
	e->ndim = ndim;
	e->shape[0] = d0;
	e->shape[1] = ndim > 1 ? d1 : 1;
	return e;
}

static void add_part(struct entry *e, const char *name, int64_t rows)
{
	FX_ASSERT(e->nparts < MAX_PARTS);
	snprintf(e->part[e->nparts], NAME_CAP, "%s", name);
	e->prows[e->nparts++] = rows;
}

/* The family's sink: one file tensor made of diffusers tensors' rows. */
static int sink_tensor(void *ctx, const char *name, int ndim, int64_t d0, int64_t d1, bool swap,
		       int nparts, const char *const *parts, const int64_t *rows)
{
	struct entry *e = push(ctx, name, ndim, d0, d1);
	int p;

	if (!e)
		return -1;
	e->swap = swap;
	for (p = 0; p < nparts; p++)
		add_part(e, parts[p], rows[p]);
	return 0;
}

static int build_list(struct list *l, const struct fx_model_config *c, bool bfl)
{
	struct fx_synth_sink sk = { l, sink_tensor };

	return c->family->synth_tensors(c, bfl, &sk);
}

/* ---- writing ---------------------------------------------------------- */

static int exists_check(const char *path, bool force, struct fx_err *err)
{
	struct stat sb;

	if (stat(path, &sb) == 0) {
		if (!force)
			return fx_error(err, FX_E_ARG, "'%s' exists (use --force to overwrite)", path);
		return 1;
	}
	if (errno != ENOENT)
		return fx_error(err, FX_E_IO, "cannot stat '%s': %s", path, strerror(errno));
	return 0;
}

static int write_entry(struct fx_stw *w, const struct entry *e, uint64_t seed,
		       struct fx_err *err)
{
	int64_t cols = e->shape[1];
	uint16_t *buf = NULL;
	int p, ret = 0;

	for (p = 0; p < e->nparts && ret == 0; p++) {
		int64_t shape[2] = { e->prows[p], cols };
		size_t n = (size_t)(e->prows[p] * cols), half = n / 2;

		buf = malloc(n * sizeof(*buf));
		if (!buf)
			return fx_error(err, FX_E_NOMEM, "out of memory");
		ret = fx_synth_fill(buf, e->part[p], e->ndim, shape, seed, err);
		if (ret == 0 && e->swap)
			ret = fx_stw_write(w, e->name, buf + half, (n - half) * 2, err);
		if (ret == 0)
			ret = fx_stw_write(w, e->name, buf, (e->swap ? half : n) * 2, err);
		free(buf);
	}
	return ret;
}

static int write_st(const char *path, const struct entry *e, size_t n, uint64_t seed,
		    bool force, struct fx_err *err)
{
	struct fx_out *o = NULL;
	struct fx_stw *w = NULL;
	size_t i;
	int ret;

	if ((ret = fx_out_open(&o, path, force, err)) < 0 ||
	    (ret = fx_stw_new(&w, 0, err)) < 0 || (ret = fx_stw_meta(w, "format", "pt", err)) < 0)
		goto out;
	for (i = 0; i < n; i++)
		if ((ret = fx_stw_add(w, e[i].name, FX_BF16, e[i].ndim, e[i].shape, err)) < 0)
			goto out;
	if ((ret = fx_stw_begin(w, fx_out_fd(o), err)) < 0)
		goto out;
	for (i = 0; i < n; i++)
		if ((ret = write_entry(w, &e[i], seed, err)) < 0)
			goto out;
	if ((ret = fx_stw_finish(w, err)) < 0)
		goto out;
	ret = fx_out_commit(o, err);
	o = NULL;
out:
	fx_stw_free(w);
	fx_out_abort(o);
	return ret;
}

static int write_text(const char *path, const char *text, struct fx_err *err)
{
	struct fx_out *o = NULL;
	int ret;

	if ((ret = fx_out_open(&o, path, true, err)) < 0)
		return ret;
	ret = fx_write_all(fx_out_fd(o), text, strlen(text), fx_out_tmp_path(o), err);
	if (ret < 0) {
		fx_out_abort(o);
		return ret;
	}
	return fx_out_commit(o, err);
}

/* {"metadata": {"total_size": bytes}, "weight_map": {tensor: file}}; map[i]
 * is the file of entry i. */
static int index_json(char **out, const struct list *l, char (*map)[64])
{
	json_t *o = json_object(), *meta = json_object(), *wm = json_object();
	uint64_t total = 0;
	size_t i;
	int bad = 0;

	for (i = 0; i < l->n; i++) {
		const struct entry *e = &l->e[i];

		total += (uint64_t)(e->shape[0] * e->shape[1]) * 2;
		bad |= json_object_set_new(wm, e->name, json_string(map[i]));
	}
	bad |= json_object_set_new(meta, "total_size", json_integer((json_int_t)total));
	bad |= json_object_set(o, "metadata", meta);
	bad |= json_object_set(o, "weight_map", wm);
	*out = bad ? NULL : json_dumps(o, JSON_INDENT(2) | JSON_SORT_KEYS);
	json_decref(meta);
	json_decref(wm);
	json_decref(o);
	return *out ? 0 : -1;
}

/* Removes stale model files an earlier run left in the folder. */
static void remove_stale(const char *dir, char (*files)[64], size_t nfiles)
{
	DIR *d = opendir(dir);
	struct dirent *de;

	if (!d)
		return;
	while ((de = readdir(d))) {
		char *p;
		size_t i;

		if (strncmp(de->d_name, ST_BASE, strlen(ST_BASE)) != 0 ||
		    (!ends(de->d_name, ".safetensors") && !ends(de->d_name, ".safetensors.index.json")))
			continue;
		for (i = 0; i < nfiles; i++)
			if (strcmp(files[i], de->d_name) == 0)
				break;
		if (i < nfiles)
			continue;
		if (asprintf(&p, "%s/%s", dir, de->d_name) >= 0) {
			unlink(p);
			free(p);
		}
	}
	closedir(d);
}

static int synth_folder(const char *out, const struct fx_synth_opts *o,
			const struct fx_model_config *c, const struct list *l,
			struct fx_err *err)
{
	size_t shards = (size_t)o->shards, s, nfiles = 0, done = 0;
	char (*files)[64] = NULL;
	char *path = NULL, *text = NULL;
	bool created = false;
	int ret;

	if ((ret = exists_check(out, o->force, err)) < 0)
		return ret;
	if (ret == 1) {
		struct stat sb;

		if (stat(out, &sb) < 0 || !S_ISDIR(sb.st_mode))
			return fx_error(err, FX_E_ARG, "'%s' exists and is not a directory", out);
	} else if (mkdir(out, 0777) < 0) {
		return fx_error(err, FX_E_IO, "cannot create directory '%s': %s", out,
				strerror(errno));
	} else {
		created = true;
	}
	if (shards > l->n) {
		ret = fx_error(err, FX_E_ARG, "cannot spread %zu tensors over %zu shards", l->n,
			       shards);
		goto out;
	}
	/* shard files, then the index, then config.json */
	files = calloc(shards + 2, sizeof(*files));
	if (!files) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (s = 0; s < shards; s++) {
		if (shards == 1)
			snprintf(files[s], 64, ST_BASE ".safetensors");
		else
			snprintf(files[s], 64, ST_BASE "-%05d-of-%05d.safetensors", (int)s + 1,
				 (int)shards);
	}
	nfiles = shards;
	if (shards > 1)
		snprintf(files[nfiles++], 64, ST_BASE ".safetensors.index.json");
	snprintf(files[nfiles++], 64, "config.json");
	for (s = 0; s < shards; s++) {
		size_t lo = s * l->n / shards, hi = (s + 1) * l->n / shards;

		free(path);
		if (asprintf(&path, "%s/%s", out, files[s]) < 0) {
			path = NULL;
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		if ((ret = write_st(path, l->e + lo, hi - lo, o->seed, true, err)) < 0)
			goto out;
		done++;
	}
	if (shards > 1) {
		char (*map)[64] = malloc(l->n * sizeof(*map));
		size_t i;

		if (!map) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		for (s = 0; s < shards; s++)
			for (i = s * l->n / shards; i < (s + 1) * l->n / shards; i++)
				memcpy(map[i], files[s], 64);
		ret = index_json(&text, l, map);
		free(map);
		if (ret < 0) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		free(path);
		if (asprintf(&path, "%s/%s", out, files[shards]) < 0) {
			path = NULL;
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		if ((ret = write_text(path, text, err)) < 0)
			goto out;
		done++;
		free(text);
		text = NULL;
	}
	if ((ret = fx_model_config_to_json(c, &text, err)) < 0)
		goto out;
	free(path);
	if (asprintf(&path, "%s/config.json", out) < 0) {
		path = NULL;
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = write_text(path, text, err)) < 0)
		goto out;
	done++;
	remove_stale(out, files, nfiles);
out:
	if (ret < 0 && created) {
		for (s = 0; s < done; s++) {
			char *p;

			if (asprintf(&p, "%s/%s", out, files[s]) >= 0) {
				unlink(p);
				free(p);
			}
		}
		rmdir(out);
	}
	free(files);
	free(path);
	free(text);
	return ret;
}

void fx_synth_opts_init(struct fx_synth_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->layout = FX_LAYOUT_DIFFUSERS;
	o->num_double = 2;
	o->num_single = 2;
	o->hidden = 256;
	o->txt_dim = 4096;
	o->in_channels = 64;
	o->seed = 1;
	o->shards = 1;
}

void fx_synth_cond_opts_init(struct fx_synth_cond_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->prompts = 4;
	o->txt_len = 64;
	o->txt_dim = 4096;
	o->pooled_dim = 768;
	o->seed = 1;
}

int fx_synth_config(struct fx_model_config *c, const struct fx_synth_opts *o,
		    struct fx_err *err)
{
	bool qwen = o->family && !strcmp(o->family->name, "qwenimage");

	memset(c, 0, sizeof(*c));
	c->family = o->family ? o->family : fx_family_find("flux");
	if (qwen && (o->num_single || o->schnell || o->layout != FX_LAYOUT_DIFFUSERS))
		return fx_error(err, FX_E_ARG,
				"a Qwen-Image has one kind of block (no single blocks), no guidance embedder and the diffusers layout only");
	if (qwen && (o->in_channels % 4))
		return fx_error(err, FX_E_ARG, "in_channels %d is not 4 x latent channels",
				o->in_channels);
	if (o->hidden < 128 || o->hidden > 16384 || o->hidden % 128)
		return fx_error(err, FX_E_ARG, "hidden size %d is not a multiple of 128 in 128..16384",
				o->hidden);
	if (o->num_double < 0 || o->num_double > 1000 || o->num_single < 0 ||
	    o->num_single > 1000)
		return fx_error(err, FX_E_ARG, "block counts must be in 0..1000");
	if (o->txt_dim < 1 || o->txt_dim > 65536 || o->in_channels < 1 || o->in_channels > 65536)
		return fx_error(err, FX_E_ARG, "text dim and in_channels must be in 1..65536");
	if (o->shards < 1 || o->shards > 99999)
		return fx_error(err, FX_E_ARG, "shard count %d is out of range 1..99999", o->shards);
	if (o->shards > 1 && o->layout != FX_LAYOUT_DIFFUSERS)
		return fx_error(err, FX_E_ARG, "shards need the diffusers layout");
	c->hidden = o->hidden;
	c->head_dim = 128;
	c->heads = o->hidden / 128;
	c->mlp_hidden = 4 * o->hidden;
	c->num_double = o->num_double;
	c->num_single = o->num_single;
	c->in_channels = o->in_channels;
	c->out_channels = o->in_channels;
	c->joint_dim = o->txt_dim;
	c->pooled_dim = qwen ? 0 : 768;
	c->guidance = !qwen && !o->schnell;
	c->axes[0] = 16;
	c->axes[1] = 56;
	c->axes[2] = 56;
	if (qwen)
		c->out_channels = o->in_channels / 4;   /* proj_out: 2x2 patches */
	return 0;
}

int fx_synth_model(const char *out, const struct fx_synth_opts *o, struct fx_err *err)
{
	struct fx_model_config c;
	struct list l = {0};
	bool bfl = o->layout == FX_LAYOUT_BFL;
	int ret;

	if ((ret = fx_synth_config(&c, o, err)) < 0)
		return ret;
	if (build_list(&l, &c, bfl) < 0) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if (bfl) {
		if ((ret = exists_check(out, o->force, err)) >= 0)
			ret = write_st(out, l.e, l.n, o->seed, o->force, err);
	} else {
		ret = synth_folder(out, o, &c, &l, err);
	}
out:
	free(l.e);
	return ret < 0 ? ret : 0;
}

/* Channel scales: base, with a few channels times lo..hi. */
static void channel_scales(double *sc, int64_t n, double base, int64_t nbig, double lo,
			   double hi, struct rng *r)
{
	int64_t i;

	for (i = 0; i < n; i++)
		sc[i] = base;
	for (i = 0; i < nbig && i < n; i++)
		sc[rng_next(r) % (uint64_t)n] = base * (lo + (hi - lo) * rng_uniform(r));
}

static int write_rows(struct fx_stw *w, const char *name, int64_t rows, int64_t cols,
		      const double *sc, struct rng *r, uint16_t *buf, struct fx_err *err)
{
	int64_t i, j;
	int ret;

	for (i = 0; i < rows; i++) {
		for (j = 0; j < cols; j++)
			buf[j] = fx_f32_to_bf16((float)(rng_normal(r) * sc[j]));
		if ((ret = fx_stw_write(w, name, buf, (size_t)cols * 2, err)) < 0)
			return ret;
	}
	return 0;
}

static int write_mask(struct fx_stw *w, const char *name, int64_t rows, int64_t cols,
		      int64_t step, struct fx_err *err)
{
	int64_t i, j, *m = malloc((size_t)cols * sizeof(*m));
	int ret = 0;

	if (!m)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	for (i = 0; i < rows && ret == 0; i++) {
		int64_t len = cols - (i % 4) * step;

		for (j = 0; j < cols; j++)
			m[j] = j < len;
		ret = fx_stw_write(w, name, m, (size_t)cols * sizeof(*m), err);
	}
	free(m);
	return ret;
}

/* Qwen-Image conditioning (fx-synth.h): padded rows are zeros. */
static int synth_cond_qwen(const char *path, const struct fx_synth_cond_opts *o,
			   struct fx_err *err)
{
	struct fx_out *out = NULL;
	struct fx_stw *w = NULL;
	struct rng rp;
	int64_t P = o->prompts, L = o->txt_len, D = o->txt_dim, N = L / 4 > 0 ? L / 4 : 1;
	int64_t es[3] = { P, L, D }, ms[2] = { P, L }, ns[3] = { 1, N, D }, nm[2] = { 1, N };
	double *sc = NULL;
	uint16_t *buf = NULL;
	int64_t i, j, step = L / 8;
	int ret;

	if (P < 1 || P > 100000 || L < 1 || L > 100000 || D < 1 || D > 65536)
		return fx_error(err, FX_E_ARG, "conditioning shape [%lld,%lld,%lld] is out of range",
				(long long)P, (long long)L, (long long)D);
	if ((ret = exists_check(path, o->force, err)) < 0)
		return ret;
	sc = malloc((size_t)D * sizeof(*sc));
	buf = malloc((size_t)D * sizeof(*buf));
	if (!sc || !buf) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = fx_out_open(&out, path, o->force, err)) < 0 ||
	    (ret = fx_stw_new(&w, 0, err)) < 0 ||
	    (ret = fx_stw_add(w, "prompt_embeds", FX_BF16, 3, es, err)) < 0 ||
	    (ret = fx_stw_add(w, "prompt_embeds_mask", FX_I64, 2, ms, err)) < 0 ||
	    (ret = fx_stw_add(w, "negative_prompt_embeds", FX_BF16, 3, ns, err)) < 0 ||
	    (ret = fx_stw_add(w, "negative_prompt_embeds_mask", FX_I64, 2, nm, err)) < 0 ||
	    (ret = fx_stw_begin(w, fx_out_fd(out), err)) < 0)
		goto out;
	rng_seed(&rp, o->seed, "prompt_embeds");
	channel_scales(sc, D, 0.15, 2 + D / 1024, 20.0, 60.0, &rp);
	for (i = 0; i < P * L; i++) {
		if (i % L < L - (i / L % 4) * step) {
			for (j = 0; j < D; j++)
				buf[j] = fx_f32_to_bf16((float)(rng_normal(&rp) * sc[j]));
		} else {
			memset(buf, 0, (size_t)D * 2);
		}
		if ((ret = fx_stw_write(w, "prompt_embeds", buf, (size_t)D * 2, err)) < 0)
			goto out;
	}
	if ((ret = write_mask(w, "prompt_embeds_mask", P, L, step, err)) < 0)
		goto out;
	rng_seed(&rp, o->seed, "negative_prompt_embeds");
	if ((ret = write_rows(w, "negative_prompt_embeds", N, D, sc, &rp, buf, err)) < 0 ||
	    (ret = write_mask(w, "negative_prompt_embeds_mask", 1, N, 0, err)) < 0 ||
	    (ret = fx_stw_finish(w, err)) < 0)
		goto out;
	ret = fx_out_commit(out, err);
	out = NULL;
out:
	fx_stw_free(w);
	fx_out_abort(out);
	free(sc);
	free(buf);
	return ret;
}

int fx_synth_cond(const char *path, const struct fx_synth_cond_opts *o, struct fx_err *err)
{
	struct fx_out *out = NULL;
	struct fx_stw *w = NULL;
	struct rng rp, rq;
	int64_t P = o->prompts, L = o->txt_len, D = o->txt_dim, Q = o->pooled_dim;
	int64_t es[3] = { P, L, D }, ps[2] = { P, Q };
	double *sc = NULL;
	uint16_t *buf = NULL;
	int ret;

	if (o->family && !strcmp(o->family->name, "qwenimage"))
		return synth_cond_qwen(path, o, err);
	if (P < 1 || P > 100000 || L < 1 || L > 100000 || D < 1 || D > 65536 || Q < 1 ||
	    Q > 65536)
		return fx_error(err, FX_E_ARG, "conditioning shape [%lld,%lld,%lld] is out of range",
				(long long)P, (long long)L, (long long)D);
	if ((ret = exists_check(path, o->force, err)) < 0)
		return ret;
	sc = malloc((size_t)(D > Q ? D : Q) * sizeof(*sc));
	buf = malloc((size_t)(D > Q ? D : Q) * sizeof(*buf));
	if (!sc || !buf) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = fx_out_open(&out, path, o->force, err)) < 0 ||
	    (ret = fx_stw_new(&w, 0, err)) < 0 ||
	    (ret = fx_stw_add(w, "prompt_embeds", FX_BF16, 3, es, err)) < 0 ||
	    (ret = fx_stw_add(w, "pooled_prompt_embeds", FX_BF16, 2, ps, err)) < 0 ||
	    (ret = fx_stw_begin(w, fx_out_fd(out), err)) < 0)
		goto out;
	rng_seed(&rp, o->seed, "prompt_embeds");
	channel_scales(sc, D, 0.15, 2 + D / 1024, 20.0, 60.0, &rp);
	if ((ret = write_rows(w, "prompt_embeds", P * L, D, sc, &rp, buf, err)) < 0)
		goto out;
	rng_seed(&rq, o->seed, "pooled_prompt_embeds");
	channel_scales(sc, Q, 0.5, 2, 10.0, 20.0, &rq);
	if ((ret = write_rows(w, "pooled_prompt_embeds", P, Q, sc, &rq, buf, err)) < 0 ||
	    (ret = fx_stw_finish(w, err)) < 0)
		goto out;
	ret = fx_out_commit(out, err);
	out = NULL;
out:
	fx_stw_free(w);
	fx_out_abort(out);
	free(sc);
	free(buf);
	return ret;
}
