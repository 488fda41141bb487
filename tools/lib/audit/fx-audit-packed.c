#include "fx-audit-packed.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fx-families.h"
#include "fx-io.h"
#include "fx-meta.h"
#include "fx-model.h"

/* A module the file should hold: "<block prefix>.<i>.<fused>". */
struct emod {
	char name[160];
	const char *fused;
	bool single, adaln;
	int block;
	int64_t n, k;
};

/* An unquantized tensor the file should hold: BF16, [d0] or [d0,d1] (d0 < 0:
 * any shape); kind < 0 at the top level, else a tensor of that block. */
struct eplain {
	char name[160];
	int kind, block;
	int ndim;
	int64_t d0, d1;
};

/* What a packed file of one family should hold, from the model given or
 * from the family's tables sized by the file. */
struct expect {
	const struct fx_family *fam;
	struct emod *mods;
	size_t nmods;
	struct eplain *plain;
	size_t nplain;
	int nblocks[2];
};

static void expect_release(struct expect *e)
{
	free(e->mods);
	free(e->plain);
	memset(e, 0, sizeof(*e));
}

/* "<prefix>.<i>.<rest>": i and *rest, else -1. */
static int block_of(const char *name, const char *prefix, const char **rest)
{
	size_t pl = strlen(prefix);
	char *end;
	long v;

	if (strncmp(name, prefix, pl) || name[pl] != '.')
		return -1;
	v = strtol(name + pl + 1, &end, 10);
	if (end == name + pl + 1 || *end != '.' || v < 0 || v >= 100000)
		return -1;
	if (rest)
		*rest = end + 1;
	return (int)v;
}

/* The kind of block name is in (its index in *blk, the rest in *rest), or -1. */
static int kind_of(const struct fx_family *f, const char *name, int *blk, const char **rest)
{
	int kind, b;

	for (kind = 0; kind < 2; kind++)
		if (f->block_prefix[kind] && (b = block_of(name, f->block_prefix[kind], rest)) >= 0) {
			if (blk)
				*blk = b;
			return kind;
		}
	return -1;
}

bool fx_audit_is_packed(const struct fx_st *st)
{
	size_t i, j;

	for (i = 0; i < fx_st_count(st); i++) {
		const char *n = fx_st_at(st, i)->name;

		if (!strstr(n, ".qweight"))
			continue;
		for (j = 0; fx_families[j]; j++)
			if (kind_of(fx_families[j], n, NULL, NULL) >= 0)
				return true;
	}
	return false;
}

static int max_block(const struct fx_st *st, const char *prefix)
{
	size_t i;
	int mx = -1, b;

	if (!prefix)
		return -1;
	for (i = 0; i < fx_st_count(st); i++)
		if ((b = block_of(fx_st_at(st, i)->name, prefix, NULL)) > mx)
			mx = b;
	return mx;
}

static void where(char *buf, size_t cap, const char *mod, bool single, int b)
{
	snprintf(buf, cap, "%s (%sblock %d)", mod, single ? "single " : "", b);
}

/* ---- what the file should hold --------------------------------------- */

static int add_mod(struct expect *e, size_t *cap, const char *name, const char *fused, bool single,
		   int block, bool adaln, int64_t n, int64_t k)
{
	struct emod *m;

	if (e->nmods == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		struct emod *p = realloc(e->mods, c * sizeof(*p));

		if (!p)
			return -1;
		e->mods = p;
		*cap = c;
	}
	m = &e->mods[e->nmods++];
	snprintf(m->name, sizeof(m->name), "%s", name);
	m->fused = fused;
	m->single = single;
	m->block = block;
	m->adaln = adaln;
	m->n = n;
	m->k = k;
	return 0;
}

static int add_plain(struct expect *e, size_t *cap, const char *name, int kind, int block, int ndim,
		     int64_t d0, int64_t d1)
{
	struct eplain *p;

	if (e->nplain == *cap) {
		size_t c = *cap ? *cap * 2 : 64;
		struct eplain *q = realloc(e->plain, c * sizeof(*q));

		if (!q)
			return -1;
		e->plain = q;
		*cap = c;
	}
	p = &e->plain[e->nplain++];
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->kind = kind;
	p->block = block;
	p->ndim = ndim;
	p->d0 = d0;
	p->d1 = d1;
	return 0;
}

