/* The fx-lowrank stage driver: reads a fused group and its calibration rows,
 * runs the search (kernels/fx-lowrank.h), writes fx.branch through fx-stage. */
#include "fx-search.h"

#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-log.h"
#include "fx-tensor.h"
#include "fx-device.h"
#include "fx-lowrank.h"
#include "fx-ops.h"
#include "fx-audit.h"
#include "fx-blocks.h"
#include "fx-file.h"
#include "fx-lora.h"
#include "fx-model.h"
#include "fx-st.h"
#include "fx-stage.h"

void fx_lowrank_stage_opts_init(struct fx_lowrank_stage_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->rank = 32;
	o->precision = "fp4";
	o->grid = 20;
	o->iters = 100;
	o->finalists = 3;
	o->method = "rsvd";
	o->first_block = -1;
	o->last_block = -1;
	o->device = "cpu";
}

/* The calib tensors of a group, checked against its K. */
struct calib_entry {
	const struct fx_tensor *absmax, *samples;
};

static int find_calib(struct calib_entry *ce, const struct fx_st *calib, const struct fx_group *g,
		      struct fx_err *err)
{
	char name[160], a[64], b[64];
	const struct fx_tensor *t;
	int64_t want[2];

	snprintf(name, sizeof(name), "%s.absmax", g->name);
	if (!(t = fx_st_find(calib, name)))
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' missing (was it calibrated with "
				"other --blocks?)", fx_st_path(calib), name);
	want[0] = g->k;
	if (t->ndim != 1 || t->shape[0] != g->k)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has shape %s, expected %s "
				"(calibrated on another model?)", fx_st_path(calib), name,
				fx_shape_str(a, sizeof(a), t->ndim, t->shape),
				fx_shape_str(b, sizeof(b), 1, want));
	ce->absmax = t;
	snprintf(name, sizeof(name), "%s.samples", g->name);
	if (!(t = fx_st_find(calib, name)))
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' missing", fx_st_path(calib), name);
	want[0] = t->ndim == 2 ? t->shape[0] : -1;
	want[1] = g->k;
	if (t->ndim != 2 || t->shape[1] != g->k || t->shape[0] < 1)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has shape %s, expected [M,%lld] "
				"with M >= 1 (calibrated on another model?)", fx_st_path(calib), name,
				fx_shape_str(a, sizeof(a), t->ndim, t->shape), (long long)g->k);
	ce->samples = t;
	return 0;
}

/* The calib file must have been recorded from this very model. */
static int check_calib_model(const struct fx_st *calib, const char *model_id, struct fx_err *err)
{
	int is = fx_file_input_is(calib, "model", model_id);

	if (is < 0)
		return fx_error(err, FX_E_FORMAT, "'%s': fx.inputs names no model; rerun fx-calib",
				fx_st_path(calib));
	if (!is)
		return fx_error(err, FX_E_HASH, "'%s' was calibrated on another model (this one is "
				"%.12s); rerun fx-calib on this model", fx_st_path(calib), model_id);
	return 0;
}

static void hash_tensor(struct fx_layer_hash *h, const struct fx_tensor *t)
{
	if (t)
		fx_layer_hash_update(h, t->data, t->nbytes);
}

static void layer_recipe(char out[65], const struct fx_group *g, const struct calib_entry *ce,
			 const char *lparams)
{
	struct fx_layer_hash *h = fx_layer_hash_new();
	int i;

	fx_layer_hash_str(h, g->name);
	for (i = 0; i < g->nmembers; i++) {
		hash_tensor(h, g->members[i].weight);
		hash_tensor(h, g->members[i].wscale);
	}
	if (g->lora[0])   /* the LoRA products merged into it */
		fx_layer_hash_str(h, g->lora);
	hash_tensor(h, ce->absmax);
	hash_tensor(h, ce->samples);
	fx_layer_hash_str(h, lparams);
	fx_layer_hash_final(h, out);
}

static const char *const roles[] = { "smooth", "down", "up", "splits", "stats" };

