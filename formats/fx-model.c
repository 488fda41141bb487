/* The model reader: a path in any form, its tensors behind one internal
 * view (diffusers names, fused groups) that the model's family declares
 * (fx-family.h); FP8 widening, per-tensor scales and LoRA merging. */
#include "fx-model.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>
#include <sys/stat.h>

#include "fx-hash.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-family.h"
#include "fx-lora.h"

#define MAX_BLOCKS 10000
#define NAME_CAP 256
#define CONFIG_MAX (1u << 20)

struct plain {
	char *name;                  /* diffusers name */
	const struct fx_tensor *t;   /* source tensor */
	bool swap;                   /* BFL norm_out: row halves swapped */
};

/* A LoRA product on rows [row0,row0+nrows) of a source tensor, all its
 * columns: source row row0+i gets factor·up[up_row0+i,:]·down (a bias
 * target: factor·bias[up_row0+i]). Sorted by (t, seq): the LoRAs apply in
 * the order given. */
struct pair {
	const struct fx_tensor *t;
	const struct fx_lora_entry *e;
	const char *file;
	int64_t row0, nrows, up_row0;
	bool bias;
	size_t seq;
};

/* A tensor with a per-tensor scale companion (FP8 exports). */
struct scaled {
	const struct fx_tensor *t, *scale;
	float s;
};

struct fx_model {
	struct fx_stset *set;
	char *src;                   /* what the tensors were opened from */
	char *cfg_path;              /* config.json or NULL */
	const char *prefix;          /* "" or BFL_PREFIX */
	enum fx_layout layout;
	struct fx_model_config cfg;
	char *cfg_json;
	bool cfg_file;
	struct fx_group *groups;
	size_t ngroups, capgroups;
	struct plain *plain;
	size_t nplain, capplain;
	char **strs;                 /* member names */
	size_t nstrs, capstrs;
	const struct fx_tensor **used;
	size_t nused, capused;
	struct scaled *scaled;       /* sorted by t once the model is built */
	size_t nscaled, capscaled;
	struct fx_lora_file **loras;
	size_t nloras;
	struct pair *pairs;          /* sorted by (t, seq) */
	size_t npairs, cappairs;
};

static const struct plain *find_plain(const struct fx_model *m, const char *name);

static int grow(void *pp, size_t *cap, size_t need, size_t elem)
{
	void **p = pp;
	size_t c = *cap ? *cap : 16;
	void *n;

	if (need <= *cap)
		return 0;
	while (c < need)
		c *= 2;
	n = realloc(*p, c * elem);
	if (!n)
		return FX_E_NOMEM;
	*p = n;
	*cap = c;
	return 0;
}

static char *dupstr(const char *s)
{
	size_t n = strlen(s) + 1;
	char *d = malloc(n);

	if (d)
		memcpy(d, s, n);
	return d;
}

static const char *keep(struct fx_model *m, const char *s)
{
	char *d;

	if (grow(&m->strs, &m->capstrs, m->nstrs + 1, sizeof(*m->strs)) < 0)
		return NULL;
	d = dupstr(s);
	if (d)
		m->strs[m->nstrs++] = d;
	return d;
}

