#include "fx-audit-prov.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-cli.h"
#include "fx-quant.h"
#include "fx-blocks.h"
#include "fx-family.h"
#include "fx-file.h"
#include "fx-lora.h"
#include "fx-file.h"
#include "fx-meta.h"
#include "fx-model.h"

static const char *stage_of(const char *format)
{
	if (!format)
		return "the stage that wrote it";
	if (!strcmp(format, FX_FMT_CALIB))
		return "fx-calib";
	if (!strcmp(format, FX_FMT_BRANCH))
		return "fx-lowrank";
	if (!strcmp(format, FX_FMT_QUANT))
		return "fx-quant";
	return "fx-pack";
}

/* True when the id recorded under role in st's fx.inputs is id, or the
 * identity of the file at path as a one-file set (what merges record). */
static bool recorded_as(const struct fx_st *st, const char *role, const char *id, const char *path)
{
	json_t *in = json_loads(fx_st_meta(st, "fx.inputs") ? fx_st_meta(st, "fx.inputs") : "", 0, NULL);
	const char *want = json_string_value(json_object_get(in, role));
	bool ok = !want || !strcmp(want, id);

	if (!ok && strcmp(role, "model")) {
		struct fx_st *f = NULL;
		char sid[65];

		if (fx_st_open(&f, path, NULL) == 0) {
			const struct fx_st *one = f;

			ok = fx_shards_id(sid, &one, 1, NULL) == 0 && !strcmp(want, sid);
			fx_st_close(f);
		}
	}
	json_decref(in);
	return ok;
}

/* ---- the audited file's own inputs ------------------------------------ */

/* An input role's recorded id against the given file: a single file's id,
 * or (fx-pack) the id of the set it belongs to. */
static int check_role(struct fx_audit *a, const struct fx_st *st, json_t *inputs, const char *role,
		      const char *path, const struct fx_loras *o_loras, struct fx_err *err)
{
	const char *want = json_string_value(json_object_get(inputs, role));
	const char *fmt = fx_st_meta(st, "fx.format");
	char id[65];
	int ret;

	/* not an input of this stage (fx-pack never reads the calib file) */
	if (!want)
		return 0;
	/* the model's identity covers the LoRAs merged into it */
	ret = strcmp(role, "model") ? fx_input_id(id, path, err)
				    : fx_lora_model_id(id, path, o_loras, err);
	if (ret < 0)
		return ret;
	if (!recorded_as(st, role, id, path))
		fx_audit_add(a, FX_SEV_ERROR, "stale", role,
			     "%s was made from another %s than '%s'%s (recorded %.12s, given %.12s): "
			     "rerun %s%s", fmt, role, path,
			     strcmp(role, "model") || !o_loras || !o_loras->n ? "" : " with the given LoRAs",
			     want, id, stage_of(fmt),
			     !strcmp(role, "model") && fx_st_meta(st, "fx.loras") ? ", or give the LoRAs "
			     "it records (fx.loras) with --lora" : "");
	else
		fx_audit_line(a, "[OK] provenance: %s '%s' matches", role, path);
	return 0;
}

int fx_audit_provenance(struct fx_audit *a, const struct fx_st *st, const struct fx_audit_opts *o,
			struct fx_err *err)
{
	const char *txt = fx_st_meta(st, "fx.inputs");
	json_t *inputs;
	int ret = 0;

	if (!o || (!o->model && !o->calib && !o->branch))
		return 0;
	if (!txt) {
		fx_audit_add(a, FX_SEV_WARN, "provenance", "",
			     "no fx.inputs: this file records nothing it was made from");
		return 0;
	}
	inputs = json_loads(txt, 0, NULL);
	if (o->model && ret == 0)
		ret = check_role(a, st, inputs, "model", o->model, o->loras, err);
	if (o->calib && ret == 0)
		ret = check_role(a, st, inputs, "calib", o->calib, NULL, err);
	if (o->branch && ret == 0)
		ret = check_role(a, st, inputs, "branch", o->branch, NULL, err);
	json_decref(inputs);
	return ret;
}

/* ---- the chain of the given inputs ------------------------------------- */