/* The model's groups and unquantized tensors under the family's names. */
static int expect_model(struct expect *e, const struct fx_model *m)
{
	const struct fx_model_config *c = fx_model_config(m);
	const struct fx_family *fam = c->family;
	size_t i, capm = 0, capp = 0;
	char buf[160];

	e->fam = fam;
	e->nblocks[0] = c->num_double;
	e->nblocks[1] = c->num_single;
	for (i = 0; i < fx_model_ngroups(m); i++) {
		const struct fx_group *g = fx_model_group(m, i);

		if (add_mod(e, &capm, g->name, g->fused, g->single, g->block,
			    g->kind == FX_GROUP_ADALN, g->n, g->k) < 0)
			return -1;
	}
	for (i = 0; i < fx_model_nplain(m); i++) {
		const char *dn = fx_model_plain_name(m, i), *pn = fam->packed_plain_name(dn, buf, sizeof(buf));
		const struct fx_tensor *t = fx_model_plain(m, dn);
		int blk = -1, kind = kind_of(fam, pn, &blk, NULL);
		int64_t d0 = t->shape[0];

		if (kind >= 0 && fam->file->norm_dim)
			d0 = fam->file->norm_dim;
		if (add_plain(e, &capp, pn, kind, blk, t->ndim, d0, t->ndim > 1 ? t->shape[1] : 0) < 0)
			return -1;
	}
	return 0;
}

/* The family's tables, D from its input embedder in pl, F and the block
 * counts from fx.model (else 4D and the highest block index in st). */
static int expect_file(struct expect *e, const struct fx_family *fam, const struct fx_st *st,
		       const struct fx_st *pl, struct fx_audit *a)
{
	const struct fx_family_file *ff = fam->file;
	const struct fx_tensor *x = fx_st_find(pl, ff->plain[0]);
	const char *model = fx_st_meta(st, "fx.model");
	json_t *jm = model ? json_loads(model, 0, NULL) : NULL;
	size_t i, j, capm = 0, capp = 0;
	int64_t D, F, hd = -1;
	char name[160];
	int kind, b, ret = 0;

	e->fam = fam;
	if (!x || x->ndim != 2) {
		fx_audit_add(a, FX_SEV_ERROR, "missing", ff->plain[0],
			     "unquantized layers missing (%s): cannot size the model", ff->plain[0]);
		ret = 1;
		goto out;
	}
	D = x->shape[0];
	F = 4 * D;
	for (kind = 0; kind < 2; kind++)
		e->nblocks[kind] = max_block(st, fam->block_prefix[kind]) + 1;
	if (json_is_object(jm)) {
		json_t *f = json_object_get(jm, "mlp_hidden"), *nd = json_object_get(jm, "num_double"),
		       *ns = json_object_get(jm, "num_single");

		if (json_is_integer(f) && json_integer_value(f) > 0)
			F = json_integer_value(f);
		if (json_is_integer(nd) && json_integer_value(nd) >= 0 && json_integer_value(nd) < 100000)
			e->nblocks[0] = (int)json_integer_value(nd);
		if (json_is_integer(ns) && json_integer_value(ns) >= 0 && json_integer_value(ns) < 100000 &&
		    fam->block_prefix[1])
			e->nblocks[1] = (int)json_integer_value(ns);
	}
	for (i = 0; i < ff->nplain; i++)
		if (add_plain(e, &capp, ff->plain[i], -1, -1, 0, -1, 0) < 0)
			goto nomem;
	/* norms of the family's size, else the head dim the first one has */
	if (!ff->norm_dim)
		for (kind = 0; kind < 2 && hd < 0; kind++)
			for (b = 0; b < e->nblocks[kind] && hd < 0; b++)
				for (j = 0; j < ff->nnorms[kind] && hd < 0; j++) {
					const struct fx_tensor *t;

					snprintf(name, sizeof(name), "%s.%d.%s", fam->block_prefix[kind], b,
						 ff->norms[kind][j]);
					if ((t = fx_st_find(st, name)) && t->ndim == 1)
						hd = t->shape[0];
				}
	for (kind = 0; kind < 2; kind++)
		for (b = 0; b < e->nblocks[kind]; b++) {
			for (j = 0; j < ff->nmodules[kind]; j++) {
				const struct fx_family_module *m = &ff->modules[kind][j];

				snprintf(name, sizeof(name), "%s.%d.%s", fam->block_prefix[kind], b, m->name);
				if (add_mod(e, &capm, name, m->name, kind == 1, b, m->adaln,
					    m->nd * D + m->nf * F, m->kd * D + m->kf * F) < 0)
					goto nomem;
			}
			for (j = 0; j < ff->nnorms[kind]; j++) {
				snprintf(name, sizeof(name), "%s.%d.%s", fam->block_prefix[kind], b,
					 ff->norms[kind][j]);
				if (add_plain(e, &capp, name, kind, b, 1, ff->norm_dim ? ff->norm_dim : hd,
					      0) < 0)
					goto nomem;
			}
		}
	goto out;
nomem:
	ret = -1;
out:
	json_decref(jm);
	return ret;
}

