#include "fx-audit-branch.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-cli.h"
#include "fx-family.h"
#include "fx-file.h"
#include "fx-meta.h"

static const char *const roles[] = { "smooth", "down", "up", "splits", "stats" };

struct dims {
	int64_t d, f;
	int nblocks[2];
};

static int json_int(json_t *o, const char *key, int dflt)
{
	json_t *v = json_object_get(o, key);

	return json_is_integer(v) ? (int)json_integer_value(v) : dflt;
}

/* NULL when every value is finite (and, for smooth, > 0); else why not
 * ("NaN", "Inf", "-Inf", "a value <= 0"). */
static const char *bad_f32(const struct fx_tensor *t, bool positive, int64_t *at)
{
	const float *v = t->data;
	size_t i, n = t->nbytes / 4;

	for (i = 0; i < n; i++) {
		*at = (int64_t)i;
		if (!isfinite(v[i]))
			return isnan(v[i]) ? "NaN" : v[i] > 0 ? "Inf" : "-Inf";
		if (positive && !(v[i] > 0.0f))
			return "a value <= 0";
	}
	return NULL;
}

/* "[3]" or "[2,5]": an element index in the tensor's shape. */
static const char *index_str(char *buf, size_t cap, const struct fx_tensor *t, int64_t at)
{
	if (t->ndim == 2 && t->shape[1] > 0)
		snprintf(buf, cap, "[%lld,%lld]", (long long)(at / t->shape[1]),
			 (long long)(at % t->shape[1]));
	else
		snprintf(buf, cap, "[%lld]", (long long)at);
	return buf;
}

static bool all_zero(const struct fx_tensor *t)
{
	const uint32_t *v = t->data;
	size_t i;

	for (i = 0; i < t->nbytes / 4; i++)
		if (v[i] & 0x7fffffffu)
			return false;
	return true;
}

struct tally {
	size_t ngroups, nbad;
	int rank;
	double err_rtn, err_final;
	size_t nerr;
};

static void check_group(struct fx_audit *a, const struct fx_st *st, const char *prefix, bool single,
			int blk, const struct fx_family_module *bg, const struct dims *d,
			struct tally *ty)
{
	int64_t N = bg->nd * d->d + bg->nf * d->f, K = bg->kd * d->d + bg->kf * d->f;
	const struct fx_tensor *t[FX_ARRAY_SIZE(roles)];
	char name[200], w[96], missing[128] = "", sa[48], sb[48], ix[48];
	int64_t want[FX_ARRAY_SIZE(roles)][2], at;
	int ndim[FX_ARRAY_SIZE(roles)] = { 1, 2, 2, 1, 1 };
	enum fx_dtype dt[FX_ARRAY_SIZE(roles)] = { FX_F32, FX_F32, FX_F32, FX_I64, FX_F32 };
	const char *why;
	bool ok = true;
	size_t i;
	int r;