static bool is_dir(const char *p)
{
	struct stat sb;

	return stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool is_file(const char *p)
{
	struct stat sb;

	return stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

static bool starts(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

static bool ends(const char *s, const char *p)
{
	size_t a = strlen(s), b = strlen(p);

	return a >= b && strcmp(s + a - b, p) == 0;
}

static const struct fx_tensor *find(const struct fx_model *m, const char *name)
{
	char full[NAME_CAP];

	if (snprintf(full, sizeof(full), "%s%s", m->prefix, name) >= (int)sizeof(full))
		return NULL;
	return fx_stset_find(m->set, full);
}

static const char *file_of(const struct fx_model *m, const struct fx_tensor *t)
{
	const char *p = fx_stset_path_of(m->set, t->name);

	return p ? p : m->src;
}

static int64_t dim_of(const struct fx_model *m, const char *name, int ax)
{
	const struct fx_tensor *t = find(m, name);

	return t && t->ndim > ax ? t->shape[ax] : -1;
}

/* ---- builder calls for the families (fx-family.h) -------------------- */

const struct fx_tensor *fx_model_build_find(const struct fx_model *m, const char *name)
{
	return find(m, name);
}

const char *fx_model_build_file(const struct fx_model *m, const struct fx_tensor *t)
{
	return file_of(m, t);
}

int64_t fx_model_build_dim(const struct fx_model *m, const char *name, int ax)
{
	return dim_of(m, name, ax);
}

size_t fx_model_build_count(const struct fx_model *m)
{
	return fx_stset_count(m->set);
}

const struct fx_tensor *fx_model_build_at(const struct fx_model *m, size_t i)
{
	return fx_stset_at(m->set, i);
}

const char *fx_model_build_src(const struct fx_model *m)
{
	return m->src;
}

void fx_model_build_set_layout(struct fx_model *m, enum fx_layout layout, const char *prefix)
{
	m->layout = layout;
	m->prefix = prefix;
}

const char *fx_model_build_prefix(const struct fx_model *m)
{
	return m->prefix;
}

struct fx_model_config *fx_model_build_config(struct fx_model *m)
{
	return &m->cfg;
}

int fx_model_build_count_blocks(const struct fx_model *m, const char *block, int *cnt,
				struct fx_err *err)
{
	size_t i, bl = strlen(block);

	*cnt = 0;
	for (i = 0; i < fx_stset_count(m->set); i++) {
		const char *full = fx_stset_at(m->set, i)->name, *n = full, *q;
		char *end;
		long v;

		if (!starts(n, m->prefix))
			continue;
		n += strlen(m->prefix);
		if (strncmp(n, block, bl) || n[bl] != '.')
			continue;
		q = n + bl + 1;
		if (*q < '0' || *q > '9')
			continue;
		errno = 0;
		v = strtol(q, &end, 10);
		if (*end != '.')
			continue;
		if (errno || v >= MAX_BLOCKS)
			return fx_error(err, FX_E_FORMAT,
					"tensor '%s' has block index out of range (max %d) (in '%s')",
					full, MAX_BLOCKS - 1, file_of(m, fx_stset_at(m->set, i)));
		if (v + 1 > *cnt)
			*cnt = (int)v + 1;
	}
	return 0;
}

int fx_json_int(struct json_t *o, const char *key, int def, int lo, int hi, int *v,
		const char *path, struct fx_err *err)
{
	json_t *j = json_object_get(o, key);
	json_int_t x;

	if (!j || json_is_null(j)) {
		*v = def;
		return 0;
	}
	if (!json_is_integer(j))
		return fx_error(err, FX_E_FORMAT, "config key '%s' is not an integer (in '%s')", key,
				path);
	x = json_integer_value(j);
	if (x < lo || x > hi)
		return fx_error(err, FX_E_FORMAT, "config key '%s' is %lld, expected %d..%d (in '%s')",
				key, (long long)x, lo, hi, path);
	*v = (int)x;
	return 0;
}

int fx_json_axes(struct json_t *o, const char *key, int axes[3], const char *path,
		 struct fx_err *err)
{
	json_t *j = json_object_get(o, key);
	size_t i;

	if (!j || json_is_null(j))
		return 0;
	if (!json_is_array(j) || json_array_size(j) != 3)
		goto bad;
	for (i = 0; i < 3; i++) {
		json_t *e = json_array_get(j, i);

		if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) > 4096)
			goto bad;
		axes[i] = (int)json_integer_value(e);
	}
	return 1;
bad:
	return fx_error(err, FX_E_FORMAT, "config key '%s' is not a list of 3 integers (in '%s')",
			key, path);
}

/* ---- paths and config ------------------------------------------------ */

/* "<stem>-00001-of-00003.safetensors" -> index "<stem>.safetensors.index.json"
 * when that file exists beside it (the set it belongs to), else NULL. */
static char *shard_index(const char *path)
{
	const char *base = strrchr(path, '/'), *dash, *of;
	char *idx = NULL;
	size_t stem;

	base = base ? base + 1 : path;
	if (!ends(base, ".safetensors") || !(of = strstr(base, "-of-")))
		return NULL;
	for (dash = of; dash > base && dash[-1] >= '0' && dash[-1] <= '9'; dash--)
		;
	if (dash == of || dash == base || dash[-1] != '-')
		return NULL;
	stem = (size_t)(dash - 1 - path);
	if (asprintf(&idx, "%.*s.safetensors.index.json", (int)stem, path) < 0)
		return NULL;
	if (!is_file(idx)) {
		free(idx);
		return NULL;
	}
	return idx;
}

int fx_model_resolve(const char *path, char **src, char **cfg, struct fx_err *err)
{
	struct stat sb;
	char *d = NULL, *c = NULL;

	*src = *cfg = NULL;
	if (stat(path, &sb) < 0)
		return fx_error(err, FX_E_IO, "cannot open '%s': %s", path, strerror(errno));
	if (S_ISDIR(sb.st_mode)) {
		if (asprintf(&c, "%s/config.json", path) < 0)
			goto nomem;
		if (!is_file(c)) {
			char *t;

			/* a pipeline folder (model_index.json, transformer/, vae/ ...) */
			if (asprintf(&t, "%s/transformer", path) < 0)
				goto nomem;
			if (is_dir(t)) {
				free(c);
				c = NULL;
				if (asprintf(&c, "%s/config.json", t) < 0) {
					free(t);
					goto nomem;
				}
				d = t;
			} else {
				free(t);
			}
		}
		if (!d && !(d = dupstr(path)))
			goto nomem;
	} else {
		const char *base = strrchr(path, '/');
		size_t dl = base ? (size_t)(base - path) : 1;

		base = base ? base + 1 : path;
		/* one shard of an indexed set stands for the set */
		if (!(d = shard_index(path)) && !(d = dupstr(path)))
			goto nomem;
		/* a file inside a diffusers folder: its config.json applies */
		if (ends(base, ".index.json") || starts(base, "diffusion_pytorch_model")) {
			if (asprintf(&c, "%.*s/config.json", (int)dl,
				     base == path ? "." : path) < 0)
				goto nomem;
		}
	}
	if (c && !is_file(c)) {
		free(c);
		c = NULL;
	}
	*src = d;
	*cfg = c;
	return 0;
nomem:
	free(d);
	free(c);
	return fx_error(err, FX_E_NOMEM, "out of memory");
}

static int check_config(struct fx_model *m, struct fx_err *err)
{
	const struct fx_model_config *c = &m->cfg;
	const char *where = m->cfg_file ? m->cfg_path : m->src;
	int i, sum = 0;

	if (c->hidden < 1 || c->hidden > (1 << 16))
		return fx_error(err, FX_E_FORMAT, "hidden size %d is out of range 1..65536 (in '%s')",
				c->hidden, where);
	for (i = 0; i < 3; i++) {
		if (c->axes[i] < 0 || c->axes[i] % 2)
			break;
		sum += c->axes[i];
	}
	if (i < 3 || sum != c->head_dim)
		return fx_error(err, FX_E_FORMAT,
				"rope axes [%d,%d,%d] must be even and sum to the head dim %d (in '%s')",
				c->axes[0], c->axes[1], c->axes[2], c->head_dim, where);
	return 0;
}

/* ---- validation and the internal view -------------------------------- */

static bool source_dtype(enum fx_dtype dt)
{
	return dt == FX_BF16 || dt == FX_F16 || dt == FX_F32 || dt == FX_F8_E4M3 ||
	       dt == FX_F8_E5M2;
}

/* The per-tensor scale some FP8 exports carry beside "<base>.weight":
 * "<base>.scale_weight" (ComfyUI) or "<base>.weight_scale". Applied on
 * widening: value = stored * scale. */
static int want_scale(struct fx_model *m, const struct fx_tensor *t, struct fx_err *err)
{
	static const char *const suffix[] = { ".scale_weight", "_scale" };
	const char *n = t->name;
	size_t len = strlen(n), i;
	const struct fx_tensor *sc = NULL;
	char nm[NAME_CAP];
	float v;

	if (!ends(n, ".weight"))
		return 0;
	for (i = 0; i < FX_ARRAY_SIZE(suffix) && !sc; i++) {
		size_t keep_len = i == 0 ? len - strlen(".weight") : len;

		if (snprintf(nm, sizeof(nm), "%.*s%s", (int)keep_len, n, suffix[i]) < (int)sizeof(nm))
			sc = fx_stset_find(m->set, nm);
	}
	if (!sc)
		return 0;
	if (fx_tensor_numel(sc) != 1 || !source_dtype(sc->dtype) || sc->dtype == FX_F8_E4M3 ||
	    sc->dtype == FX_F8_E5M2)
		return fx_error(err, FX_E_FORMAT,
				"tensor '%s' (the scale of '%s') is %s of %llu elements, expected one F32, BF16 or F16 value (in '%s')",
				sc->name, n, fx_dtype_name(sc->dtype),
				(unsigned long long)fx_tensor_numel(sc), file_of(m, sc));
	fx_to_f32(&v, sc->data, sc->dtype, 1);
	if (!isfinite(v) || v == 0.0f)
		return fx_error(err, FX_E_VALUE, "tensor '%s' (the scale of '%s') is %g (in '%s')",
				sc->name, n, (double)v, file_of(m, sc));
	if (grow(&m->scaled, &m->capscaled, m->nscaled + 1, sizeof(*m->scaled)) < 0 ||
	    grow(&m->used, &m->capused, m->nused + 1, sizeof(*m->used)) < 0)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	m->scaled[m->nscaled++] = (struct scaled){ t, sc, v };
	m->used[m->nused++] = sc;
	return 0;
}

static int cmp_scaled(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)((const struct scaled *)a)->t;
	uintptr_t y = (uintptr_t)((const struct scaled *)b)->t;

	return x < y ? -1 : x > y;
}