/* ---- checks ---------------------------------------------------------- */

/* Values that make the runtime produce noise or NaN. */
static const char *bad_values(const struct fx_tensor *t, bool scale)
{
	size_t i, n = t->nbytes;
	bool allzero = true;

	if (t->dtype == FX_BF16) {
		const uint16_t *h = t->data;

		for (i = 0; i < n / 2; i++) {
			float v = fx_bf16_to_f32(h[i]);

			if (!isfinite(v))
				return "NaN or Inf";
			if (v != 0)
				allzero = false;
			if (scale && v < 0)
				return "negative scale";
		}
	} else if (t->dtype == FX_F8_E4M3) {
		const uint8_t *c = t->data;

		for (i = 0; i < n; i++) {
			if ((c[i] & 0x7f) == 0x7f)
				return "NaN e4m3 scale";
			if (c[i] & 0x80)
				return "e4m3 scale with the sign bit set";
			if (c[i])
				allzero = false;
		}
	} else {
		return NULL;
	}
	return scale && allzero && n ? "all scales zero" : NULL;
}

struct req {
	const char *suffix;
	enum fx_dtype dt;
	int ndim;
	int64_t d0, d1;    /* -1: any (rank) */
	bool scale;        /* value checks of a scale */
};

static void check_module(struct fx_audit *a, const struct fx_st *st, const struct fx_family *fam,
			 const struct emod *m, bool fp4, int *rank, size_t *nbad)
{
	const struct fx_packed_names *pn = fam->packed;
	int64_t N = m->n, K = m->k;
	struct req reqs[10];
	char name[200], w[96], missing[256] = "", detail[160] = "", sa[48], sb[48];
	int nr = 0, i;
	bool ok = true, have_tscale;
	const struct fx_tensor *t;
	int r = -1;

	if (m->adaln) {
		reqs[nr++] = (struct req){ "qweight", FX_I32, 2, N / 4, K / 2, false };
		reqs[nr++] = (struct req){ "wscales", FX_BF16, 2, K / 64, N, true };
		reqs[nr++] = (struct req){ "wzeros", FX_BF16, 2, K / 64, N, false };
		reqs[nr++] = (struct req){ "bias", FX_BF16, 1, N, 0, false };
	} else {
		reqs[nr++] = (struct req){ "qweight", FX_I8, 2, N, K / 2, false };
		reqs[nr++] = fp4 ? (struct req){ "wscales", FX_F8_E4M3, 2, K / 16, N, true }
				 : (struct req){ "wscales", FX_BF16, 2, K / 64, N, true };
		reqs[nr++] = (struct req){ "bias", FX_BF16, 1, N, 0, false };
		reqs[nr++] = (struct req){ pn->smooth, FX_BF16, 1, K, 0, true };
		reqs[nr++] = (struct req){ pn->smooth_orig, FX_BF16, 1, K, 0, true };
		reqs[nr++] = (struct req){ pn->down, FX_BF16, 2, K, -1, false };
		reqs[nr++] = (struct req){ pn->up, FX_BF16, 2, N, -1, false };
	}
	where(w, sizeof(w), m->fused, m->single, m->block);
	for (i = 0; i < nr; i++) {
		const char *bad;

		snprintf(name, sizeof(name), "%s.%s", m->name, reqs[i].suffix);
		t = fx_st_find(st, name);
		if (!t) {
			size_t l = strlen(missing);

			snprintf(missing + l, sizeof(missing) - l, "%s%s", l ? ", " : "", reqs[i].suffix);
			ok = false;
			continue;
		}
		if (t->dtype != reqs[i].dt || t->ndim != reqs[i].ndim || t->shape[0] != reqs[i].d0 ||
		    (reqs[i].ndim == 2 && reqs[i].d1 >= 0 && t->shape[1] != reqs[i].d1)) {
			int64_t shp[2] = { reqs[i].d0, reqs[i].d1 };

			fx_audit_add(a, FX_SEV_ERROR, "shape", name, "is %s %s, expected %s %s",
				     fx_dtype_name(t->dtype), fx_shape_str(sa, sizeof(sa), t->ndim, t->shape),
				     fx_dtype_name(reqs[i].dt), fx_shape_str(sb, sizeof(sb), reqs[i].ndim, shp));
			ok = false;
			continue;
		}
		if (reqs[i].ndim == 2 && reqs[i].d1 < 0) {
			int tr = (int)t->shape[1];

			if (r >= 0 && tr != r) {
				fx_audit_add(a, FX_SEV_ERROR, "rank", w, "%s has rank %d, %s %d", pn->down, r,
					     pn->up, tr);
				ok = false;
			}
			r = tr;
		}
		if ((bad = bad_values(t, reqs[i].scale))) {
			fx_audit_add(a, FX_SEV_ERROR, "values", name, "%s", bad);
			ok = false;
		}
		if (!strcmp(reqs[i].suffix, pn->smooth) && t->dtype == FX_BF16) {
			const uint16_t *h = t->data;
			int64_t k;

			for (k = 0; k < t->shape[0]; k++)
				if (!(fx_bf16_to_f32(h[k]) > 0)) {
					fx_audit_add(a, FX_SEV_ERROR, "values", name, "smooth %g <= 0 at %lld",
						     fx_bf16_to_f32(h[k]), (long long)k);
					ok = false;
					break;
				}
		}
	}
	if (!m->adaln && fp4) {
		const struct fx_tensor *tc, *tt;

		snprintf(name, sizeof(name), "%s.wcscales", m->name);
		tc = fx_st_find(st, name);
		snprintf(name, sizeof(name), "%s.wtscale", m->name);
		tt = fx_st_find(st, name);
		have_tscale = tc || tt;
		if (!have_tscale && fam->file->tscale_required) {
			size_t l = strlen(missing);

			snprintf(missing + l, sizeof(missing) - l, "%swtscale or wcscales", l ? ", " : "");
			ok = false;
		}
		if (tc && (tc->dtype != FX_BF16 || tc->ndim != 1 || tc->shape[0] != N)) {
			fx_audit_add(a, FX_SEV_ERROR, "shape", w, "wcscales must be BF16 [%lld]", (long long)N);
			ok = false;
		}
		if (tt && (tt->ndim != 1 || tt->shape[0] != 1)) {
			fx_audit_add(a, FX_SEV_ERROR, "shape", w, "wtscale must have one element");
			ok = false;
		}
		if (tc && bad_values(tc, true)) {
			fx_audit_add(a, FX_SEV_ERROR, "values", w, "wcscales: %s", bad_values(tc, true));
			ok = false;
		}
	} else if (!m->adaln && fam->file->strict) {
		/* NVFP4's tensor scales: an unexpected key to a strict INT4 load */
		static const char *const nv[] = { "wtscale", "wcscales" };

		for (i = 0; i < 2; i++) {
			snprintf(name, sizeof(name), "%s.%s", m->name, nv[i]);
			if (fx_st_find(st, name)) {
				fx_audit_add(a, FX_SEV_ERROR, "unexpected", name,
					     "an NVFP4 tensor scale in an INT4 file: the %s loader's strict "
					     "load refuses it", fam->title);
				ok = false;
			}
		}
	}
	if (!m->adaln && r >= 0) {
		if (r % 16) {
			fx_audit_add(a, FX_SEV_ERROR, "rank", w, "rank %d is not a multiple of 16", r);
			ok = false;
		}
		if (*rank < 0)
			*rank = r;
		else if (r != *rank) {
			fx_audit_add(a, FX_SEV_ERROR, "rank", w, "rank %d differs from the other modules (%d)", r, *rank);
			ok = false;
		}
		if (r > 0) {
			snprintf(name, sizeof(name), "%s.%s", m->name, pn->up);
			t = fx_st_find(st, name);
			if (t && t->dtype == FX_BF16) {
				const uint16_t *h = t->data;
				size_t k;
				bool z = true;

				for (k = 0; k < t->nbytes / 2 && z; k++)
					z = (h[k] & 0x7fff) == 0;
				if (z) {
					fx_audit_add(a, FX_SEV_ERROR, "values", w,
						     "%s is all zero while rank is %d: the low-rank branch is lost",
						     pn->up, r);
					ok = false;
				}
			}
		}
		snprintf(detail, sizeof(detail), ": %s=[%lld,%d] %s=[%lld,%d]", pn->down, (long long)K, r,
			 pn->up, (long long)N, r);
	}
	if (missing[0]) {
		fx_audit_line(a, "[MISSING] %s: %s", w, missing);
		fx_audit_add(a, FX_SEV_ERROR, "missing", w, "%s missing", missing);
	} else if (!ok) {
		fx_audit_line(a, "[BAD] %s", w);
	} else {
		fx_audit_line(a, "[OK] %s%s", w, detail);
	}
	if (!ok)
		(*nbad)++;
}