static int declare(struct fx_stage *s, const struct fx_group *g, int r, struct fx_err *err)
{
	char name[160];
	int64_t shp[2];
	int ret;

	snprintf(name, sizeof(name), "%s.smooth", g->name);
	shp[0] = g->k;
	if ((ret = fx_stage_add(s, name, FX_F32, 1, shp, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "%s.down", g->name);
	shp[0] = r;
	shp[1] = g->k;
	if ((ret = fx_stage_add(s, name, FX_F32, 2, shp, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "%s.up", g->name);
	shp[0] = g->n;
	shp[1] = r;
	if ((ret = fx_stage_add(s, name, FX_F32, 2, shp, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "%s.splits", g->name);
	shp[0] = g->nmembers + 1;
	if ((ret = fx_stage_add(s, name, FX_I64, 1, shp, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "%s.stats", g->name);
	shp[0] = FX_BRANCH_STAT_COUNT;
	return fx_stage_add(s, name, FX_F32, 1, shp, err);
}

static int copy_group(struct fx_stage *s, const struct fx_group *g, struct fx_err *err)
{
	char name[160];
	size_t i;
	int ret;

	for (i = 0; i < FX_ARRAY_SIZE(roles); i++) {
		snprintf(name, sizeof(name), "%s.%s", g->name, roles[i]);
		if ((ret = fx_stage_copy(s, name, err)) < 0)
			return ret;
	}
	return 0;
}

struct bufs {
	float *w, *x, *xmax;
	size_t cap_w, cap_x, cap_k;
};

static void bufs_free(struct bufs *b)
{
	free(b->w); free(b->x); free(b->xmax);
	memset(b, 0, sizeof(*b));
}

static bool grow(float **p, size_t *cap, size_t want)
{
	float *n;

	if (want <= *cap)
		return true;
	free(*p);
	*p = NULL;
	*cap = 0;
	if (!(n = malloc(want * sizeof(float))))
		return false;
	*p = n;
	*cap = want;
	return true;
}

static int bad_value(const struct fx_st *calib, const struct fx_tensor *t, size_t i,
		     struct fx_err *err)
{
	return fx_error(err, FX_E_VALUE, "'%s': tensor '%s' has a bad value at %zu (NaN, Inf or "
			"negative absmax)", fx_st_path(calib), t->name, i);
}

/* Reads the group's weight and calibration rows into b (f32). */
static int load_group(struct bufs *b, const struct fx_model *m, const struct fx_group *g,
		      const struct fx_st *calib, const struct calib_entry *ce, struct fx_err *err)
{
	size_t nk = (size_t)g->n * g->k, mk = (size_t)ce->samples->shape[0] * g->k, i;
	int ret;

	if (!grow(&b->w, &b->cap_w, nk) || !grow(&b->x, &b->cap_x, mk) ||
	    !grow(&b->xmax, &b->cap_k, (size_t)g->k)) {
		bufs_free(b);
		return fx_error(err, FX_E_NOMEM, "out of memory for layer '%s' (%lldx%lld)", g->name,
				(long long)g->n, (long long)g->k);
	}
	if ((ret = fx_model_group_f32(m, g, b->w, NULL, err)) < 0)
		return ret;
	if (fx_to_f32(b->x, ce->samples->data, ce->samples->dtype, mk) < 0 ||
	    fx_to_f32(b->xmax, ce->absmax->data, ce->absmax->dtype, (size_t)g->k) < 0)
		return fx_error(err, FX_E_FORMAT, "'%s': the calib tensors of '%s' are not float",
				fx_st_path(calib), g->name);
	for (i = 0; i < mk; i++)
		if (!isfinite(b->x[i]))
			return bad_value(calib, ce->samples, i, err);
	for (i = 0; i < (size_t)g->k; i++)
		if (!(b->xmax[i] >= 0.0f) || !isfinite(b->xmax[i]))
			return bad_value(calib, ce->absmax, i, err);
	return 0;
}

static int write_group(struct fx_stage *s, const struct fx_group *g,
		       const struct fx_lowrank_result *res, int r, struct fx_err *err)
{
	float stats[FX_BRANCH_STAT_COUNT];
	int64_t splits[FX_GROUP_MAX_MEMBERS + 1];
	char name[160];
	int i, ret;

	splits[0] = 0;
	for (i = 0; i < g->nmembers; i++)
		splits[i + 1] = splits[i] + g->members[i].nrows;
	stats[FX_BRANCH_STAT_ALPHA] = res->alpha;
	stats[FX_BRANCH_STAT_BETA] = res->beta;
	stats[FX_BRANCH_STAT_ERR_RTN] = (float)res->err_rtn;
	stats[FX_BRANCH_STAT_ERR_FINAL] = (float)res->err_final;
	stats[FX_BRANCH_STAT_ERR_BRANCH] = (float)res->err_branch;
	stats[FX_BRANCH_STAT_ROUNDS] = (float)res->rounds;
	snprintf(name, sizeof(name), "%s.smooth", g->name);
	if ((ret = fx_stage_write(s, name, res->smooth, (size_t)g->k * 4, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "%s.down", g->name);
	if ((ret = fx_stage_write(s, name, res->down, (size_t)r * g->k * 4, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "%s.up", g->name);
	if ((ret = fx_stage_write(s, name, res->up, (size_t)g->n * r * 4, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "%s.splits", g->name);
	if ((ret = fx_stage_write(s, name, splits, (size_t)(g->nmembers + 1) * 8, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "%s.stats", g->name);
	return fx_stage_write(s, name, stats, sizeof(stats), err);
}

/* Loads a group into b and runs the search into res (res->smooth, down, up
 * set by the caller). The model and calib reads are one job at a time. */
static int search_group(struct fx_lowrank_result *res, const struct fx_model *m,
			const struct fx_group *g, const struct fx_st *calib,
			const struct calib_entry *ce, const struct fx_lowrank_opts *ko,
			enum fx_qprec prec, const struct fx_device *dev, struct bufs *b,
			struct fx_err *err)
{
	struct fx_lowrank_problem p = {0};
	int64_t rows[FX_GROUP_MAX_MEMBERS];
	double t0 = fx_now();
	int i, ret;

#pragma omp critical(fx_search_load)
	ret = load_group(b, m, g, calib, ce, err);
	if (ret < 0)
		return ret;
	for (i = 0; i < g->nmembers; i++)
		rows[i] = g->members[i].nrows;
	p.prec = prec;
	p.n = g->n;
	p.k = g->k;
	p.w = b->w;
	p.nmember = g->nmembers;
	p.member_rows = rows;
	p.m = ce->samples->shape[0];
	p.x = b->x;
	p.xmax = b->xmax;
	p.shift = prec == FX_QPREC_INT4 && g->gelu_input;
#if defined(FX_CUDA) && FX_CUDA
	if (dev->kind == FX_DEV_CUDA)
		ret = fx_lowrank_group_cuda(dev->index, res, &p, ko, err);
	else
#endif
		ret = fx_lowrank_group_cpu(res, &p, ko, err);
	(void)dev;
	if (ret < 0)
		return fx_error_prefix(err, "layer '%s'", g->name);
	fx_log_info("%s: alpha %.2f beta %.2f, output error %.3e (rtn) -> %.3e (%d refinement "
		    "rounds), %.1f s", g->name, res->alpha, res->beta, res->err_rtn, res->err_final,
		    res->rounds, fx_now() - t0);
	return 0;
}

/* One group of the run: reused, or searched by a layer job. */
struct slot {
	const struct fx_group *g;
	const struct calib_entry *ce;
	char lr[65];
	bool reuse, done;
	struct fx_lowrank_result res;   /* its arrays owned until written */
};

struct jobs {
	struct fx_stage *s;
	struct slot *sl;
	size_t n, next, flushed;
	struct fx_progress *prog;
	int ret;
	struct fx_err err;
};

static void slot_free(struct slot *t)
{
	free(t->res.smooth);
	free(t->res.down);
	free(t->res.up);
	t->res.smooth = t->res.down = t->res.up = NULL;
}

/* Writes the finished slots that are next in the file's order (called by
 * one job at a time). */
static int flush(struct jobs *j, int r, struct fx_err *err)
{
	int ret = 0;

	while (j->flushed < j->n && j->sl[j->flushed].done) {
		struct slot *t = &j->sl[j->flushed];

		ret = t->reuse ? copy_group(j->s, t->g, err) : write_group(j->s, t->g, &t->res, r, err);
		slot_free(t);
		if (ret < 0)
			return ret;
		fx_stage_layer(j->s, t->g->name, t->lr, t->reuse);
		fx_progress_step(j->prog, 1, 0);
		j->flushed++;
	}
	return 0;
}

/* Searches the groups, `jobs` at once, each job on its share of the threads
 * (a nested team; one job: all of them): the parts of a search that do not
 * split over threads (small SVDs, QR, the per-candidate bookkeeping) then
 * overlap. The results do not depend on the threads, so the bytes are those
 * of one job. Reused groups are copied in their turn. */
static int run_jobs(struct jobs *j, int jobs, const struct fx_model *m, const struct fx_st *calib,
		    const struct fx_lowrank_opts *ko, enum fx_qprec prec,
		    const struct fx_device *dev)
{
	int inner = omp_get_max_threads() / jobs, levels = omp_get_max_active_levels();
	int blas = fx_ops_blas_single();   /* every job's BLAS calls single-threaded */

	if (inner < 1)
		inner = 1;
	omp_set_max_active_levels(2);
#pragma omp parallel num_threads(jobs)
	{
		struct bufs b = {0};
		struct fx_err e = {0};

		omp_set_num_threads(inner);
		for (;;) {
			struct slot *t = NULL;
			int ret = 0;

#pragma omp critical(fx_search_sched)
			{
				while (j->next < j->n && j->sl[j->next].reuse)
					j->next++;
				if (j->ret >= 0 && j->next < j->n)
					t = &j->sl[j->next++];
			}
			if (!t)
				break;
			t->res.smooth = malloc((size_t)t->g->k * sizeof(float));
			t->res.down = malloc((size_t)ko->rank * t->g->k * sizeof(float));
			t->res.up = malloc((size_t)t->g->n * ko->rank * sizeof(float));
			if (!t->res.smooth || !t->res.down || !t->res.up)
				ret = fx_error(&e, FX_E_NOMEM, "out of memory for layer '%s'", t->g->name);
			else
				ret = search_group(&t->res, m, t->g, calib, t->ce, ko, prec, dev, &b, &e);
#pragma omp critical(fx_search_sched)
			{
				if (ret >= 0 && j->ret >= 0) {
					t->done = true;
					ret = flush(j, ko->rank, &e);
				}
				if (ret < 0 && j->ret >= 0) {
					j->ret = ret;
					j->err = e;
				}
			}
		}
		bufs_free(&b);
	}
	omp_set_max_active_levels(levels);
	fx_ops_blas_restore(blas);
	return j->ret;
}

static int parse_opts(const struct fx_lowrank_stage_opts *o, struct fx_lowrank_opts *ko,
		      enum fx_qprec *prec, struct fx_err *err)
{
	fx_lowrank_opts_init(ko);
	if (!o->model || !o->calib || !o->output)
		return fx_error(err, FX_E_ARG, "model, calib and output are required");
	if (!strcmp(o->precision, "fp4"))
		*prec = FX_QPREC_NVFP4;
	else if (!strcmp(o->precision, "int4"))
		*prec = FX_QPREC_INT4;
	else
		return fx_error(err, FX_E_ARG, "precision must be fp4 or int4, not '%s'", o->precision);
	if (!strcmp(o->method, "rsvd"))
		ko->method = FX_LOWRANK_RSVD;
	else if (!strcmp(o->method, "svd"))
		ko->method = FX_LOWRANK_SVD;
	else
		return fx_error(err, FX_E_ARG, "method must be svd or rsvd, not '%s'", o->method);
	if (o->rank < 1)
		return fx_error(err, FX_E_ARG, "rank must be positive, not %d", o->rank);
	if (o->grid < 1 || o->grid > FX_LOWRANK_MAX_GRID)
		return fx_error(err, FX_E_ARG, "alpha grid must be 1-%d, not %d", FX_LOWRANK_MAX_GRID,
				o->grid);
	if (o->iters < 0)
		return fx_error(err, FX_E_ARG, "iterations must be >= 0, not %d", o->iters);
	if (o->finalists < 1 || o->finalists > FX_LOWRANK_MAX_FINALISTS)
		return fx_error(err, FX_E_ARG, "finalists must be 1-%d, not %d",
				FX_LOWRANK_MAX_FINALISTS, o->finalists);
	ko->rank = o->rank;
	ko->grid = o->grid;
	ko->iters = o->iters;
	ko->finalists = o->finalists;
	if (!(o->gptq_weight >= 0.0 && o->gptq_weight <= 1.0))
		return fx_error(err, FX_E_ARG, "GPTQ weight must be 0-1, not %g", o->gptq_weight);
	ko->gptq_weight = o->gptq_weight;
	return 0;
}

/* Parameters that decide every layer's content (blocks excluded, so a
 * layer computed in one block range is reused in another). */
static char *layer_params(const struct fx_lowrank_stage_opts *o, const struct fx_lowrank_opts *ko)
{
	char *s = NULL, gw[48] = "";

	/* gptq_weight only when set: branches searched for RTN keep their recipes */
	if (ko->gptq_weight > 0.0)
		snprintf(gw, sizeof(gw), ",\"gptq_weight\":%g", ko->gptq_weight);
	if (asprintf(&s, "{\"abandon\":%g,\"finalists\":%d,\"grid\":%d,\"iters\":%d,\"method\":\"%s\","
		     "\"oversample\":%d,\"power\":%d,\"precision\":\"%s\",\"rank\":%d,"
		     "\"refine_power\":%d,\"search\":%d,\"search_rows\":%lld,\"seed\":%llu%s}",
		     ko->abandon, ko->finalists, ko->grid, ko->iters, o->method, ko->oversample, ko->power,
		     o->precision, ko->rank, ko->refine_power, FX_LOWRANK_SEARCH_VERSION,
		     (long long)ko->search_rows, (unsigned long long)ko->seed, gw) < 0)
		return NULL;
	return s;
}

int fx_lowrank_run(const struct fx_lowrank_stage_opts *o, bool *up_to_date,
		   struct fx_stage **stage_out, struct fx_err *err)
{
	struct fx_model *m = NULL;
	struct fx_st *calib = NULL;
	struct fx_stage *s = NULL;
	const struct fx_model_config *c;
	struct calib_entry *ce = NULL;
	struct fx_lowrank_opts ko;
	struct fx_device dev;
	struct fx_progress prog;
	struct jobs j;
	enum fx_qprec prec = FX_QPREC_NVFP4;
	char model_id[65], blocks[32], note[256], *modeljs = NULL, *lparams = NULL;
	struct slot *sl = NULL;
	int first, last, jobs, ret;
	size_t i, ngroups = 0, nsl = 0, ncompute = 0;

	*up_to_date = false;
	if (stage_out)
		*stage_out = NULL;
	if ((ret = parse_opts(o, &ko, &prec, err)) < 0)
		goto out;
	/* biases, norms and unquantized tensors: NaN/Inf named here, not by a
	 * later stage (the weights are checked as they are widened) */
	if ((ret = fx_model_open_loras(&m, o->model, o->loras, err)) < 0 ||
	    (ret = fx_model_scan_values(m, false, NULL, NULL, err)) < 0)
		goto out;
	c = fx_model_config(m);
	if ((ret = fx_blocks_resolve(c, o->first_block, o->last_block, &first, &last, blocks,
				     sizeof(blocks), err)) < 0)
		goto out;
	if ((ret = fx_stage_new(&s, "fx-lowrank", FX_FMT_BRANCH, o->output, err)) < 0)
		goto out;
	if ((ret = fx_lora_stage_model(s, o->model, o->loras, model_id, err)) < 0)
		goto out;
	if ((ret = fx_st_open(&calib, o->calib, err)) < 0 ||
	    (ret = fx_file_expect(calib, FX_FMT_CALIB, "fx-lowrank", err)) < 0 ||
	    (ret = check_calib_model(calib, model_id, err)) < 0 ||
	    (ret = fx_audit_input(calib, FX_FMT_CALIB, o->model, "fx-lowrank", err)) < 0 ||
	    (ret = fx_stage_input(s, "calib", o->calib, err)) < 0)
		goto out;
	fx_stage_param_int(s, "rank", ko.rank);
	fx_stage_param_str(s, "precision", o->precision);
	fx_stage_param_int(s, "grid", ko.grid);
	fx_stage_param_int(s, "iters", ko.iters);
	fx_stage_param_int(s, "finalists", ko.finalists);
	fx_stage_param_real(s, "abandon", ko.abandon);
	fx_stage_param_str(s, "method", o->method);
	fx_stage_param_str(s, "blocks", blocks);
	fx_stage_param_int(s, "search_rows", ko.search_rows);
	fx_stage_param_int(s, "oversample", ko.oversample);
	fx_stage_param_int(s, "power", ko.power);
	fx_stage_param_int(s, "refine_power", ko.refine_power);
	fx_stage_param_int(s, "search", FX_LOWRANK_SEARCH_VERSION);
	fx_stage_param_int(s, "seed", (long long)ko.seed);
	if (ko.gptq_weight > 0.0)
		fx_stage_param_real(s, "gptq_weight", ko.gptq_weight);
	if ((ret = fx_stage_check(s, o->force, err)) < 0)
		goto out;
	if (ret == 1) {
		*up_to_date = true;
		ret = 0;
		goto out;
	}
	if ((ret = fx_device_select(&dev, o->device, note, sizeof(note), err)) < 0)
		goto out;
	if (note[0])
		fx_log_warn("%s", note);
	if (!(lparams = layer_params(o, &ko)) ||
	    !(ce = calloc(fx_model_ngroups(m), sizeof(*ce)))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	/* every check before the first long computation */
	for (i = 0; i < fx_model_ngroups(m); i++) {
		const struct fx_group *g = fx_model_group(m, i);

		if (g->kind != FX_GROUP_W4A4 || !fx_group_in_range(c, g, first, last))
			continue;
		if (g->k % 64) {
			ret = fx_error(err, FX_E_FORMAT, "layer '%s' has K=%lld, not a multiple of 64",
				       g->name, (long long)g->k);
			goto out;
		}
		if (ko.rank > g->n || ko.rank > g->k) {
			ret = fx_error(err, FX_E_ARG, "--rank %d exceeds layer '%s' (%lldx%lld)", ko.rank,
				       g->name, (long long)g->n, (long long)g->k);
			goto out;
		}
		if ((ret = find_calib(&ce[i], calib, g, err)) < 0 ||
		    (ret = declare(s, g, ko.rank, err)) < 0)
			goto out;
		ngroups++;
	}
	if (!(modeljs = fx_model_brief_json(c))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	fx_stage_meta(s, "fx.model", modeljs);
	if ((ret = fx_stage_begin(s, err)) < 0)
		goto out;
	fx_log_info("%zu layers on %s, rank %d, %s, %d smoothing candidates", ngroups, dev.desc,
		    ko.rank, o->precision, 2 * (ko.grid - 1) + 1);
	if (!(sl = calloc(ngroups ? ngroups : 1, sizeof(*sl)))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < fx_model_ngroups(m); i++) {
		const struct fx_group *g = fx_model_group(m, i);
		struct slot *t = &sl[nsl];

		if (g->kind != FX_GROUP_W4A4 || !fx_group_in_range(c, g, first, last))
			continue;
		t->g = g;
		t->ce = &ce[i];
		layer_recipe(t->lr, g, &ce[i], lparams);
		t->reuse = t->done = fx_stage_reusable(s, g->name, t->lr);
		ncompute += !t->reuse;
		nsl++;
	}
	jobs = o->jobs > 0 ? o->jobs : 2;
	if (jobs > omp_get_max_threads())
		jobs = omp_get_max_threads();
	if (jobs > (int)ncompute)
		jobs = (int)ncompute;
	if (jobs < 1 || dev.kind != FX_DEV_CPU)
		jobs = 1;
	if (jobs > 1)
		fx_log_info("%d layers at once", jobs);
	fx_progress_start(&prog, "fx-lowrank", ngroups, 0);
	j = (struct jobs){ .s = s, .sl = sl, .n = nsl, .prog = &prog };
	if ((ret = run_jobs(&j, jobs, m, calib, &ko, prec, &dev)) >= 0)
		ret = flush(&j, ko.rank, &j.err);   /* reused groups after the last search */
	if (ret < 0) {
		*err = j.err;
		goto out;
	}
	fx_progress_end(&prog);
	ret = fx_stage_commit(s, err);
out:
	for (i = 0; sl && i < nsl; i++)
		slot_free(&sl[i]);
	free(sl);
	free(ce);
	free(lparams);
	free(modeljs);
	fx_st_close(calib);
	fx_model_close(m);
	if (stage_out && ret >= 0)
		*stage_out = s;
	else
		fx_stage_free(s);
	return ret;
}