static const struct scaled *scaled_of(const struct fx_model *m, const struct fx_tensor *t)
{
	struct scaled key = { t, NULL, 0 };

	if (!m->nscaled)
		return NULL;
	return bsearch(&key, m->scaled, m->nscaled, sizeof(*m->scaled), cmp_scaled);
}

static float scale_of(const struct fx_model *m, const struct fx_tensor *t)
{
	const struct scaled *sc = scaled_of(m, t);

	return sc ? sc->s : 1.0f;
}

const struct fx_tensor *fx_model_scale_tensor(const struct fx_model *m, const struct fx_tensor *t)
{
	const struct scaled *sc = scaled_of(m, t);

	return sc ? sc->scale : NULL;
}

int fx_model_build_want(struct fx_model *m, const char *name, int ndim, int64_t d0, int64_t d1,
		const struct fx_tensor **out, struct fx_err *err)
{
	int64_t shape[2] = { d0, d1 };
	const struct fx_tensor *t = find(m, name);
	char a[64], b[64];

	fx_shape_str(b, sizeof(b), ndim, shape);
	if (!t)
		return fx_error(err, FX_E_FORMAT, "missing tensor '%s%s', expected shape %s (in '%s')",
				m->prefix, name, b, m->src);
	if (!source_dtype(t->dtype))
		return fx_error(err, FX_E_FORMAT,
				"tensor '%s' has dtype %s, expected BF16, F16, F32, F8_E4M3 or F8_E5M2 (in '%s')",
				t->name, fx_dtype_name(t->dtype), file_of(m, t));
	if (t->ndim != ndim || t->shape[0] != d0 || (ndim == 2 && t->shape[1] != d1))
		return fx_error(err, FX_E_FORMAT, "tensor '%s' has shape %s, expected %s (in '%s')",
				t->name, fx_shape_str(a, sizeof(a), t->ndim, t->shape), b,
				file_of(m, t));
	if (grow(&m->used, &m->capused, m->nused + 1, sizeof(*m->used)) < 0)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	m->used[m->nused++] = t;
	*out = t;
	return want_scale(m, t, err);
}

/* "<base>.weight" [n,k] and "<base>.bias" [n]. */
int fx_model_build_want_linear(struct fx_model *m, const char *base, int64_t n, int64_t k,
		       const struct fx_tensor **w, const struct fx_tensor **b, struct fx_err *err)
{
	char nm[NAME_CAP];
	int ret;

	snprintf(nm, sizeof(nm), "%s.weight", base);
	if ((ret = fx_model_build_want(m, nm, 2, n, k, w, err)) < 0 || !b)
		return ret;
	snprintf(nm, sizeof(nm), "%s.bias", base);
	return fx_model_build_want(m, nm, 1, n, 0, b, err);
}

int fx_model_build_plain(struct fx_model *m, const char *dname, const char *srcname, int ndim,
		     int64_t d0, int64_t d1, bool swap, struct fx_err *err)
{
	const struct fx_tensor *t;
	struct plain *p;
	int ret = fx_model_build_want(m, srcname, ndim, d0, d1, &t, err);

	if (ret < 0)
		return ret;
	if (grow(&m->plain, &m->capplain, m->nplain + 1, sizeof(*m->plain)) < 0)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	p = &m->plain[m->nplain];
	if (!(p->name = dupstr(dname)))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	p->t = t;
	p->swap = swap;
	m->nplain++;
	return 0;
}

struct fx_group *fx_model_build_group(struct fx_model *m, bool single, int blk, const char *fused,
				  enum fx_group_kind kind, int64_t n, int64_t k, int chunks,
				  bool gelu)
{
	struct fx_group *g;
	char pre[64];

	if (grow(&m->groups, &m->capgroups, m->ngroups + 1, sizeof(*m->groups)) < 0)
		return NULL;
	g = &m->groups[m->ngroups++];
	memset(g, 0, sizeof(*g));
	snprintf(g->name, sizeof(g->name), "%s.%s", fx_block_prefix(pre, sizeof(pre), single, blk),
		 fused);
	g->fused = fused;
	g->block = blk;
	g->single = single;
	g->kind = kind;
	g->n = n;
	g->k = k;
	g->adaln_chunks = chunks;
	g->gelu_input = gelu;
	g->family = m->cfg.family;
	return g;
}

int fx_model_build_member(struct fx_model *m, struct fx_group *g, const char *name,
		      const struct fx_tensor *w, const struct fx_tensor *b, int64_t row0,
		      int64_t nrows, int64_t col0, int64_t out_row0, struct fx_err *err)
{
	struct fx_member *mb;

	FX_ASSERT(g->nmembers < FX_GROUP_MAX_MEMBERS);
	mb = &g->members[g->nmembers];
	if (!(mb->name = keep(m, name)))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	mb->weight = w;
	mb->bias = b;
	mb->row0 = row0;
	mb->nrows = nrows;
	mb->col0 = col0;
	mb->ncols = g->k;
	mb->out_row0 = out_row0;
	g->nmembers++;
	return 0;
}

static int cmp_ptr(const void *a, const void *b)
{
	uintptr_t x = (uintptr_t)*(const void *const *)a, y = (uintptr_t)*(const void *const *)b;

	return x < y ? -1 : x > y;
}

/* Components of all-in-one files (ComfyUI, A1111) beside the transformer. */
static const char *const foreign[] = {
	"vae.", "first_stage_model.", "text_encoders.", "cond_stage_model.", "conditioner.",
	"text_encoder.", "text_encoder_2.", "model_ema.",
};

/* FP8 exports' activation scales and format marker: not used by a
 * weight-only reader. */
static bool fp8_extra(const char *n)
{
	return ends(n, ".scale_input") || ends(n, ".input_scale") || !strcmp(n, "scaled_fp8");
}

struct ignored {
	const char *what;
	size_t n;
};

static void note_ignored(const struct fx_model *m, struct ignored *ig, size_t nig, size_t fp8)
{
	char list[512];
	size_t used = 0, total = 0, i;

	list[0] = '\0';
	for (i = 0; i < nig; i++) {
		int k = snprintf(list + used, sizeof(list) - used, "%s%s%s %zu", i ? ", " : "",
				 ig[i].what, ends(ig[i].what, ".") ? "*" : "", ig[i].n);

		total += ig[i].n;
		if (k > 0 && (size_t)k < sizeof(list) - used)
			used += (size_t)k;
	}
	if (total)
		fx_log_info("note: '%s': %zu tensors outside the transformer ignored (%s)", m->src,
			    total, list);
	if (fp8)
		fx_log_info("note: '%s': %zu FP8 activation scales and markers ignored "
			    "(*.scale_input, *.input_scale, scaled_fp8)", m->src, fp8);
}