	snprintf(w, sizeof(w), "%s (%sblock %d)", bg->name, single ? "single " : "", blk);
	for (i = 0; i < FX_ARRAY_SIZE(roles); i++) {
		size_t l = strlen(missing);

		snprintf(name, sizeof(name), "%s.%s.%s", prefix, bg->name, roles[i]);
		if (!(t[i] = fx_st_find(st, name)))
			snprintf(missing + l, sizeof(missing) - l, "%s%s", l ? ", " : "", roles[i]);
	}
	ty->ngroups++;
	if (missing[0]) {
		fx_audit_line(a, "[MISSING] %s: %s", w, missing);
		fx_audit_add(a, FX_SEV_ERROR, "missing", w, "%s missing", missing);
		ty->nbad++;
		return;
	}
	r = ty->rank >= 0 ? ty->rank : (int)t[1]->shape[0];
	want[0][0] = K;
	want[1][0] = r; want[1][1] = K;
	want[2][0] = N; want[2][1] = r;
	want[3][0] = bg->members + 1;
	want[4][0] = FX_BRANCH_STAT_COUNT;
	for (i = 0; i < FX_ARRAY_SIZE(roles); i++) {
		if (t[i]->dtype == dt[i] && t[i]->ndim == ndim[i] && t[i]->shape[0] == want[i][0] &&
		    (ndim[i] == 1 || t[i]->shape[1] == want[i][1]))
			continue;
		fx_audit_add(a, FX_SEV_ERROR, "shape", t[i]->name, "is %s %s, expected %s %s",
			     fx_dtype_name(t[i]->dtype), fx_shape_str(sa, sizeof(sa), t[i]->ndim, t[i]->shape),
			     fx_dtype_name(dt[i]), fx_shape_str(sb, sizeof(sb), ndim[i], want[i]));
		t[i] = NULL;
		ok = false;
	}
	for (i = 0; i < 3; i++) {
		if (!t[i])
			continue;
		if ((why = bad_f32(t[i], i == 0, &at))) {
			fx_audit_add(a, FX_SEV_ERROR, "values", t[i]->name, "has %s at %s", why,
				     index_str(ix, sizeof(ix), t[i], at));
			ok = false;
		} else if (i > 0 && r > 0 && all_zero(t[i])) {
			fx_audit_add(a, FX_SEV_ERROR, "values", t[i]->name,
				     "is all zero while rank is %d: the low-rank branch is lost", r);
			ok = false;
		}
	}
	if (t[3]) {
		const int64_t *s = t[3]->data;

		for (i = 0; i < (size_t)bg->members; i++)
			if (s[i + 1] <= s[i])
				break;
		if (s[0] != 0 || i < (size_t)bg->members || s[bg->members] != N) {
			fx_audit_add(a, FX_SEV_ERROR, "values", t[3]->name,
				     "member splits are not increasing from 0 to %lld", (long long)N);
			ok = false;
		}
	}
	if (t[4]) {
		const float *s = t[4]->data;

		if (bad_f32(t[4], false, &at)) {
			fx_audit_add(a, FX_SEV_ERROR, "values", t[4]->name, "has NaN or Inf");
			ok = false;
		} else {
			ty->err_rtn += s[FX_BRANCH_STAT_ERR_RTN];
			ty->err_final += s[FX_BRANCH_STAT_ERR_FINAL];
			ty->nerr++;
			if (s[FX_BRANCH_STAT_ERR_FINAL] > s[FX_BRANCH_STAT_ERR_RTN])
				fx_audit_add(a, FX_SEV_WARN, "error", w, "output error %.3e is worse than plain "
					     "RTN (%.3e)", s[FX_BRANCH_STAT_ERR_FINAL], s[FX_BRANCH_STAT_ERR_RTN]);
		}
	}
	if (ty->rank < 0 && t[1])
		ty->rank = r;
	if (ok) {
		fx_audit_line(a, "[OK] %s: down=[%d,%lld] up=[%lld,%d]", w, r, (long long)K, (long long)N, r);
	} else {
		fx_audit_line(a, "[BAD] %s", w);
		ty->nbad++;
	}
}

/* Is name one of the tensors this file should hold (a role of a W4A4
 * module of the family in blocks first..last, double then single)? */
static bool expected(const struct fx_family *fam, const char *name, const struct dims *d, int first,
		     int last)
{
	const struct fx_family_file *ff = fam->file;
	const char *p = NULL, *dot;
	size_t pl, i, j;
	char *end;
	long blk;
	int kind, gb;

	for (kind = 0; kind < 2; kind++) {
		if (!fam->block_prefix[kind])
			continue;
		pl = strlen(fam->block_prefix[kind]);
		if (!strncmp(name, fam->block_prefix[kind], pl) && name[pl] == '.') {
			p = name + pl + 1;
			break;
		}
	}
	if (!p)
		return false;
	blk = strtol(p, &end, 10);
	if (end == p || *end != '.' || blk < 0 || blk >= d->nblocks[kind])
		return false;
	gb = kind ? d->nblocks[0] + (int)blk : (int)blk;
	if (gb < first || gb > last)
		return false;
	p = end + 1;
	if (!(dot = strrchr(p, '.')))
		return false;
	for (i = 0; i < ff->nmodules[kind]; i++) {
		const struct fx_family_module *m = &ff->modules[kind][i];

		if (m->adaln || strlen(m->name) != (size_t)(dot - p) ||
		    strncmp(p, m->name, (size_t)(dot - p)))
			continue;
		for (j = 0; j < FX_ARRAY_SIZE(roles); j++)
			if (!strcmp(dot + 1, roles[j]))
				return true;
	}
	return false;
}