static void check_plain(struct fx_audit *a, const struct fx_st *st, const struct eplain *p)
{
	const struct fx_tensor *t = fx_st_find(st, p->name);
	int64_t shp[2] = { p->d0, p->d1 };
	char sa[48], sb[48];

	if (p->kind < 0) {
		if (!t)
			fx_audit_add(a, FX_SEV_ERROR, "missing", p->name, "unquantized tensor missing");
		else if (t->dtype != FX_BF16)
			fx_audit_add(a, FX_SEV_ERROR, "dtype", p->name, "is %s, expected BF16",
				     fx_dtype_name(t->dtype));
		else if (p->d0 >= 0 && (t->ndim != p->ndim || t->shape[0] != p->d0 ||
					(p->ndim == 2 && t->shape[1] != p->d1)))
			fx_audit_add(a, FX_SEV_ERROR, "shape", p->name, "is %s, the model has %s",
				     fx_shape_str(sa, sizeof(sa), t->ndim, t->shape),
				     fx_shape_str(sb, sizeof(sb), p->ndim, shp));
		return;
	}
	if (!t)
		fx_audit_add(a, FX_SEV_ERROR, "missing", p->name, "QK-norm weight missing (noise images)");
	else if (t->dtype != FX_BF16 || t->ndim != 1 || (p->d0 >= 0 && t->shape[0] != p->d0))
		fx_audit_add(a, FX_SEV_ERROR, "shape", p->name, "must be BF16 [%lld]",
			     (long long)(p->d0 >= 0 ? p->d0 : t->shape[0]));
}