static int check_unexpected(struct fx_model *m, struct fx_err *err)
{
	struct ignored ig[FX_ARRAY_SIZE(foreign) + 1];
	size_t nig = 0, fp8 = 0, i, j;
	size_t plen = strlen(m->prefix);
	char what_[256];

	if (m->nused)
		qsort(m->used, m->nused, sizeof(*m->used), cmp_ptr);
	for (i = 0; i < fx_stset_count(m->set); i++) {
		const struct fx_tensor *t = fx_stset_at(m->set, i);
		const char *n = t->name, *what = NULL;

		if (m->nused && bsearch(&t, m->used, m->nused, sizeof(*m->used), cmp_ptr))
			continue;
		for (j = 0; j < FX_ARRAY_SIZE(foreign) && !what; j++)
			if (starts(n, foreign[j]))
				what = foreign[j];
		/* an all-in-one file: what is not under the transformer's prefix */
		if (!what && plen && !starts(n, m->prefix))
			what = "other";
		if (what) {
			for (j = 0; j < nig && strcmp(ig[j].what, what); j++)
				;
			if (j == nig)
				ig[nig++] = (struct ignored){ what, 0 };
			ig[j].n++;
			continue;
		}
		if (fp8_extra(n + plen)) {
			fp8++;
			continue;
		}
		m->cfg.family->describe(&m->cfg, what_, sizeof(what_));
		return fx_error(err, FX_E_FORMAT, "unexpected tensor '%s' for %s (in '%s')", t->name,
				what_, file_of(m, t));
	}
	note_ignored(m, ig, nig, fp8);
	return 0;
}

/* Sorts the scale table and points each member at its weight's scale. */
static void link_scales(struct fx_model *m)
{
	size_t i;
	int j;

	if (m->nscaled)
		qsort(m->scaled, m->nscaled, sizeof(*m->scaled), cmp_scaled);
	for (i = 0; i < m->ngroups; i++)
		for (j = 0; j < m->groups[i].nmembers; j++) {
			struct fx_member *mb = &m->groups[i].members[j];

			mb->wscale = fx_model_scale_tensor(m, mb->weight);
		}
}

int fx_model_config_to_json(const struct fx_model_config *c, char **out, struct fx_err *err)
{
	*out = NULL;
	if (!c->family)
		return fx_error(err, FX_E_ARG, "model config without a family");
	return c->family->config_to_json(c, out, err);
}

/* The family whose config.json class this is, or NULL. */
static const struct fx_family *family_of_config(const struct fx_family *const *fams,
						 const char *text)
{
	json_t *o = json_loads(text, 0, NULL), *j;
	const struct fx_family *f = NULL;

	j = o ? json_object_get(o, "_class_name") : NULL;
	for (; j && json_is_string(j) && *fams && !f; fams++)
		if (!strcmp((*fams)->diffusers_class, json_string_value(j)))
			f = *fams;
	json_decref(o);
	return f;
}

int fx_model_open_families(struct fx_model **out, const char *path,
			   const struct fx_family *const *fams, struct fx_err *err)
{
	struct fx_model *m = calloc(1, sizeof(*m));
	const struct fx_family *fam = NULL;
	char *text = NULL;
	size_t len;
	int ret = 0;

	*out = NULL;
	if (!m)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	m->prefix = "";
	if ((ret = fx_model_resolve(path, &m->src, &m->cfg_path, err)) < 0)
		goto out;
	if ((ret = fx_stset_open(&m->set, m->src, err)) < 0)
		goto out;
	if (m->cfg_path &&
	    (ret = fx_read_file(&text, &len, m->cfg_path, CONFIG_MAX, err)) < 0)
		goto out;
	/* a config.json names its family; else the tensors do */
	if (text && (fam = family_of_config(fams, text)) &&
	    (ret = fam->detect(m, true, err)) <= 0) {
		if (!ret)
			ret = fx_error(err, FX_E_FORMAT, "'%s' is not a %s transformer", m->src,
				       fam->title);
		goto out;
	}
	for (; !fam && *fams; fams++) {
		ret = (*fams)->detect(m, !fams[1], err);
		if (ret < 0)
			goto out;
		if (ret)
			fam = *fams;
	}
	if (!fam) {
		ret = fx_error(err, FX_E_FORMAT, "'%s' is not a model fx knows", m->src);
		goto out;
	}
	m->cfg.family = fam;
	if (text) {
		if ((ret = fam->parse_config(m, text, m->cfg_path, err)) < 0)
			goto out;
		m->cfg_json = text;
		text = NULL;
		m->cfg_file = true;
	} else {
		if ((ret = fam->infer_config(m, err)) < 0)
			goto out;
		if ((ret = fam->config_to_json(&m->cfg, &m->cfg_json, err)) < 0)
			goto out;
	}
	m->cfg.family = fam;
	if ((ret = check_config(m, err)) < 0 || (ret = fam->build(m, err)) < 0 ||
	    (ret = check_unexpected(m, err)) < 0)
		goto out;
	link_scales(m);
	*out = m;
	m = NULL;
out:
	free(text);
	fx_model_close(m);
	return ret;
}

/* ---- LoRAs ------------------------------------------------------------- */