void fx_audit_branch(struct fx_audit *a, const struct fx_st *st)
{
	const char *model = fx_st_meta(st, "fx.model"), *params = fx_st_meta(st, "fx.params");
	json_t *jm = model ? json_loads(model, 0, NULL) : NULL;
	json_t *jp = params ? json_loads(params, 0, NULL) : NULL;
	struct tally ty = { .rank = -1 };
	const struct fx_family *fam;
	struct fx_err err = {0};
	struct dims d;
	const char *blocks;
	char prefix[64];
	int first, last, b, nd, ns;
	size_t i, nextra = 0;

	if (!json_is_object(jm)) {
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.model missing or not a JSON object: "
			     "cannot tell which layers to expect");
		goto out;
	}
	if (fx_meta_family(st, &fam, &err) < 0) {
		fx_audit_add(a, FX_SEV_ERROR, "header", "fx.model", "%s", err.msg);
		goto out;
	}
	d.d = json_int(jm, "hidden", 0);
	d.f = json_int(jm, "mlp_hidden", (int)(4 * d.d));
	nd = json_int(jm, "num_double", -1);
	ns = json_int(jm, "num_single", -1);
	if (d.d <= 0 || d.f <= 0 || nd < 0 || ns < 0) {
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.model '%s' lacks hidden, mlp_hidden, "
			     "num_double or num_single", model);
		goto out;
	}
	d.nblocks[0] = nd;
	d.nblocks[1] = fam->block_prefix[1] ? ns : 0;
	first = 0;
	last = d.nblocks[0] + d.nblocks[1] - 1;
	blocks = json_is_object(jp) ? json_string_value(json_object_get(jp, "blocks")) : NULL;
	if (blocks && (!fx_parse_range(blocks, &first, &last) || first > last || first < 0)) {
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.params blocks '%s' is not a range A-B",
			     blocks);
		goto out;
	}
	if (json_is_object(jp))
		ty.rank = json_int(jp, "rank", -1);
	for (b = first; b <= last && b < d.nblocks[0] + d.nblocks[1]; b++) {
		int kind = b >= d.nblocks[0];
		int bi = kind ? b - d.nblocks[0] : b;

		snprintf(prefix, sizeof(prefix), "%s.%d", fam->block_prefix[kind], bi);
		for (i = 0; i < fam->file->nmodules[kind]; i++)
			if (!fam->file->modules[kind][i].adaln)
				check_group(a, st, prefix, kind, bi, &fam->file->modules[kind][i], &d, &ty);
	}
	for (i = 0; i < fx_st_count(st); i++) {
		const char *n = fx_st_at(st, i)->name;

		if (expected(fam, n, &d, first, last))
			continue;
		if (nextra++ < 8)
			fx_audit_add(a, FX_SEV_ERROR, "unexpected", n, "is not a tensor of a fused group "
				     "in blocks %d-%d (branches belong under the fused names)", first, last);
	}
	if (nextra > 8)
		fx_audit_add(a, FX_SEV_ERROR, "unexpected", "", "%zu more unexpected tensors", nextra - 8);
	fx_audit_line(a, "%zu of %zu layers complete, rank %d, blocks %d-%d", ty.ngroups - ty.nbad,
		      ty.ngroups, ty.rank, first, last);
	if (ty.nerr)
		fx_audit_line(a, "mean relative output error: %.3e with plain RTN, %.3e with smoothing "
			      "and branch", ty.err_rtn / (double)ty.nerr, ty.err_final / (double)ty.nerr);
out:
	json_decref(jm);
	json_decref(jp);
}