/* True when name is one of f's module tensors ("<module>.<suffix>" of its
 * tables) or carries one of its low-rank or smoothing names. */
static bool names_of(const struct fx_family *f, const char *name)
{
	static const char *const common[] = { "qweight", "wscales", "wzeros", "bias", "wcscales",
					      "wtscale" };
	const struct fx_packed_names *pn = f->packed;
	const char *own[] = { pn->smooth, pn->smooth_orig, pn->down, pn->up };
	const char *rest, *dot;
	size_t j, l;
	int kind = kind_of(f, name, NULL, &rest);

	if (kind < 0 || !f->file)
		return false;
	for (j = 0; j < f->file->nmodules[kind]; j++) {
		const char *s;
		size_t k;

		l = strlen(f->file->modules[kind][j].name);
		if (strncmp(rest, f->file->modules[kind][j].name, l) || rest[l] != '.')
			continue;
		s = rest + l + 1;
		for (k = 0; k < FX_ARRAY_SIZE(common); k++)
			if (!strcmp(s, common[k]))
				return true;
		for (k = 0; k < FX_ARRAY_SIZE(own); k++)
			if (!strcmp(s, own[k]))
				return true;
	}
	if ((dot = strrchr(rest, '.')))
		for (j = 0; j < FX_ARRAY_SIZE(own); j++)
			if (!strcmp(dot + 1, own[j]))
				return true;
	return false;
}

/* The other family whose names name has (and fam does not), or NULL. */
static const struct fx_family *foreign(const struct fx_family *fam, const char *name)
{
	size_t i;

	for (i = 0; fx_families[i]; i++)
		if (fx_families[i] != fam && names_of(fx_families[i], name) && !names_of(fam, name))
			return fx_families[i];
	return NULL;
}

static int cmp_mod(const void *x, const void *y)
{
	return strcmp(((const struct emod *)x)->name, ((const struct emod *)y)->name);
}

/* Is name a tensor the family's loader takes (the expected modules sorted
 * by name in byname)? INT4 tensor scales are reported by check_module. */