/* The given input at path (role) against the other given inputs. */
static int chain_one(struct fx_audit *a, const struct fx_st *audited, const char *role,
		     const char *path, const struct fx_audit_opts *o, struct fx_err *err)
{
	static const char *const roles[] = { "model", "calib" };
	const char *given[] = { o->model, o->calib };
	struct fx_st *in = NULL;
	const char *fmt, *ar, *ir;
	char id[65];
	bool ok = true;
	size_t i;
	int ret;

	if ((ret = fx_st_open(&in, path, err)) < 0)
		return ret;
	fmt = fx_st_meta(in, "fx.format");
	ar = fx_st_meta(audited, "fx.recipe");
	ir = fx_st_meta(in, "fx.recipe");
	if (ar && ir && !strcmp(ar, ir))
		goto out;   /* the audited file itself: its own provenance covers it */
	if (!fmt || !fx_st_meta(in, "fx.inputs")) {
		fx_audit_add(a, FX_SEV_WARN, "provenance", role, "'%s' given as --%s is not an fx "
			     "intermediate: its inputs cannot be checked", path, role);
		goto out;
	}
	for (i = 0; i < FX_ARRAY_SIZE(roles); i++) {
		if (!given[i] || !strcmp(roles[i], role))
			continue;
		ret = i == 0 ? fx_lora_model_id(id, given[i], o->loras, err)
			     : fx_input_id(id, given[i], err);
		if (ret < 0)
			goto out;
		if (recorded_as(in, roles[i], id, given[i]))
			continue;
		ok = false;
		fx_audit_add(a, FX_SEV_ERROR, "stale", role,
			     "the %s file '%s' (%s) was made from another %s than '%s': rerun %s, "
			     "then the stages after it", role, path, fmt, roles[i], given[i], stage_of(fmt));
	}
	if (ok)
		fx_audit_line(a, "[OK] provenance: the %s file '%s' was made from the given inputs",
			      role, path);
out:
	fx_st_close(in);
	return ret;
}

/* ---- the groups of an intermediate -------------------------------------- */

struct want {
	const char *role;
	enum fx_dtype dt;
	int ndim;
	int64_t shape[2];     /* -1: any */
	bool optional;
	bool f32_too;         /* F32 also fits (xtx of fx-calib before F64 sums) */
};

/* The tensors the stage writes for group g; returns their count. */
static int wants(struct want *w, const char *fmt, const struct fx_group *g, bool fp4, int rank)
{
	int n = 0;

#define W(r, d, nd, s0, s1, opt) (w[n++] = (struct want){ r, d, nd, { s0, s1 }, opt, false })
	if (!strcmp(fmt, FX_FMT_CALIB)) {
		W("absmax", FX_F32, 1, g->k, 0, false);
		W("samples", FX_BF16, 2, -1, g->k, false);
		W("xtx", FX_F64, 2, g->k, g->k, true);
		w[n - 1].f32_too = true;
		W("xsum", FX_F64, 1, g->k, 0, true);
		W("nrows", FX_I64, 1, 1, 0, true);
	} else if (!strcmp(fmt, FX_FMT_BRANCH)) {
		W("smooth", FX_F32, 1, g->k, 0, false);
		W("down", FX_F32, 2, rank, g->k, false);
		W("up", FX_F32, 2, g->n, rank, false);
		W("splits", FX_I64, 1, g->nmembers + 1, 0, false);
		W("stats", FX_F32, 1, FX_BRANCH_STAT_COUNT, 0, false);
	} else {
		W("codes", FX_U8, 2, g->n, g->k / 2, false);
		if (g->kind == FX_GROUP_ADALN) {
			W("scales", FX_BF16, 2, g->n, g->k / FX_QUANT_W4A16_GROUP, false);
			W("zeros", FX_BF16, 2, g->n, g->k / FX_QUANT_W4A16_GROUP, false);
		} else if (fp4) {
			W("scales", FX_F8_E4M3, 2, g->n, g->k / FX_QUANT_FP4_GROUP, false);
			W("tscale", FX_F32, 1, g->nmembers, 0, false);
		} else {
			W("scales", FX_BF16, 2, g->n, g->k / FX_QUANT_INT4_GROUP, false);
		}
	}
#undef W
	return n;
}