static int cmp_pair(const void *a, const void *b)
{
	const struct pair *x = a, *y = b;
	uintptr_t p = (uintptr_t)x->t, q = (uintptr_t)y->t;

	if (p != q)
		return p < q ? -1 : 1;
	return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/* The pairs on t: *first and their count. */
static size_t pairs_of(const struct fx_model *m, const struct fx_tensor *t, const struct pair **first)
{
	size_t lo = 0, hi = m->npairs, n = 0;

	*first = NULL;
	if (!t)
		return 0;
	while (lo < hi) {
		size_t mid = lo + (hi - lo) / 2;

		if ((uintptr_t)m->pairs[mid].t < (uintptr_t)t)
			lo = mid + 1;
		else
			hi = mid;
	}
	while (lo + n < m->npairs && m->pairs[lo + n].t == t)
		n++;
	if (n)
		*first = &m->pairs[lo];
	return n;
}

static int add_pair(struct fx_model *m, const struct fx_tensor *t, const struct fx_lora_entry *e,
		    const char *file, int64_t row0, int64_t nrows, int64_t up_row0, bool bias,
		    struct fx_err *err)
{
	if (grow(&m->pairs, &m->cappairs, m->npairs + 1, sizeof(*m->pairs)) < 0)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	m->pairs[m->npairs] = (struct pair){ t, e, file, row0, nrows, up_row0, bias, m->npairs };
	m->npairs++;
	return 0;
}

/* Module rows [e->mrow0, +e->nrows) of a module held at rows [trow0,
 * trow0+n) of t (swap: BFL norm_out, module row r at source row
 * (r + n/2) % n) as pairs on t. */
static int add_pairs(struct fx_model *m, const struct fx_tensor *t, const struct fx_lora_entry *e,
		     const char *file, int64_t trow0, int64_t n, bool swap, bool bias,
		     struct fx_err *err)
{
	int64_t a = e->mrow0, b = e->mrow0 + e->nrows, h = n / 2, lo, hi;
	int ret;

	if (!swap)
		return add_pair(m, t, e, file, trow0 + a, b - a, e->up_row0, bias, err);
	/* module rows below h sit at source rows + h, the others at - h */
	lo = a;
	hi = b < h ? b : h;
	if (lo < hi && (ret = add_pair(m, t, e, file, trow0 + lo + h, hi - lo, e->up_row0, bias,
				       err)) < 0)
		return ret;
	lo = a > h ? a : h;
	hi = b;
	if (lo < hi)
		return add_pair(m, t, e, file, trow0 + lo - h, hi - lo, e->up_row0 + (lo - a), bias,
				err);
	return 0;
}

/* One LoRA entry onto the tensors of the module it names. */
static int bind_entry(struct fx_model *m, const struct fx_lora_file *lf, const struct fx_lora_entry *e,
		      struct fx_err *err)
{
	const char *file = fx_lora_file_path(lf);
	const struct fx_tensor *w = NULL, *b = NULL;
	const struct plain *pw = NULL, *pb = NULL;
	int64_t trow0 = 0, n = 0;
	char nm[NAME_CAP], s1[64], s2[64];
	bool swap = false;
	size_t i;
	int j, ret;

	for (i = 0; i < m->ngroups; i++)
		for (j = 0; j < m->groups[i].nmembers; j++) {
			const struct fx_member *mb = &m->groups[i].members[j];

			if (strcmp(mb->name, e->module))
				continue;
			if (!w) {
				w = mb->weight;
				trow0 = mb->row0;
				n = mb->nrows;
			}
			if (!b)
				b = mb->bias;
		}
	if (!w) {
		snprintf(nm, sizeof(nm), "%s.weight", e->module);
		pw = find_plain(m, nm);
		snprintf(nm, sizeof(nm), "%s.bias", e->module);
		pb = find_plain(m, nm);
		if (pw && pw->t->ndim == 2) {
			w = pw->t;
			b = pb ? pb->t : NULL;
			n = w->shape[0];
			swap = pw->swap;
		}
	}
	if (!w)
		return fx_error(err, FX_E_FORMAT,
				"LoRA key '%s' is for '%s', which the model '%s' does not have (in '%s')",
				e->key, e->module, m->src, file);
	if (e->down->shape[1] != w->shape[1])
		return fx_error(err, FX_E_FORMAT,
				"LoRA layer '%s' has down %s, but '%s' takes %lld inputs (tensor '%s' %s, in '%s')",
				e->key, fx_shape_str(s1, sizeof(s1), e->down->ndim, e->down->shape),
				e->module, (long long)w->shape[1], w->name,
				fx_shape_str(s2, sizeof(s2), w->ndim, w->shape), file);
	if (e->mrows != n)
		return fx_error(err, FX_E_FORMAT,
				"LoRA layer '%s' has up %s for %lld outputs, but '%s' has %lld (tensor '%s', in '%s')",
				e->key, fx_shape_str(s1, sizeof(s1), e->up->ndim, e->up->shape),
				(long long)e->mrows, e->module, (long long)n, w->name, file);
	if ((ret = add_pairs(m, w, e, file, trow0, n, swap, false, err)) < 0)
		return ret;
	if (!e->bias)
		return 0;
	if (!b)
		return fx_error(err, FX_E_FORMAT,
				"LoRA layer '%s' changes the bias of '%s', which has none (in '%s')",
				e->key, e->module, file);
	return add_pairs(m, b, e, file, trow0, n, swap, true, err);
}

/* g->lora: the pairs on its members' rows, in order, as one digest. */
static void group_digest(struct fx_model *m, struct fx_group *g)
{
	struct fx_sha256 *h = NULL;
	int i, k;

	g->lora[0] = '\0';
	for (i = 0; i < g->nmembers; i++) {
		const struct fx_member *mb = &g->members[i];

		for (k = 0; k < 2; k++) {
			const struct fx_tensor *t = k ? mb->bias : mb->weight;
			const struct pair *p;
			size_t np = pairs_of(m, t, &p), q;

			for (q = 0; q < np; q++) {
				char txt[160];

				if (p[q].row0 >= mb->row0 + mb->nrows || p[q].row0 + p[q].nrows <= mb->row0)
					continue;
				if (!h)
					h = fx_sha256_new();
				snprintf(txt, sizeof(txt), "%d|%d|%lld|%lld|%lld|", i, k,
					 (long long)p[q].row0, (long long)p[q].nrows,
					 (long long)p[q].up_row0);
				fx_sha256_update(h, txt, strlen(txt));
				fx_sha256_update(h, p[q].e->digest, 64);
			}
		}
	}
	if (h)
		fx_sha256_final(h, g->lora);
}

int fx_model_open_loras_families(struct fx_model **out, const char *path,
				 const struct fx_loras *l, const struct fx_family *const *fams,
				 struct fx_err *err)
{
	struct fx_model *m = NULL;
	size_t i, k;
	int ret;

	if ((ret = fx_model_open_families(&m, path, fams, err)) < 0)
		return ret;
	*out = NULL;
	if (l && l->n) {
		m->loras = calloc((size_t)l->n, sizeof(*m->loras));
		if (!m->loras) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
	}
	for (i = 0; l && i < (size_t)l->n; i++) {
		struct fx_lora_file *lf = NULL;

		ret = fx_lora_file_open(&lf, l->v[i].path, l->v[i].scale, l->ignore_unknown,
					m->cfg.hidden, m->cfg.mlp_hidden, err);
		if (ret < 0)
			goto out;
		m->loras[m->nloras++] = lf;
		for (k = 0; k < fx_lora_file_count(lf); k++)
			if ((ret = bind_entry(m, lf, fx_lora_file_entry(lf, k), err)) < 0)
				goto out;
	}
	if (m->npairs)
		qsort(m->pairs, m->npairs, sizeof(*m->pairs), cmp_pair);
	for (i = 0; i < m->ngroups; i++)
		group_digest(m, &m->groups[i]);
	*out = m;
	m = NULL;
out:
	fx_model_close(m);
	return ret;
}

size_t fx_model_nloras(const struct fx_model *m)
{
	return m->nloras;
}

const struct fx_lora_file *fx_model_lora(const struct fx_model *m, size_t i)
{
	return i < m->nloras ? m->loras[i] : NULL;
}

bool fx_model_group_merged(const struct fx_model *m, const struct fx_group *g)
{
	(void)m;
	return g->lora[0] != '\0';
}

bool fx_model_tensor_merged(const struct fx_model *m, const struct fx_tensor *t)
{
	const struct pair *p;

	return pairs_of(m, t, &p) > 0;
}

void fx_model_close(struct fx_model *m)
{
	size_t i;

	if (!m)
		return;
	for (i = 0; i < m->nloras; i++)
		fx_lora_file_close(m->loras[i]);
	free(m->loras);
	free(m->pairs);
	fx_stset_close(m->set);
	for (i = 0; i < m->nplain; i++)
		free(m->plain[i].name);
	for (i = 0; i < m->nstrs; i++)
		free(m->strs[i]);
	free(m->plain);
	free(m->strs);
	free(m->groups);
	free(m->used);
	free(m->scaled);
	free(m->cfg_json);
	free(m->cfg_path);
	free(m->src);
	free(m);
}

const struct fx_model_config *fx_model_config(const struct fx_model *m)
{
	return &m->cfg;
}

enum fx_layout fx_model_layout(const struct fx_model *m)
{
	return m->layout;
}

const struct fx_stset *fx_model_files(const struct fx_model *m)
{
	return m->set;
}

const char *fx_model_config_json(const struct fx_model *m)
{
	return m->cfg_json;
}

bool fx_model_config_from_file(const struct fx_model *m)
{
	return m->cfg_file;
}

size_t fx_model_ngroups(const struct fx_model *m)
{
	return m->ngroups;
}

const struct fx_group *fx_model_group(const struct fx_model *m, size_t i)
{
	return i < m->ngroups ? &m->groups[i] : NULL;
}

const struct fx_group *fx_model_find_group(const struct fx_model *m, const char *name)
{
	size_t i;

	for (i = 0; i < m->ngroups; i++)
		if (strcmp(m->groups[i].name, name) == 0)
			return &m->groups[i];
	return NULL;
}

const char *fx_block_prefix(char *buf, size_t cap, bool single, int block)
{
	snprintf(buf, cap, "%s.%d", single ? "single_transformer_blocks" : "transformer_blocks",
		 block);
	return buf;
}

/* ---- conversion ------------------------------------------------------ */

/* One element of a source tensor as f32, its scale applied. */
static float elem_f32(const unsigned char *p, enum fx_dtype dt, float scale)
{
	float f;

	switch (dt) {
	case FX_F32:
		memcpy(&f, p, 4);
		break;
	case FX_BF16:
	case FX_F16: {
		uint16_t h;

		memcpy(&h, p, 2);
		f = dt == FX_BF16 ? fx_bf16_to_f32(h) : fx_f16_to_f32(h);
		break;
	}
	case FX_F8_E4M3:
		f = fx_e4m3_to_f32(*p);
		break;
	default:   /* FX_F8_E5M2: want() admits no other dtype */
		f = fx_e5m2_to_f32(*p);
		break;
	}
	return scale == 1.0f ? f : f * scale;
}

/* Copies rows [row0,row0+nrows) x cols [col0,col0+ncols) of t (viewed as
 * shape[0] rows of numel/shape[0]) into dst rows of dst_ld elements, as f32
 * or BF16, each value times scale (1: FP8 and F16 widen exactly; BF16
 * copies). With swap, dst row r takes source row (r + nrows/2) % nrows.
 * Returns the smallest source element index holding NaN/Inf, or -1. */
static int64_t copy_rows(void *dst, bool bf16, int64_t dst_ld, const struct fx_tensor *t,
			 float scale, int64_t row0, int64_t nrows, int64_t col0, int64_t ncols,
			 bool swap)
{
	const unsigned char *base = t->data;
	int64_t ld = t->ndim > 1 ? t->shape[1] : 1;
	int64_t bad = INT64_MAX, r;
	enum fx_dtype dt = t->dtype;
	size_t es = fx_dtype_size(dt);
	bool plain_bf16 = dt == FX_BF16 && scale == 1.0f;
	/* more than the caches hold: streaming stores */
	bool stream = (size_t)(nrows * ncols) * sizeof(float) > ((size_t)16 << 20);

#pragma omp parallel for schedule(static) reduction(min : bad) if (nrows * ncols > 65536)
	for (r = 0; r < nrows; r++) {
		int64_t sr = row0 + (swap ? (r + nrows / 2) % nrows : r);
		int64_t s0 = sr * ld + col0, c;
		const unsigned char *s = base + (size_t)s0 * es;
		float *df = bf16 ? NULL : (float *)dst + r * dst_ld;
		uint16_t *dh = bf16 ? (uint16_t *)dst + r * dst_ld : NULL;
		int64_t first = -1;

		/* hot path: widen BF16, find a bad value only when there is one */
		if (plain_bf16 && df && !fx_bf16_widen(df, s, (size_t)ncols, stream))
			continue;
		if (plain_bf16 && dh && !fx_bf16_copy(dh, s, (size_t)ncols))
			continue;
		for (c = 0; c < ncols; c++) {
			float f = elem_f32(s + es * (size_t)c, dt, scale);

			if (!isfinite(f) && first < 0)
				first = s0 + c;
			if (df) {
				df[c] = f;
			} else if (plain_bf16) {
				memcpy(&dh[c], s + 2 * c, 2);
			} else {
				dh[c] = fx_f32_to_bf16(f);
			}
		}
		if (first >= 0 && first < bad)
			bad = first;
	}
	return bad == INT64_MAX ? -1 : bad;
}

static int value_error(const struct fx_model *m, const struct fx_tensor *t, int64_t idx,
		       struct fx_err *err)
{
	const unsigned char *p = (const unsigned char *)t->data + (size_t)idx * fx_dtype_size(t->dtype);
	float raw = elem_f32(p, t->dtype, 1.0f), f = raw * scale_of(m, t);
	const char *what;
	char at[64];

	what = isnan(f) ? "NaN" : f > 0 ? "Inf" : "-Inf";
	if (t->ndim > 1)
		snprintf(at, sizeof(at), "[%lld,%lld]", (long long)(idx / t->shape[1]),
			 (long long)(idx % t->shape[1]));
	else
		snprintf(at, sizeof(at), "[%lld]", (long long)idx);
	if (isfinite(raw))   /* finite as stored: the scale overflowed it */
		return fx_error(err, FX_E_VALUE, "tensor '%s' has %s at %s after its scale %g (in '%s')",
				t->name, what, at, (double)scale_of(m, t), file_of(m, t));
	return fx_error(err, FX_E_VALUE, "tensor '%s' has %s at %s (in '%s')", t->name, what, at,
			file_of(m, t));
}

/* LoRA tensors to f32: BF16 (the usual dtype) by the vector path. */
static void widen(float *dst, const void *src, enum fx_dtype dt, size_t n)
{
	if (dt == FX_BF16)
		fx_bf16_widen(dst, src, n, false);
	else
		fx_to_f32(dst, src, dt, n);
}

/* d[c] += f·Σ_j u[j]·a[j,c], the sum in j order in acc: no contraction
 * (ISO C), so the bytes are those of the plain loop on every CPU. */
static void lora_row(float *restrict d, float *restrict acc, const float *restrict u,
		     const float *restrict a, int64_t r, int64_t n, float f)
{
#pragma omp simd
	for (int64_t c = 0; c < n; c++)
		acc[c] = 0.0f;
	for (int64_t j = 0; j < r; j++) {
		const float uj = u[j], *restrict aj = a + j * n;

#pragma omp simd
		for (int64_t c = 0; c < n; c++)
			acc[c] += uj * aj[c];
	}
#pragma omp simd
	for (int64_t c = 0; c < n; c++)
		d[c] = d[c] + acc[c] * f;
}

/* dst (rows of copy_rows' region, f32, dst_ld apart) += the LoRA products
 * on t, pair after pair (the order the LoRAs were given). Each element is
 * factor·Σ_j up[i,j]·down[j,c], j in order, then added: the same bytes
 * whatever the rows read at once or the threads. A sum that is no longer
 * finite is FX_E_VALUE naming the tensor, the element and the LoRA. */
static int add_loras(const struct fx_model *m, float *dst, int64_t dst_ld, const struct fx_tensor *t,
		     const struct pair *p, size_t np, int64_t row0, int64_t nrows, int64_t col0,
		     int64_t ncols, bool swap, struct fx_err *err)
{
	int64_t tld = t->ndim > 1 ? t->shape[1] : 1;
	float *a = NULL, *u = NULL;
	int ret = 0;

	for (size_t q = 0; q < np && ret == 0; q++) {
		const struct pair *pq = &p[q];
		const struct fx_lora_entry *e = pq->e;
		const float f = (float)e->factor;
		int64_t lo = row0 > pq->row0 ? row0 : pq->row0;
		int64_t hi = row0 + nrows < pq->row0 + pq->nrows ? row0 + nrows : pq->row0 + pq->nrows;
		int64_t r = e->down->shape[0], K = e->down->shape[1], bad = -1, badc = 0;
		size_t ues = fx_dtype_size(e->up->dtype), des = fx_dtype_size(e->down->dtype);
		bool oom = false;

		if (lo >= hi)
			continue;
		if (pq->bias) {
			/* a bias read as rows of one element */
			float v;

			for (int64_t i = 0; i < nrows; i++) {
				int64_t sr = row0 + (swap ? (i + nrows / 2) % nrows : i);

				if (sr < lo || sr >= hi)
					continue;
				fx_to_f32(&v, (const char *)e->bias->data +
					  (size_t)(pq->up_row0 + sr - pq->row0) * fx_dtype_size(e->bias->dtype),
					  e->bias->dtype, 1);
				dst[i * dst_ld] = dst[i * dst_ld] + v * f;
				if (!isfinite(dst[i * dst_ld]) && bad < 0)
					bad = sr;
			}
		} else {
			/* down's columns of the region and up's rows, widened once */
			a = malloc((size_t)(r * ncols) * sizeof(float));
			u = malloc((size_t)(r * (hi - lo)) * sizeof(float));
			if (!a || !u) {
				ret = fx_error(err, FX_E_NOMEM, "out of memory");
				break;
			}
			for (int64_t j = 0; j < r; j++)
				widen(a + j * ncols, (const char *)e->down->data + (size_t)(j * K + col0) * des,
				      e->down->dtype, (size_t)ncols);
			widen(u, (const char *)e->up->data + (size_t)((pq->up_row0 + lo - pq->row0) * r) * ues,
			      e->up->dtype, (size_t)(r * (hi - lo)));
#pragma omp parallel if ((hi - lo) * ncols * r > 262144)
			{
				float *acc = malloc((size_t)ncols * sizeof(float));

#pragma omp for schedule(static)
				for (int64_t i = 0; i < nrows; i++) {
					int64_t sr = row0 + (swap ? (i + nrows / 2) % nrows : i);
					const float *ui = u + (sr - lo) * r;
					float *d = dst + i * dst_ld;

					if (sr < lo || sr >= hi)
						continue;
					if (!acc) {
#pragma omp atomic write
						oom = true;
						continue;
					}
					lora_row(d, acc, ui, a, r, ncols, f);
					for (int64_t c = 0; c < ncols; c++)
						if (!isfinite(d[c])) {
#pragma omp critical(fx_model_lora_bad)
							if (bad < 0 || sr < bad || (sr == bad && c < badc)) {
								bad = sr;
								badc = c;
							}
							break;
						}
				}
				free(acc);
			}
			free(a);
			free(u);
			a = u = NULL;
			if (oom)
				ret = fx_error(err, FX_E_NOMEM, "out of memory");
		}
		if (ret == 0 && bad >= 0) {
			char at[64];

			if (t->ndim > 1)
				snprintf(at, sizeof(at), "[%lld,%lld]", (long long)bad, (long long)(col0 + badc));
			else
				snprintf(at, sizeof(at), "[%lld]", (long long)bad);
			ret = fx_error(err, FX_E_VALUE,
				       "tensor '%s' is not finite at %s after merging LoRA layer '%s' (in '%s')",
				       t->name, at, e->key, pq->file);
		}
	}
	free(a);
	free(u);
	(void)m;
	(void)tld;
	return ret;
}

/* copy_rows through the LoRAs: the values the model holds, merged; BF16
 * destinations get the merged f32 sum rounded once. */
static int read_rows(const struct fx_model *m, void *dst, bool bf16, int64_t dst_ld,
		     const struct fx_tensor *t, int64_t row0, int64_t nrows, int64_t col0,
		     int64_t ncols, bool swap, struct fx_err *err)
{
	const struct pair *p;
	size_t np = pairs_of(m, t, &p);
	float *tmp = NULL;
	int64_t bad;
	int ret;

	if (!np || !bf16) {
		bad = copy_rows(dst, bf16, dst_ld, t, scale_of(m, t), row0, nrows, col0, ncols, swap);
		if (bad >= 0)
			return value_error(m, t, bad, err);
		return np ? add_loras(m, dst, dst_ld, t, p, np, row0, nrows, col0, ncols, swap, err) : 0;
	}
	tmp = malloc((size_t)(nrows * ncols) * sizeof(float));
	if (!tmp)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	bad = copy_rows(tmp, false, ncols, t, scale_of(m, t), row0, nrows, col0, ncols, swap);
	ret = bad >= 0 ? value_error(m, t, bad, err)
		       : add_loras(m, tmp, ncols, t, p, np, row0, nrows, col0, ncols, swap, err);
	for (int64_t r = 0; ret == 0 && r < nrows; r++)
		for (int64_t c = 0; c < ncols; c++)
			((uint16_t *)dst)[r * dst_ld + c] = fx_f32_to_bf16(tmp[r * ncols + c]);
	free(tmp);
	return ret;
}

static int group_convert(const struct fx_model *m, const struct fx_group *g, void *w, bool bf16,
			 float *b, struct fx_err *err)
{
	size_t es = bf16 ? 2 : 4;
	int i;

	if (b)
		memset(b, 0, (size_t)g->n * sizeof(*b));
	for (i = 0; i < g->nmembers; i++) {
		const struct fx_member *mb = &g->members[i];
		int ret;

		if (w && (ret = read_rows(m, (char *)w + (size_t)(mb->out_row0 * g->k) * es, bf16, g->k,
					  mb->weight, mb->row0, mb->nrows, mb->col0, mb->ncols, false,
					  err)) < 0)
			return ret;
		if (b && mb->bias &&
		    (ret = read_rows(m, b + mb->out_row0, false, 1, mb->bias, mb->row0, mb->nrows, 0, 1,
				     false, err)) < 0)
			return ret;
	}
	return 0;
}

int fx_model_group_f32(const struct fx_model *m, const struct fx_group *g, float *w, float *b,
		       struct fx_err *err)
{
	return group_convert(m, g, w, false, b, err);
}

int fx_model_group_bf16(const struct fx_model *m, const struct fx_group *g, uint16_t *w,
			float *b, struct fx_err *err)
{
	return group_convert(m, g, w, true, b, err);
}

int fx_model_group_rows_f32(const struct fx_model *m, const struct fx_group *g, int64_t r0,
			    int64_t nr, const int64_t *rows, float *dst, struct fx_err *err)
{
	int ret;

	if (rows) {
		struct fx_err first = { 0 };
		int64_t first_i = -1;

		/* one row each; the first bad one in row order is reported */
		#pragma omp parallel for schedule(static) if (nr * g->k > 65536)
		for (int64_t i = 0; i < nr; i++) {
			int64_t r = rows[i];
			struct fx_err e = { 0 };
			int mi = 0;

			while (mi + 1 < g->nmembers && r >= g->members[mi + 1].out_row0)
				mi++;
			if (read_rows(m, dst + i * g->k, false, g->k, g->members[mi].weight,
				      g->members[mi].row0 + (r - g->members[mi].out_row0), 1,
				      g->members[mi].col0, g->members[mi].ncols, false, &e) < 0) {
				#pragma omp critical(fx_model_rows)
				if (first_i < 0 || i < first_i) {
					first_i = i;
					first = e;
				}
			}
		}
		return first_i >= 0 ? fx_error(err, first.code, "%s", first.msg) : 0;
	}
	for (int i = 0; i < g->nmembers; i++) {
		const struct fx_member *mb = &g->members[i];
		int64_t a = r0 > mb->out_row0 ? r0 : mb->out_row0;
		int64_t e = r0 + nr < mb->out_row0 + mb->nrows ? r0 + nr : mb->out_row0 + mb->nrows;

		if (a >= e)
			continue;
		ret = read_rows(m, dst + (a - r0) * g->k, false, g->k, mb->weight,
				mb->row0 + (a - mb->out_row0), e - a, mb->col0, mb->ncols, false, err);
		if (ret < 0)
			return ret;
	}
	return 0;
}

size_t fx_model_nplain(const struct fx_model *m)
{
	return m->nplain;
}

const char *fx_model_plain_name(const struct fx_model *m, size_t i)
{
	return i < m->nplain ? m->plain[i].name : NULL;
}

static const struct plain *find_plain(const struct fx_model *m, const char *name)
{
	size_t i;

	for (i = 0; i < m->nplain; i++)
		if (strcmp(m->plain[i].name, name) == 0)
			return &m->plain[i];
	return NULL;
}

const struct fx_tensor *fx_model_plain(const struct fx_model *m, const char *name)
{
	const struct plain *p = find_plain(m, name);

	return p ? p->t : NULL;
}

static int plain_convert(const struct fx_model *m, const char *name, void *dst, bool bf16,
			 struct fx_err *err)
{
	const struct plain *p = find_plain(m, name);
	int64_t rows, ld;

	if (!p)
		return fx_error(err, FX_E_ARG, "no plain tensor '%s' in the model (in '%s')", name,
				m->src);
	rows = p->t->shape[0];
	ld = p->t->ndim > 1 ? p->t->shape[1] : 1;
	return read_rows(m, dst, bf16, ld, p->t, 0, rows, 0, ld, p->swap, err);
}

int fx_model_plain_bf16(const struct fx_model *m, const char *name, uint16_t *dst,
			struct fx_err *err)
{
	return plain_convert(m, name, dst, true, err);
}

int fx_model_plain_f32(const struct fx_model *m, const char *name, float *dst,
		       struct fx_err *err)
{
	return plain_convert(m, name, dst, false, err);
}

void fx_model_group_release(const struct fx_model *m, const struct fx_group *g)
{
	int i;

	for (i = 0; i < g->nmembers; i++) {
		const struct pair *p;
		size_t np = pairs_of(m, g->members[i].weight, &p), q;

		for (q = 0; q < np; q++) {
			fx_tensor_release(p[q].e->up);
			fx_tensor_release(p[q].e->down);
		}
	}
	for (i = 0; i < g->nmembers; i++) {
		/* BFL members share one tensor: release it after its last member */
		if (i + 1 < g->nmembers && g->members[i + 1].weight == g->members[i].weight)
			continue;
		fx_tensor_release(g->members[i].weight);
	}
}

/* Whether t is a fused group's weight (the large tensors). */
static bool is_group_weight(const struct fx_model *m, const struct fx_tensor *t)
{
	size_t i;
	int j;

	for (i = 0; i < m->ngroups; i++)
		for (j = 0; j < m->groups[i].nmembers; j++)
			if (m->groups[i].members[j].weight == t)
				return true;
	return false;
}

int fx_model_scan_values(const struct fx_model *m, bool weights,
			 void (*bad)(void *ctx, const char *msg), void *ctx, struct fx_err *err)
{
	const size_t chunk = (size_t)1 << 20;   /* floats of scratch */
	float *buf = malloc(chunk * sizeof(float));
	int nbad = 0;
	size_t i;

	if (!buf)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	for (i = 0; i < m->nused; i++) {
		const struct fx_tensor *t = m->used[i];
		uint64_t numel = fx_tensor_numel(t);
		int64_t rows = t->ndim ? t->shape[0] : 1, cols, step, r, b = -1;

		if (!numel || (!weights && is_group_weight(m, t)))
			continue;
		cols = (int64_t)(numel / (uint64_t)rows);
		step = cols > (int64_t)chunk ? 1 : (int64_t)(chunk / (size_t)cols);
		/* rows wider than the scratch: the tensor as one flat row in pieces */
		if (cols > (int64_t)chunk) {
			for (r = 0; r < (int64_t)numel && b < 0; r += (int64_t)chunk) {
				int64_t n = (int64_t)numel - r < (int64_t)chunk ? (int64_t)numel - r : (int64_t)chunk;
				struct fx_tensor flat = *t;

				flat.ndim = 1;
				flat.shape[0] = (int64_t)numel;
				/* a 1-D view: n rows of one element */
				b = copy_rows(buf, false, 1, &flat, scale_of(m, t), r, n, 0, 1, false);
			}
		} else {
			for (r = 0; r < rows && b < 0; r += step)
				b = copy_rows(buf, false, cols, t, scale_of(m, t), r,
					      rows - r < step ? rows - r : step, 0, cols, false);
		}
		fx_tensor_release(t);
		if (b < 0)
			continue;
		nbad++;
		if (!bad) {
			free(buf);
			return value_error(m, t, b, err);
		}
		{
			struct fx_err e;

			value_error(m, t, b, &e);
			bad(ctx, e.msg);
		}
	}
	free(buf);
	return nbad;
}