static bool expected_key(const struct expect *e, const struct emod *byname, const char *name)
{
	static const char *const w4a4[] = { "qweight", "wscales", "bias", "wcscales", "wtscale" };
	static const char *const w4a16[] = { "qweight", "wscales", "wzeros", "bias" };
	const struct fx_packed_names *pn = e->fam->packed;
	const char *own[] = { pn->smooth, pn->smooth_orig, pn->down, pn->up };
	const char *dot = strrchr(name, '.');
	struct emod key;
	const struct emod *m;
	size_t i;

	for (i = 0; i < e->nplain; i++)
		if (!strcmp(e->plain[i].name, name))
			return true;
	if (!dot || (size_t)(dot - name) >= sizeof(key.name))
		return false;
	memcpy(key.name, name, (size_t)(dot - name));
	key.name[dot - name] = '\0';
	if (!(m = bsearch(&key, byname, e->nmods, sizeof(*byname), cmp_mod)))
		return false;
	if (m->adaln) {
		for (i = 0; i < FX_ARRAY_SIZE(w4a16); i++)
			if (!strcmp(dot + 1, w4a16[i]))
				return true;
		return false;
	}
	for (i = 0; i < FX_ARRAY_SIZE(w4a4); i++)
		if (!strcmp(dot + 1, w4a4[i]))
			return true;
	for (i = 0; i < FX_ARRAY_SIZE(own); i++)
		if (!strcmp(dot + 1, own[i]))
			return true;
	return false;
}

static bool is_leftover(const struct fx_family *fam, const char *name)
{
	const char *rest;
	size_t j;

	if (kind_of(fam, name, NULL, &rest) < 0)
		return false;
	for (j = 0; j < fam->file->nleftovers; j++)
		if (!strcmp(rest, fam->file->leftovers[j]))
			return true;
	return false;
}

/* Names of another family (any loader), and for a strict loader every key
 * it would not take. */
static void check_keys(struct fx_audit *a, const struct expect *e, const struct fx_st *st,
		       const struct emod *byname, size_t *nextra)
{
	const struct fx_family *fam = e->fam, *other;
	size_t i;

	for (i = 0; i < fx_st_count(st); i++) {
		const char *n = fx_st_at(st, i)->name;

		if (is_leftover(fam, n) || (byname && expected_key(e, byname, n)))
			continue;
		if ((other = foreign(fam, n))) {
			if ((*nextra)++ < 8)
				fx_audit_add(a, FX_SEV_ERROR, "family", n,
					     "a %s name in a %s checkpoint: the %s loader %s it", other->title,
					     fam->title, fam->title,
					     fam->file->strict ? "refuses (unexpected key)" : "never reads");
		} else if (fam->file->strict && byname) {
			if ((*nextra)++ < 8)
				fx_audit_add(a, FX_SEV_ERROR, "unexpected", n,
					     "not a tensor of a %s checkpoint: the loader's strict load "
					     "refuses it (unexpected key)", fam->title);
		}
	}
}

/* The family of the file (fx.model, else its names); with a model of
 * another family, a finding and no model. */
static const struct fx_family *file_family(struct fx_audit *a, const struct fx_st *st,
					   const struct fx_model **m)
{
	const struct fx_family *fam;
	struct fx_err err = {0};

	if (fx_meta_family(st, &fam, &err) < 0)
		fx_audit_add(a, FX_SEV_ERROR, "header", "fx.model", "%s", err.msg);
	if (*m && fx_model_config(*m)->family != fam) {
		fx_audit_add(a, FX_SEV_ERROR, "family", "",
			     "the file is a %s checkpoint, the model given is %s: compared with the "
			     "%s tables instead", fam->title, fx_model_config(*m)->family->title,
			     fam->title);
		*m = NULL;
	}
	return fam;
}