static bool fits(const struct fx_tensor *t, const struct want *w)
{
	int i;

	if ((t->dtype != w->dt && !(w->f32_too && t->dtype == FX_F32)) || t->ndim != w->ndim)
		return false;
	for (i = 0; i < w->ndim; i++)
		if (w->shape[i] >= 0 && t->shape[i] != w->shape[i])
			return false;
	return true;
}

struct gtally {
	size_t ngroups, nbad, nlisted, nunlisted;
	int rank;   /* fx.branch: from fx.params, else the first down's */
};

/* Bad groups are listed one by one up to FX_AUDIT_PROV_MAX_LISTED, then
 * counted. */
static bool listing(struct gtally *t)
{
	if (t->nlisted < FX_AUDIT_PROV_MAX_LISTED) {
		t->nlisted++;
		return true;
	}
	t->nunlisted++;
	return false;
}

/* One finding per bad group: its missing tensors, else its first misfit. */
static void check_group(struct fx_audit *a, const struct fx_st *st, const char *fmt,
			const struct fx_group *g, bool fp4, struct gtally *t)
{
	struct want w[6];
	const struct fx_tensor *misfit = NULL;
	const struct want *mw = NULL;
	char name[200], where[96], missing[96] = "", sa[48], sb[48];
	const char *stage = stage_of(fmt);
	int i, nw, nmisfit = 0;

	snprintf(where, sizeof(where), "%s (%sblock %d)", g->fused, g->single ? "single " : "", g->block);
	if (!strcmp(fmt, FX_FMT_BRANCH) && t->rank < 0) {
		const struct fx_tensor *d;

		snprintf(name, sizeof(name), "%s.down", g->name);
		if ((d = fx_st_find(st, name)) && d->ndim == 2)
			t->rank = (int)d->shape[0];
	}
	nw = wants(w, fmt, g, fp4, t->rank);
	t->ngroups++;
	for (i = 0; i < nw; i++) {
		const struct fx_tensor *x;
		size_t l = strlen(missing);

		snprintf(name, sizeof(name), "%s.%s", g->name, w[i].role);
		x = fx_st_find(st, name);
		if (!x) {
			if (!w[i].optional)
				snprintf(missing + l, sizeof(missing) - l, "%s%s", l ? ", " : "", w[i].role);
		} else if (!fits(x, &w[i]) && !nmisfit++) {
			misfit = x;
			mw = &w[i];
		}
	}
	if (!missing[0] && !misfit)
		return;
	t->nbad++;
	if (!listing(t))
		return;
	if (missing[0])
		fx_audit_add(a, FX_SEV_ERROR, "missing", g->name, "%s of %s missing from the %s "
			     "file: rerun %s", missing, where, fmt, stage);
	else
		fx_audit_add(a, FX_SEV_ERROR, "shape", misfit->name,
			     "is %s %s, the model's %s wants %s %s%s: the %s file was made for another "
			     "model or is damaged, rerun %s", fx_dtype_name(misfit->dtype),
			     fx_shape_str(sa, sizeof(sa), misfit->ndim, misfit->shape), where,
			     fx_dtype_name(mw->dt), fx_shape_str(sb, sizeof(sb), mw->ndim, mw->shape),
			     nmisfit > 1 ? " (and more tensors of the group)" : "", fmt, stage);
}

/* The group a tensor name belongs to (its name less the last ".role"). */
static const struct fx_group *group_of(const struct fx_model *m, const char *tname)
{
	const char *dot = strrchr(tname, '.');
	char buf[200];

	if (!dot || (size_t)(dot - tname) >= sizeof(buf))
		return NULL;
	memcpy(buf, tname, (size_t)(dot - tname));
	buf[dot - tname] = '\0';
	return fx_model_find_group(m, buf);
}

static bool in_file(const char *fmt, const struct fx_group *g, const struct fx_model_config *c,
		    int first, int last)
{
	if (!strcmp(fmt, FX_FMT_BRANCH) && g->kind != FX_GROUP_W4A4)
		return false;
	return fx_group_in_range(c, g, first, last);
}