static void audit_packed(struct fx_audit *a, const struct fx_st *st, const struct fx_st *pl,
			 const struct fx_model *model)
{
	const struct fx_family *fam = file_family(a, st, &model);
	struct expect e = { 0 };
	struct emod *byname = NULL;
	int rank = -1, ret;
	size_t i, j, nbad = 0, nextra = 0;
	bool fp4 = false;
	char name[200];

	for (i = 0; i < fx_st_count(st); i++)
		if (fx_st_at(st, i)->dtype == FX_F8_E4M3)
			fp4 = true;
	ret = model ? expect_model(&e, model) : expect_file(&e, fam, st, pl, a);
	if (ret < 0)
		fx_audit_add(a, FX_SEV_ERROR, "audit", "", "out of memory");
	if (ret != 0)
		goto out;
	for (i = 0; i < e.nplain; i++)
		if (e.plain[i].kind < 0)
			check_plain(a, pl, &e.plain[i]);
	for (i = 0; i < e.nmods; i++) {
		const struct emod *m = &e.mods[i];
		const char *bp = fam->block_prefix[m->single];

		check_module(a, st, fam, m, fp4, &rank, &nbad);
		if (i + 1 < e.nmods && e.mods[i + 1].single == m->single && e.mods[i + 1].block == m->block)
			continue;
		/* the block's last module: its norms and leftovers */
		for (j = 0; j < e.nplain; j++)
			if (e.plain[j].kind == (int)m->single && e.plain[j].block == m->block)
				check_plain(a, st, &e.plain[j]);
		for (j = 0; j < fam->file->nleftovers; j++) {
			snprintf(name, sizeof(name), "%s.%d.%s", bp, m->block, fam->file->leftovers[j]);
			if (fx_st_find(st, name))
				fx_audit_add(a, FX_SEV_ERROR, "bf16", name,
					     "left in BF16 where a 4-bit module belongs (loaders report 'qweight has no src')");
		}
	}
	/* keys of another family; for a strict loader, every key it does not take */
	if (fam->file->strict) {
		if (!(byname = malloc((e.nmods ? e.nmods : 1) * sizeof(*byname)))) {
			fx_audit_add(a, FX_SEV_ERROR, "audit", "", "out of memory");
			goto out;
		}
		memcpy(byname, e.mods, e.nmods * sizeof(*byname));
		qsort(byname, e.nmods, sizeof(*byname), cmp_mod);
	}
	check_keys(a, &e, st, byname, &nextra);
	if (pl != st)
		check_keys(a, &e, pl, byname, &nextra);
	if (nextra > 8)
		fx_audit_add(a, FX_SEV_ERROR, "unexpected", "", "%zu more tensors the %s loader %s",
			     nextra - 8, fam->title, fam->file->strict ? "refuses" : "never reads");
	if (fam->block_prefix[1])
		fx_audit_line(a, "%zu of %zu modules complete, %s, rank %d, %d double + %d single blocks",
			      e.nmods - nbad, e.nmods, fp4 ? "NVFP4" : "INT4", rank < 0 ? 0 : rank,
			      e.nblocks[0], e.nblocks[1]);
	else
		fx_audit_line(a, "%zu of %zu modules complete, %s, rank %d, %d blocks (%s)",
			      e.nmods - nbad, e.nmods, fp4 ? "NVFP4" : "INT4", rank < 0 ? 0 : rank,
			      e.nblocks[0], fam->title);
out:
	free(byname);
	expect_release(&e);
}

void fx_audit_packed(struct fx_audit *a, const struct fx_st *st, const struct fx_model *m)
{
	audit_packed(a, st, st, m);
	fx_meta_audit(st, a);
}

void fx_audit_packed_two(struct fx_audit *a, const struct fx_st *blocks, const struct fx_st *plain,
			 const char *dir)
{
	const struct fx_family *fam = NULL;
	char path[4096], *txt = NULL;
	json_t *cfg;

	if (fx_meta_family(blocks, &fam, NULL) == 0 && !fam->two_file_form)
		fx_audit_add(a, FX_SEV_ERROR, "layout", "",
			     "a two-file folder of a %s checkpoint: the %s loaders read only one "
			     "file (fx-pack without --legacy, then fx-meta)", fam->title, fam->title);
	audit_packed(a, blocks, plain, NULL);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	if (fx_read_file(&txt, NULL, path, 1 << 20, NULL) < 0) {
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "config.json",
			     "no config.json: the folder form needs the diffusers config beside the two files "
			     "(or merge it into one file with fx-meta's metadata)");
	} else if (!(cfg = json_loads(txt, 0, NULL)) || !json_is_object(cfg)) {
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "config.json", "config.json is not a JSON object");
	} else {
		json_decref(cfg);
	}
	free(txt);
	snprintf(path, sizeof(path), "%s/comfy_config.json", dir);
	if (access(path, R_OK) != 0)
		fx_audit_add(a, FX_SEV_WARN, "metadata", "comfy_config.json",
			     "no comfy_config.json: ComfyUI-nunchaku then guesses the config from the folder name");
	fx_audit_line(a, "legacy two-file form (transformer_blocks.safetensors + unquantized_layers.safetensors)");
}