static int audit_groups(struct fx_audit *a, const struct fx_st *st, const char *model,
			struct fx_err *err)
{
	const char *fmt = fx_st_meta(st, "fx.format"), *ptxt = fx_st_meta(st, "fx.params");
	json_t *params = ptxt ? json_loads(ptxt, 0, NULL) : NULL;
	const char *blocks = json_string_value(json_object_get(params, "blocks"));
	const char *prec = json_string_value(json_object_get(params, "precision"));
	json_t *jrank = json_object_get(params, "rank");
	const struct fx_model_config *c;
	const struct fx_family *fam;
	struct fx_model *m = NULL;
	struct gtally t = { .rank = -1 };
	size_t i, nextra = 0;
	int first, last, ret;
	bool fp4;

	if ((ret = fx_model_open(&m, model, err)) < 0)
		goto out;
	c = fx_model_config(m);
	/* the file's family (fx.model) against the model's */
	if (fx_meta_family(st, &fam, NULL) == 0 && fam != c->family) {
		fx_audit_add(a, FX_SEV_ERROR, "family", "", "the %s file was made for a %s model, '%s' "
			     "is %s: rerun %s with this model", fmt, fam->title, model,
			     c->family->title, stage_of(fmt));
		goto out;
	}
	first = 0;
	last = fx_num_blocks(c) - 1;
	if (blocks && (!fx_parse_range(blocks, &first, &last) || first < 0 || first > last)) {
		fx_audit_add(a, FX_SEV_ERROR, "header", "", "fx.params blocks '%s' is not a range A-B",
			     blocks);
		goto out;
	}
	if (last >= fx_num_blocks(c)) {
		fx_audit_add(a, FX_SEV_ERROR, "shape", "", "the %s file covers blocks %s, the model "
			     "'%s' has %d: it was made for another model, rerun %s", fmt, blocks,
			     model, fx_num_blocks(c), stage_of(fmt));
		last = fx_num_blocks(c) - 1;
	}
	fp4 = prec ? !strcmp(prec, "fp4") : false;
	if (!prec)
		for (i = 0; i < fx_st_count(st); i++)
			fp4 |= fx_st_at(st, i)->dtype == FX_F8_E4M3;
	if (json_is_integer(jrank))
		t.rank = (int)json_integer_value(jrank);
	for (i = 0; i < fx_model_ngroups(m); i++) {
		const struct fx_group *g = fx_model_group(m, i);

		if (in_file(fmt, g, c, first, last))
			check_group(a, st, fmt, g, fp4, &t);
	}
	for (i = 0; i < fx_st_count(st); i++) {
		const char *n = fx_st_at(st, i)->name;
		const struct fx_group *g = group_of(m, n);

		if (g && in_file(fmt, g, c, first, last))
			continue;
		if (nextra++ < 8)
			fx_audit_add(a, FX_SEV_ERROR, "unexpected", n, "is not a tensor of a fused group of "
				     "the model in blocks %d-%d: the %s file was made for another model "
				     "or other blocks, rerun %s", first, last, fmt, stage_of(fmt));
	}
	if (nextra > 8)
		fx_audit_add(a, FX_SEV_ERROR, "unexpected", "", "%zu more unexpected tensors", nextra - 8);
	if (t.nunlisted)
		fx_audit_add(a, FX_SEV_ERROR, "missing", "", "%zu more groups missing or misshapen "
			     "(%zu of %zu in all): rerun %s", t.nunlisted, t.nbad, t.ngroups, stage_of(fmt));
	fx_audit_line(a, "[%s] groups: %zu of %zu fused groups of blocks %d-%d present for '%s'",
		      t.nbad || nextra ? "MISSING" : "OK", t.ngroups - t.nbad, t.ngroups, first, last,
		      model);
out:
	json_decref(params);
	fx_model_close(m);
	return ret;
}

int fx_audit_prov(struct fx_audit *a, const struct fx_st *st, const struct fx_audit_opts *o,
		  struct fx_err *err)
{
	const char *fmt = fx_st_meta(st, "fx.format");
	int ret = 0;

	if (!o)
		return 0;
	if (o->branch && (o->model || o->calib))
		ret = chain_one(a, st, "branch", o->branch, o, err);
	if (ret == 0 && o->calib && o->model)
		ret = chain_one(a, st, "calib", o->calib, o, err);
	if (ret == 0 && o->model && fmt &&
	    (!strcmp(fmt, FX_FMT_CALIB) || !strcmp(fmt, FX_FMT_QUANT) || !strcmp(fmt, FX_FMT_BRANCH)))
		ret = audit_groups(a, st, o->model, err);
	return ret;
}
