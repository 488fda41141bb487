#include "fx-quantize.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <jansson.h>
#include <omp.h>

#include "fx-log.h"
#include "fx-tensor.h"
#include "fx-gptq.h"
#include "fx-ops.h"
#include "fx-runtime.h"
#include "fx-quant.h"
#include "fx-audit.h"
#include "fx-blocks.h"
#include "fx-file.h"
#include "fx-lora.h"
#include "fx-model.h"
#include "fx-stage.h"
#include "fx-st.h"

/* A branch or calib tensor of a group, shape-checked. */
static int get_f32(const struct fx_st *st, const char *group, const char *role,
		   int ndim, const int64_t *shape, enum fx_dtype want_dt,
		   const struct fx_tensor **out, struct fx_err *err)
{
	char name[160], a[64], b[64];
	const struct fx_tensor *t;
	int i;

	snprintf(name, sizeof(name), "%s.%s", group, role);
	t = fx_st_find(st, name);
	*out = t;
	if (!t)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' missing", fx_st_path(st), name);
	if (t->dtype != want_dt)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' is %s, expected %s",
				fx_st_path(st), name, fx_dtype_name(t->dtype), fx_dtype_name(want_dt));
	for (i = 0; i < ndim && t->ndim == ndim; i++)
		if (shape[i] >= 0 && t->shape[i] != shape[i])
			break;
	if (t->ndim != ndim || i < ndim)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has shape %s, expected %s",
				fx_st_path(st), name, fx_shape_str(a, sizeof(a), t->ndim, t->shape),
				fx_shape_str(b, sizeof(b), ndim, shape));
	return 0;
}

/* NaN/Inf in a branch tensor, named by file, tensor and element. */
static int check_finite(const struct fx_tensor *t, const struct fx_st *st, struct fx_err *err)
{
	const float *v = t->data;
	size_t n = fx_tensor_numel(t), i;
	char at[64];

	for (i = 0; i < n && isfinite(v[i]); i++)
		;
	if (i == n)
		return 0;
	if (t->ndim == 2)
		snprintf(at, sizeof(at), "[%lld,%lld]", (long long)(i / (size_t)t->shape[1]),
			 (long long)(i % (size_t)t->shape[1]));
	else
		snprintf(at, sizeof(at), "[%zu]", i);
	return fx_error(err, FX_E_VALUE, "'%s': tensor '%s' has %s at %s", fx_st_path(st), t->name,
			isnan(v[i]) ? "NaN" : v[i] > 0 ? "Inf" : "-Inf", at);
}

/* What the branch was searched for, from its fx.params. Its precision must
 * be ours: quantizing with the other silently loses the search. A branch
 * searched for GPTQ codes (fx-lowrank --for-gptq) and rounding to nearest,
 * or the other way round, is legal but loses quality: say so. */
static int check_branch_params(const struct fx_st *branch, const char *want, bool gptq,
			       struct fx_err *err)
{
	json_t *p = json_loads(fx_st_meta(branch, "fx.params"), 0, NULL);
	const char *have = json_string_value(json_object_get(p, "precision"));
	double w = json_number_value(json_object_get(p, "gptq_weight"));
	int ret = 0;

	if (have && strcmp(have, want))
		ret = fx_error(err, FX_E_FORMAT, "'%s' was made for --precision %s, not %s "
			       "(rerun fx-lowrank with --precision %s)", fx_st_path(branch), have,
			       want, want);
	else if (w > 0.0 && !gptq)
		fx_log_info("note: '%s' was searched for GPTQ (fx-lowrank --for-gptq): without --gptq "
			    "its residual rounds worse than that of a branch searched without it",
			    fx_st_path(branch));
	else if (!(w > 0.0) && gptq)
		fx_log_info("note: '%s' was searched for round-to-nearest codes: with --gptq, "
			    "fx-lowrank --for-gptq picks smoothings that gain more (fx-lowrank(1))",
			    fx_st_path(branch));
	json_decref(p);
	return ret;
}

/* Declares the fx.quant tensors of one group. */
static int declare(struct fx_stage *s, const struct fx_group *g, bool fp4, struct fx_err *err)
{
	char name[160];
	int64_t shp[2];
	int ret;

	snprintf(name, sizeof(name), "%s.codes", g->name);
	shp[0] = g->n;
	shp[1] = g->k / 2;
	if ((ret = fx_stage_add(s, name, FX_U8, 2, shp, err)) < 0)
		return ret;
	if (g->kind == FX_GROUP_ADALN) {
		shp[1] = g->k / FX_QUANT_W4A16_GROUP;
		snprintf(name, sizeof(name), "%s.scales", g->name);
		if ((ret = fx_stage_add(s, name, FX_BF16, 2, shp, err)) < 0)
			return ret;
		snprintf(name, sizeof(name), "%s.zeros", g->name);
		return fx_stage_add(s, name, FX_BF16, 2, shp, err);
	}
	snprintf(name, sizeof(name), "%s.scales", g->name);
	if (fp4) {
		shp[1] = g->k / FX_QUANT_FP4_GROUP;
		if ((ret = fx_stage_add(s, name, FX_F8_E4M3, 2, shp, err)) < 0)
			return ret;
		snprintf(name, sizeof(name), "%s.tscale", g->name);
		shp[0] = g->nmembers;
		return fx_stage_add(s, name, FX_F32, 1, shp, err);
	}
	shp[1] = g->k / FX_QUANT_INT4_GROUP;
	return fx_stage_add(s, name, FX_BF16, 2, shp, err);
}

struct bufs {
	float *w, *x, *ramax;
	uint8_t *codes, *scales8;
	uint16_t *scales16, *zeros;
	float *rscale, *tscale;
	int64_t *perm;
	float *dpack;   /* the branch's down packed for fx_ops_residual */
	size_t cap_w, cap_nk, cap_n, cap_x, cap_dpack;
};

static void bufs_free(struct bufs *b)
{
	free(b->w); free(b->x); free(b->ramax); free(b->codes); free(b->scales8);
	free(b->scales16); free(b->zeros); free(b->rscale); free(b->tscale); free(b->perm);
	free(b->dpack);
}

/* Grow-only: outputs for an (n, k) layer, wrows rows of f32 weights, m
 * calibration rows. */
static int bufs_fit(struct bufs *b, int64_t n, int64_t k, int64_t wrows, int64_t m,
		    struct fx_err *err)
{
	size_t nk = (size_t)n * k, wk = (size_t)wrows * k;

	if (nk > b->cap_nk || (size_t)n > b->cap_n) {
		free(b->codes); free(b->scales8); free(b->scales16); free(b->zeros);
		free(b->rscale); free(b->ramax); free(b->perm);
		b->codes = malloc(nk / 2);
		b->scales8 = malloc(nk / 16);
		b->scales16 = malloc(nk / 64 * 2);
		b->zeros = malloc(nk / 64 * 2);
		b->rscale = malloc((size_t)n * sizeof(float));
		b->ramax = malloc((size_t)n * sizeof(float));
		b->perm = malloc((size_t)n * sizeof(int64_t));
		b->cap_nk = b->cap_n = 0;
		if (!b->codes || !b->scales8 || !b->scales16 || !b->zeros || !b->rscale || !b->ramax ||
		    !b->perm)
			return fx_error(err, FX_E_NOMEM, "out of memory for a %lldx%lld layer",
					(long long)n, (long long)k);
		b->cap_nk = nk;
		b->cap_n = (size_t)n;
	}
	if (!b->tscale && !(b->tscale = malloc(FX_GROUP_MAX_MEMBERS * sizeof(float))))
		return fx_error(err, FX_E_NOMEM, "out of memory");
	if (wk > b->cap_w) {
		free(b->w);
		if (!(b->w = malloc(wk * sizeof(float)))) {
			b->cap_w = 0;
			return fx_error(err, FX_E_NOMEM, "out of memory for %lld rows of %lld weights",
					(long long)wrows, (long long)k);
		}
		b->cap_w = wk;
	}
	if ((size_t)m * k > b->cap_x) {
		free(b->x);
		b->x = malloc((size_t)m * k * sizeof(float));
		if (!b->x)
			return fx_error(err, FX_E_NOMEM, "out of memory for calibration rows");
		b->cap_x = (size_t)m * k;
	}
	return 0;
}

static void hash_tensor(struct fx_layer_hash *h, const struct fx_tensor *t)
{
	if (t)
		fx_layer_hash_update(h, t->data, t->nbytes);
}

/* Layer recipe: the members' weight (and bias) bytes, the branch and calib
 * entries used, the params. */
static void layer_recipe(char out[65], const struct fx_group *g, const struct fx_st *branch,
			 const struct fx_st *calib, const char *params)
{
	struct fx_layer_hash *h = fx_layer_hash_new();
	static const char *const broles[] = { "smooth", "down", "up" };
	char name[160];
	int i;

	fx_layer_hash_str(h, g->name);
	for (i = 0; i < g->nmembers; i++) {
		hash_tensor(h, g->members[i].weight);
		hash_tensor(h, g->members[i].wscale);
		hash_tensor(h, g->members[i].bias);
	}
	if (g->lora[0])   /* the LoRA products merged into it */
		fx_layer_hash_str(h, g->lora);
	for (i = 0; branch && i < 3; i++) {
		snprintf(name, sizeof(name), "%s.%s", g->name, broles[i]);
		hash_tensor(h, fx_st_find(branch, name));
	}
	if (calib) {
		snprintf(name, sizeof(name), "%s.samples", g->name);
		hash_tensor(h, fx_st_find(calib, name));
		snprintf(name, sizeof(name), "%s.xtx", g->name);
		hash_tensor(h, fx_st_find(calib, name));
		snprintf(name, sizeof(name), "%s.xsum", g->name);
		hash_tensor(h, fx_st_find(calib, name));
		snprintf(name, sizeof(name), "%s.nrows", g->name);
		hash_tensor(h, fx_st_find(calib, name));
	}
	fx_layer_hash_str(h, params);
	fx_layer_hash_final(h, out);
}

/* The branch of a W4A4 group: smooth (k), down (r,k), up (n,r). */
struct branch_t {
	const float *smooth, *down, *up;
	const float *packed;   /* down for fx_ops_residual, packed once per layer */
	int64_t r;
};

static int get_branch(const struct fx_st *branch, const struct fx_group *g, struct branch_t *br,
		      struct fx_err *err)
{
	const struct fx_tensor *ts, *td, *tu;
	int64_t shp[2];
	int ret;

	shp[0] = g->k;
	if ((ret = get_f32(branch, g->name, "smooth", 1, shp, FX_F32, &ts, err)) < 0)
		return ret;
	shp[0] = -1; shp[1] = g->k;
	if ((ret = get_f32(branch, g->name, "down", 2, shp, FX_F32, &td, err)) < 0)
		return ret;
	shp[0] = g->n; shp[1] = td->shape[0];
	if ((ret = get_f32(branch, g->name, "up", 2, shp, FX_F32, &tu, err)) < 0)
		return ret;
	br->smooth = ts->data;
	br->down = td->data;
	br->up = tu->data;
	br->r = td->shape[0];
	if ((ret = check_finite(ts, branch, err)) < 0 || (ret = check_finite(td, branch, err)) < 0 ||
	    (ret = check_finite(tu, branch, err)) < 0)
		return ret;
	for (int64_t i = 0; i < g->k; i++)
		if (!(br->smooth[i] > 0))
			return fx_error(err, FX_E_VALUE, "'%s': tensor '%s.smooth' has %g at %lld (must be > 0)",
					fx_st_path(branch), g->name, br->smooth[i], (long long)i);
	return 0;
}

/* Rows [r0, r0+nr) of what is quantized (rows[] instead when given): the
 * weights, or with a branch the residual R = W·diag(s) − up·down. */
static int produce(const struct fx_model *m, const struct fx_group *g, const struct branch_t *br,
		   int64_t r0, int64_t nr, const int64_t *rows, float *w, struct fx_err *err)
{
	const int64_t k = g->k;
	int ret = fx_model_group_rows_f32(m, g, r0, nr, rows, w, err);

	if (ret < 0 || !br)
		return ret;
	/* not an sgemm: its rounding would follow the shape of the call, so the
	 * bytes would depend on the row blocks */
	fx_ops_residual(w, w, br->smooth, br->up + r0 * br->r, br->down, br->packed, nr, k, br->r);
	return 0;
}

/* ramax[0..nr) of produced rows; a NaN/Inf (possible in a residual) is named
 * by its weight row (rows[]: the source row of each produced row). */
static int block_absmax(float *ramax, const float *w, int64_t r0, int64_t nr, int64_t k,
			const int64_t *rows, const struct fx_group *g, struct fx_err *err)
{
	int64_t r, c = k;

	if (fx_quant_row_absmax(ramax, w, nr, k))
		return 0;
	for (r = 0; r < nr; r++) {
		for (c = 0; c < k && isfinite(w[r * k + c]); c++)
			;
		if (c < k)
			break;
	}
	return fx_error(err, FX_E_VALUE, "layer '%s': non-finite weight at [%lld,%lld]", g->name,
			(long long)(rows ? rows[r] : r0 + r), (long long)c);
}

/* One chunk of rows [r0, r0+nr) of a streamed layer, on the calling thread:
 * pass 0 records the row maxima (NVFP4's tensor scale), pass 1 writes the
 * codes and scales (INT4 and W4A16 check finiteness there, their only pass).
 * Chunks own their rows of b, so threads never share an entry. */
static int stream_chunk(const struct fx_model *m, const struct fx_group *g,
			const struct branch_t *br, bool fp4, int pass, int64_t r0, int64_t nr,
			float *w, struct bufs *b, struct fx_err *err)
{
	const int64_t k = g->k;
	const int64_t *rows = g->kind == FX_GROUP_ADALN ? b->perm + r0 : NULL;
	int ret;

	if ((ret = produce(m, g, br, r0, nr, rows, w, err)) < 0)
		return ret;
	if ((pass == 0 || g->kind == FX_GROUP_ADALN || !fp4) &&
	    (ret = block_absmax(b->ramax + r0, w, r0, nr, k, rows, g, err)) < 0)
		return ret;
	if (pass == 0)
		return 0;
	if (g->kind == FX_GROUP_ADALN) {
		fx_quant_w4a16_rows_cpu(b->codes + r0 * (k / 2), b->scales16 + r0 * (k / 64),
					b->zeros + r0 * (k / 64), w, nr, k);
		return 0;
	}
	if (!fp4) {
		fx_quant_int4_rows_cpu(b->codes + r0 * (k / 2), b->scales16 + r0 * (k / 64), w, nr, k);
		return 0;
	}
	/* a chunk may straddle members: each part with its member's T */
	for (int64_t a = r0; a < r0 + nr; ) {
		int64_t e = a + 1;

		while (e < r0 + nr && b->rscale[e] == b->rscale[a])
			e++;
		ret = fx_quant_nvfp4_rows_cpu(b->codes + a * (k / 2), b->scales8 + a * (k / 16),
					      w + (a - r0) * k, e - a, k, b->rscale[a], err);
		if (ret < 0)
			return ret;
		a = e;
	}
	return 0;
}

/* Without a clipping search a layer streams: each thread builds a chunk of
 * rows small enough to stay in its cache (weights, or the residual with a
 * branch) and quantizes it; NVFP4 goes over the layer twice (row maxima for
 * T, then the codes). The same bytes as quantizing the whole matrix. */
static int quantize_stream(const struct fx_model *m, const struct fx_group *g,
			   const struct branch_t *br, bool fp4, int64_t chunk, struct bufs *b,
			   struct fx_err *err)
{
	const int64_t n = g->n, k = g->k, nchunk = (n + chunk - 1) / chunk;
	int64_t bad_chunk = -1;
	struct fx_err first = { 0 };
	int ret = 0;

	if (g->kind == FX_GROUP_ADALN)
		for (int64_t r = 0; r < n; r++)
			b->perm[r] = fx_quant_adaln_src_row(r, n, g->adaln_chunks);
	for (int pass = g->kind == FX_GROUP_W4A4 && fp4 ? 0 : 1; pass < 2 && bad_chunk < 0; pass++) {
#pragma omp parallel
		{
			float *w = b->w + (size_t)omp_get_thread_num() * (size_t)(chunk * k);
			struct fx_err e = { 0 };

#pragma omp for schedule(static)
			for (int64_t c = 0; c < nchunk; c++) {
				int64_t r0 = c * chunk, nr = n - r0 < chunk ? n - r0 : chunk;

				if (stream_chunk(m, g, br, fp4, pass, r0, nr, w, b, &e) < 0) {
#pragma omp critical(fx_quant_stream)
					if (bad_chunk < 0 || c < bad_chunk) {
						bad_chunk = c;
						first = e;
					}
				}
			}
		}
		if (bad_chunk >= 0)
			break;
		if (pass == 0)
			for (int i = 0; i < g->nmembers; i++) {
				const struct fx_member *mb = &g->members[i];
				float amax = 0.0f;

				for (int64_t r = mb->out_row0; r < mb->out_row0 + mb->nrows; r++)
					amax = b->ramax[r] > amax ? b->ramax[r] : amax;
				b->tscale[i] = fx_quant_nvfp4_tscale(amax);
				for (int64_t r = mb->out_row0; r < mb->out_row0 + mb->nrows; r++)
					b->rscale[r] = b->tscale[i];
			}
	}
	if (bad_chunk >= 0)
		ret = fx_error(err, first.code, "%s", first.msg);
	return ret;
}

/* The Hessian of what the layer's weights multiply: XᵀX of the calib file,
 * summed over every row the layer saw (F64; F32 from an earlier fx-calib),
 * in the smoothed domain (x/s: H_ab / (s_a s_b)). For INT4 *_fc2 the
 * runtime shifts the input by c first, (x+c)/s: over the n rows (nrows),
 * with σ = Σx (xsum),
 *   Σ (x + c1)(x + c1)ᵀ = XᵀX + c(σ1ᵀ + 1σᵀ) + n c² 11ᵀ,
 * taken over n: H = XᵀX/n + c(μ_a + μ_b) + c², μ = σ/n, exact. A file
 * without the sums: XᵀX scaled to the samples' mean square, μ the samples'
 * mean (BF16 rows, a subset). */
static int gptq_hessian(double *h, const struct fx_group *g, const struct fx_st *calib,
			const struct branch_t *br, bool shift, const float *x, int64_t msamp,
			struct fx_err *err)
{
	const int64_t k = g->k;
	const double c = FX_RT_FC2_SHIFT;
	const struct fx_tensor *t, *ts = NULL, *tn = NULL;
	char name[160], nm2[160];

	snprintf(name, sizeof(name), "%s.xtx", g->name);
	t = fx_st_find(calib, name);
	if (!t)
		return fx_error(err, FX_E_FORMAT, "'%s' has no '%s': --gptq needs a calib file made "
				"with fx-calib --hessian", fx_st_path(calib), name);
	if ((t->dtype != FX_F64 && t->dtype != FX_F32) || t->ndim != 2 || t->shape[0] != k ||
	    t->shape[1] != k)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' is not F64 [%lld,%lld] (or F32 from "
				"an earlier fx-calib)", fx_st_path(calib), name, (long long)k, (long long)k);
	if (t->dtype == FX_F64)
		memcpy(h, t->data, (size_t)k * k * sizeof(double));
	else
		for (int64_t i = 0; i < k * k; i++)
			h[i] = ((const float *)t->data)[i];
	fx_tensor_release(t);
	if (shift) {
		snprintf(name, sizeof(name), "%s.xsum", g->name);
		snprintf(nm2, sizeof(nm2), "%s.nrows", g->name);
		ts = fx_st_find(calib, name);
		tn = fx_st_find(calib, nm2);
		if (!ts != !tn)
			return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' missing (xsum and nrows come "
					"together; rerun fx-calib --hessian)", fx_st_path(calib), ts ? nm2 : name);
	}
	if (ts) {
		int64_t n;

		if (ts->dtype != FX_F64 || ts->ndim != 1 || ts->shape[0] != k)
			return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' is not F64 [%lld]",
					fx_st_path(calib), name, (long long)k);
		if (tn->dtype != FX_I64 || tn->ndim != 1 || tn->shape[0] != 1)
			return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' is not I64 [1]",
					fx_st_path(calib), nm2);
		memcpy(&n, tn->data, sizeof(n));
		if (n < 1)
			return fx_error(err, FX_E_VALUE, "'%s': tensor '%s' is %lld, not a row count",
					fx_st_path(calib), nm2, (long long)n);
		for (int64_t a = 0; a < k; a++) {
			double sa;

			memcpy(&sa, (const char *)ts->data + a * 8, 8);
			for (int64_t b = 0; b < k; b++) {
				double sb;

				memcpy(&sb, (const char *)ts->data + b * 8, 8);
				h[a * k + b] = h[a * k + b] / (double)n + c * (sa / (double)n + sb / (double)n) +
					       c * c;
			}
		}
	} else if (shift && x && msamp > 0) {
		double tr = 0.0, ms = 0.0, *mu = calloc((size_t)k, sizeof(double));

		if (!mu)
			return fx_error(err, FX_E_NOMEM, "out of memory");
		for (int64_t r = 0; r < msamp; r++)
			for (int64_t a = 0; a < k; a++) {
				mu[a] += x[r * k + a];
				ms += (double)x[r * k + a] * x[r * k + a];
			}
		for (int64_t a = 0; a < k; a++) {
			mu[a] /= (double)msamp;
			tr += h[a * k + a];
		}
		ms /= (double)msamp;
		for (int64_t a = 0; a < k; a++)
			for (int64_t b = 0; b < k; b++)
				h[a * k + b] = (tr > 0.0 ? h[a * k + b] * ms / tr : 0.0) +
					       c * (mu[a] + mu[b]) + c * c;
		free(mu);
	}
	if (br)
		for (int64_t a = 0; a < k; a++)
			for (int64_t b = 0; b < k; b++)
				h[a * k + b] /= (double)br->smooth[a] * br->smooth[b];
	return 0;
}

/* The rows a layer's XᵀX was summed over (nrows), -1 when the calib file
 * does not say (an earlier fx-calib). */
static int64_t calib_rows(const struct fx_group *g, const struct fx_st *calib)
{
	char name[160];
	const struct fx_tensor *tn;
	int64_t n;

	snprintf(name, sizeof(name), "%s.nrows", g->name);
	tn = fx_st_find(calib, name);
	if (!tn || tn->dtype != FX_I64 || tn->nbytes != sizeof(n))
		return -1;
	memcpy(&n, tn->data, sizeof(n));
	return n;
}

/* GPTQ fits the rows its XᵀX came from: a W4A4 layer whose XᵀX has fewer
 * rows than inputs (a singular H) gets codes that follow those rows rather
 * than the model, so it is damped more (opts gptq_thin_damp). adaLN layers
 * see one row a pass by nature and are left alone. */
static bool thin_layer(const struct fx_group *g, const struct fx_st *calib)
{
	int64_t n;

	if (!calib || g->kind == FX_GROUP_ADALN)
		return false;
	n = calib_rows(g, calib);
	return n >= 0 && n < g->k;
}

/* The damping of a layer: the thin one where it is larger. */
static double layer_damp(const struct fx_quantize_opts *o, bool thin)
{
	double d = o->gptq_damp > 0 ? o->gptq_damp : FX_GPTQ_DAMP;
	double t = o->gptq_thin_damp > 0 ? o->gptq_thin_damp : FX_GPTQ_THIN_DAMP;

	return thin && t > d ? t : d;
}

/* Thin layers, counted for one warning; *worst is the thinnest. */
struct thin_rows {
	int count;
	const struct fx_group *worst;
	int64_t rows;
};

static void note_rows(struct thin_rows *t, const struct fx_group *g, const struct fx_st *calib)
{
	int64_t n;

	if (!thin_layer(g, calib))
		return;
	n = calib_rows(g, calib);
	t->count++;
	if (!t->worst || (double)n / g->k < (double)t->rows / t->worst->k) {
		t->worst = g;
		t->rows = n;
	}
}

/* GPTQ codes for the layer whose RTN scales b holds: R (all n rows, in the
 * order of the codes) swept against H with those scales fixed. */
static int gptq_group(const struct fx_model *m, const struct fx_group *g,
		      const struct fx_st *calib, const struct branch_t *br, bool fp4,
		      const struct fx_quantize_opts *o, struct bufs *b, const float *x,
		      int64_t msamp, struct fx_err *err)
{
	const int64_t n = g->n, k = g->k;
	bool adaln = g->kind == FX_GROUP_ADALN;
	enum fx_qprec p = adaln ? FX_QPREC_W4A16 : fp4 ? FX_QPREC_NVFP4 : FX_QPREC_INT4;
	int64_t ng = k / (p == FX_QPREC_NVFP4 ? FX_QUANT_FP4_GROUP : FX_QUANT_INT4_GROUP);
	double *h = malloc((size_t)k * (size_t)k * sizeof(double));
	float *gs = malloc((size_t)(n * ng) * sizeof(float));
	float *gz = adaln ? malloc((size_t)(n * ng) * sizeof(float)) : NULL;
	struct fx_gptq *gq = NULL;
	int ret;

	if (!h || !gs || (adaln && !gz)) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory for GPTQ of layer '%s'", g->name);
		goto out;
	}
	if ((ret = gptq_hessian(h, g, calib, adaln ? NULL : br,
				!adaln && !fp4 && g->gelu_input, x, msamp, err)) < 0)
		goto out;
	if ((ret = fx_gptq_new(&gq, h, k, layer_damp(o, thin_layer(g, calib)),
			       o->gptq_block > 0 ? o->gptq_block : FX_GPTQ_BLOCK, err)) < 0) {
		fx_error_prefix(err, "layer '%s'", g->name);
		goto out;
	}
	free(h);
	h = NULL;
	for (int64_t i = 0; i < n * ng; i++) {
		gs[i] = p == FX_QPREC_NVFP4 ? fx_e4m3_to_f32(b->scales8[i]) : fx_bf16_to_f32(b->scales16[i]);
		if (gz)
			gz[i] = fx_bf16_to_f32(b->zeros[i]);
	}
	if (adaln)
		for (int64_t r = 0; r < n; r++)
			b->perm[r] = fx_quant_adaln_src_row(r, n, g->adaln_chunks);
	if ((ret = produce(m, g, br, 0, n, adaln ? b->perm : NULL, b->w, err)) < 0)
		goto out;
	ret = fx_gptq_rows(gq, p, b->w, n, gs, gz, p == FX_QPREC_NVFP4 ? b->rscale : NULL, b->codes,
			   err);
	if (ret < 0)
		fx_error_prefix(err, "layer '%s'", g->name);
out:
	fx_gptq_free(gq);
	free(h);
	free(gs);
	free(gz);
	return ret;
}

static int quantize_group(struct fx_stage *s, const struct fx_model *m, const struct fx_group *g,
			  const struct fx_st *branch, const struct fx_st *calib, bool fp4,
			  const struct fx_quantize_opts *o, struct bufs *b, struct fx_err *err)
{
	int64_t n = g->n, k = g->k, msamp = 0;
	const struct fx_tensor *tx = NULL;
	struct fx_qsearch search = {0};
	struct branch_t br = {0}, *brp = NULL;
	/* streamed rows per thread: about 512 KiB of f32, well inside L2, in
	 * whole 4-row blocks of the residual kernel */
	int64_t blk = (int64_t)((128u << 10) / (size_t)k) / 4 * 4;
	int nthr = omp_get_max_threads();
	char name[160];
	int ret, i;

	if (getenv("FX_QUANT_ROWS") && *getenv("FX_QUANT_ROWS"))   /* tests: chunks that straddle members */
		blk = atoll(getenv("FX_QUANT_ROWS"));
	blk = blk < 1 ? 1 : blk > n ? n : blk;
	if (calib && o->search) {
		snprintf(name, sizeof(name), "%s.samples", g->name);
		tx = fx_st_find(calib, name);
		if (tx && (tx->ndim != 2 || tx->shape[1] != k))
			return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has %lld columns, layer '%s' has k=%lld",
					fx_st_path(calib), name, tx->ndim == 2 ? (long long)tx->shape[1] : -1LL,
					g->name, (long long)k);
		if (tx)
			msamp = tx->shape[0];
	}
	if ((ret = bufs_fit(b, n, k, msamp || o->gptq ? (n > blk * nthr ? n : blk * nthr) : blk * nthr,
			    msamp, err)) < 0)
		return ret;
	if (g->kind == FX_GROUP_W4A4 && branch) {
		if ((ret = get_branch(branch, g, &br, err)) < 0)
			return ret;
		brp = &br;
		/* packed once, not per row block; without memory the kernel packs
		 * per call (slower, the same bytes) */
		if ((size_t)(br.r * k) > b->cap_dpack) {
			free(b->dpack);
			b->dpack = malloc((size_t)(br.r * k) * sizeof(float));
			b->cap_dpack = b->dpack ? (size_t)(br.r * k) : 0;
		}
		if (b->dpack && br.r > 0) {
			fx_ops_residual_pack(b->dpack, br.down, br.r, k);
			br.packed = b->dpack;
		}
	}
	if (!msamp) {
		if ((ret = quantize_stream(m, g, brp, fp4, blk, b, err)) < 0)
			return ret;
	} else {
		/* the clipping search needs the whole layer and its inputs */
		if ((ret = produce(m, g, brp, 0, n, NULL, b->w, err)) < 0)
			return ret;
		if ((ret = fx_to_f32(b->x, tx->data, tx->dtype, (size_t)msamp * k)) < 0)
			return fx_error(err, ret, "'%s': tensor '%s' is not a float tensor", fx_st_path(calib), name);
		if (brp) {
#pragma omp parallel for
			for (int64_t row = 0; row < msamp; row++)
				for (int64_t c = 0; c < k; c++)
					b->x[row * k + c] /= br.smooth[c];
		}
		search.x = b->x;
		search.m = msamp;
		if (g->kind == FX_GROUP_ADALN) {
			ret = fx_quant_w4a16_cpu(b->codes, b->scales16, b->zeros, b->w, n, k, g->adaln_chunks,
						 &search, err);
		} else if (fp4) {
			int64_t rows[FX_GROUP_MAX_MEMBERS];

			for (i = 0; i < g->nmembers; i++)
				rows[i] = g->members[i].nrows;
			ret = fx_quant_nvfp4_cpu(b->codes, b->scales8, b->rscale, b->w, n, k, rows,
						 g->nmembers, &search, err);
			for (i = 0; ret == 0 && i < g->nmembers; i++)
				b->tscale[i] = b->rscale[g->members[i].out_row0];
		} else {
			ret = fx_quant_int4_cpu(b->codes, b->scales16, b->w, n, k, &search, err);
		}
		if (ret < 0)
			return fx_error_prefix(err, "layer '%s'", g->name);
	}
	if (o->gptq) {
		/* the INT4 *_fc2 shift needs the raw samples' mean (the search's
		 * copy in b->x is smoothed, and done with) */
		const struct fx_tensor *ts = NULL;
		float *xs = NULL;
		int64_t ms = 0;

		if (!fp4 && g->gelu_input && g->kind == FX_GROUP_W4A4) {
			snprintf(name, sizeof(name), "%s.samples", g->name);
			ts = fx_st_find(calib, name);
			if (ts && ts->ndim == 2 && ts->shape[1] == k) {
				ms = ts->shape[0];
				if ((ret = bufs_fit(b, n, k, n > blk * nthr ? n : blk * nthr, ms, err)) < 0)
					return ret;
				fx_to_f32(b->x, ts->data, ts->dtype, (size_t)ms * k);
				xs = b->x;
			}
		}
		if ((ret = gptq_group(m, g, calib, brp, fp4, o, b, xs, xs ? ms : 0, err)) < 0)
			return ret;
	}
	if (g->kind == FX_GROUP_ADALN) {
		snprintf(name, sizeof(name), "%s.zeros", g->name);
		if ((ret = fx_stage_write(s, name, b->zeros, (size_t)n * (k / 64) * 2, err)) < 0)
			return ret;
		snprintf(name, sizeof(name), "%s.scales", g->name);
		if ((ret = fx_stage_write(s, name, b->scales16, (size_t)n * (k / 64) * 2, err)) < 0)
			return ret;
	} else if (fp4) {
		snprintf(name, sizeof(name), "%s.scales", g->name);
		if ((ret = fx_stage_write(s, name, b->scales8, (size_t)n * (k / 16), err)) < 0)
			return ret;
		snprintf(name, sizeof(name), "%s.tscale", g->name);
		if ((ret = fx_stage_write(s, name, b->tscale, (size_t)g->nmembers * 4, err)) < 0)
			return ret;
	} else {
		snprintf(name, sizeof(name), "%s.scales", g->name);
		if ((ret = fx_stage_write(s, name, b->scales16, (size_t)n * (k / 64) * 2, err)) < 0)
			return ret;
	}
	snprintf(name, sizeof(name), "%s.codes", g->name);
	return fx_stage_write(s, name, b->codes, (size_t)n * k / 2, err);
}

static int copy_group(struct fx_stage *s, const struct fx_group *g, bool fp4, struct fx_err *err)
{
	static const char *const w4a4_int4[] = { "codes", "scales", NULL };
	static const char *const w4a4_fp4[] = { "codes", "scales", "tscale", NULL };
	static const char *const adaln[] = { "codes", "scales", "zeros", NULL };
	const char *const *roles = g->kind == FX_GROUP_ADALN ? adaln : fp4 ? w4a4_fp4 : w4a4_int4;
	char name[160];
	int ret;

	for (; *roles; roles++) {
		snprintf(name, sizeof(name), "%s.%s", g->name, *roles);
		if ((ret = fx_stage_copy(s, name, err)) < 0)
			return ret;
	}
	return 0;
}

/* Shape rules of the packed format, checked before any work. */
static int check_shapes(const struct fx_group *g, struct fx_err *err)
{
	if (g->kind == FX_GROUP_W4A4 && (g->n % 128 || g->k % 128))
		return fx_error(err, FX_E_FORMAT,
				"layer '%s' is %lldx%lld; the Nunchaku W4A4 format needs N and K multiples of 128",
				g->name, (long long)g->n, (long long)g->k);
	if (g->kind == FX_GROUP_ADALN && (g->n % 4 || g->k % 64))
		return fx_error(err, FX_E_FORMAT,
				"layer '%s' is %lldx%lld; W4A16 needs N a multiple of 4 and K of 64",
				g->name, (long long)g->n, (long long)g->k);
	return 0;
}

static int check_model_of(const struct fx_st *st, const char *model_id, const char *what,
			  struct fx_err *err)
{
	const char *inputs = fx_st_meta(st, "fx.inputs");

	if (fx_file_input_is(st, "model", model_id) != 1)
		return fx_error(err, FX_E_HASH, "'%s': this %s was made from another model "
				"(fx.inputs %s); rerun the stage that wrote it",
				fx_st_path(st), what, inputs ? inputs : "missing");
	return 0;
}

int fx_quantize_run(const struct fx_quantize_opts *o, bool *up_to_date,
		    struct fx_stage **stage_out, struct fx_err *err)
{
	struct fx_model *m = NULL;
	struct fx_st *branch = NULL, *calib = NULL;
	struct fx_stage *s = NULL;
	const struct fx_model_config *c;
	struct bufs b = {0};
	struct thin_rows thin = {0};
	struct fx_progress prog;
	char model_id[65], blocks[32], lparams[160], lthin[160], *modeljs = NULL;
	bool fp4 = !strcmp(o->precision, "fp4");
	int first, last, ret;
	size_t i, ngroups = 0;

	*up_to_date = false;
	if (stage_out)
		*stage_out = NULL;
	/* biases, norms and unquantized tensors: NaN/Inf named here, not by a
	 * later stage (the weights are checked as they are widened) */
	if ((ret = fx_model_open_loras(&m, o->model, o->loras, err)) < 0 ||
	    (ret = fx_model_scan_values(m, false, NULL, NULL, err)) < 0)
		goto out;
	c = fx_model_config(m);
	if ((ret = fx_blocks_resolve(c, o->first_block, o->last_block, &first, &last, blocks,
				     sizeof(blocks), err)) < 0)
		goto out;
	if ((ret = fx_stage_new(&s, "fx-quant", FX_FMT_QUANT, o->output, err)) < 0)
		goto out;
	if ((ret = fx_lora_stage_model(s, o->model, o->loras, model_id, err)) < 0)
		goto out;
	if (o->branch) {
		if ((ret = fx_st_open(&branch, o->branch, err)) < 0 ||
		    (ret = fx_file_expect(branch, FX_FMT_BRANCH, "fx-quant", err)) < 0 ||
		    (ret = check_model_of(branch, model_id, "branch file", err)) < 0 ||
		    (ret = fx_audit_input(branch, FX_FMT_BRANCH, o->model, "fx-quant", err)) < 0 ||
		    (ret = check_branch_params(branch, o->precision, o->gptq, err)) < 0 ||
		    (ret = fx_stage_input(s, "branch", o->branch, err)) < 0)
			goto out;
	}
	if ((o->search || o->gptq) && o->calib) {
		if ((ret = fx_st_open(&calib, o->calib, err)) < 0 ||
		    (ret = fx_file_expect(calib, FX_FMT_CALIB, "fx-quant", err)) < 0 ||
		    (ret = check_model_of(calib, model_id, "calib file", err)) < 0 ||
		    (ret = fx_audit_input(calib, FX_FMT_CALIB, o->model, "fx-quant", err)) < 0 ||
		    (ret = fx_stage_input(s, "calib", o->calib, err)) < 0)
			goto out;
	}
	fx_stage_param_str(s, "precision", o->precision);
	fx_stage_param_int(s, "search", o->search && calib);
	fx_stage_param_str(s, "blocks", blocks);
	fx_stage_param_int(s, "group", fp4 ? FX_QUANT_FP4_GROUP : FX_QUANT_INT4_GROUP);
	if (o->gptq && !calib) {
		ret = fx_error(err, FX_E_ARG, "--gptq needs --calib (a calib file made with fx-calib --hessian)");
		goto out;
	}
	/* a layer's recipe leaves out --blocks, so shards and whole runs agree;
	 * GPTQ's parameters only when it is on (older recipes stay valid) */
	snprintf(lparams, sizeof(lparams), "{\"group\":%d,\"precision\":\"%s\",\"search\":%d}",
		 fp4 ? FX_QUANT_FP4_GROUP : FX_QUANT_INT4_GROUP, o->precision, o->search && calib);
	if (o->gptq) {
		double damp = layer_damp(o, false), thin = layer_damp(o, true);
		int blk = o->gptq_block > 0 ? o->gptq_block : FX_GPTQ_BLOCK;

		fx_stage_param_int(s, "gptq", 1);
		fx_stage_param_real(s, "gptq_damp", damp);
		fx_stage_param_real(s, "gptq_thin_damp", thin);
		fx_stage_param_int(s, "gptq_block", blk);
		snprintf(lparams, sizeof(lparams), "{\"gptq\":[%.17g,%d],\"group\":%d,\"precision\":\"%s\",\"search\":%d}",
			 damp, blk, fp4 ? FX_QUANT_FP4_GROUP : FX_QUANT_INT4_GROUP, o->precision,
			 o->search && calib);
		/* a thin layer's recipe names the damping it gets */
		snprintf(lthin, sizeof(lthin), "{\"gptq\":[%.17g,%d],\"group\":%d,\"precision\":\"%s\",\"search\":%d}",
			 thin, blk, fp4 ? FX_QUANT_FP4_GROUP : FX_QUANT_INT4_GROUP, o->precision,
			 o->search && calib);
	} else {
		memcpy(lthin, lparams, sizeof(lthin));
	}
	ret = fx_stage_check(s, o->force, err);
	if (ret < 0)
		goto out;
	if (ret == 1) {
		*up_to_date = true;
		ret = 0;
		goto out;
	}
	for (i = 0; i < fx_model_ngroups(m); i++) {
		const struct fx_group *g = fx_model_group(m, i);

		if (!fx_group_in_range(c, g, first, last))
			continue;
		if ((ret = check_shapes(g, err)) < 0 || (ret = declare(s, g, fp4, err)) < 0)
			goto out;
		if (o->gptq)
			note_rows(&thin, g, calib);
		ngroups++;
	}
	if (thin.count)
		fx_log_warn("%d layer%s' XᵀX come%s from fewer rows than inputs (fewest: %s, %lld rows "
			    "for %lld inputs): GPTQ fits those rows rather than the model, so they get "
			    "damping %g; calibrate with more rows (fx-calib --prompts, --steps, --res)",
			    thin.count, thin.count > 1 ? "s" : "", thin.count > 1 ? "" : "s",
			    thin.worst->name, (long long)thin.rows, (long long)thin.worst->k,
			    layer_damp(o, true));
	if (!(modeljs = fx_model_brief_json(c))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	fx_stage_meta(s, "fx.model", modeljs);
	if ((ret = fx_stage_begin(s, err)) < 0)
		goto out;
	fx_progress_start(&prog, "fx-quant", ngroups, 0);
	for (i = 0; i < fx_model_ngroups(m); i++) {
		const struct fx_group *g = fx_model_group(m, i);
		char lr[65];
		bool reuse;

		if (!fx_group_in_range(c, g, first, last))
			continue;
		layer_recipe(lr, g, branch, calib,
			     o->gptq && thin_layer(g, calib) ? lthin : lparams);
		reuse = fx_stage_reusable(s, g->name, lr);
		ret = reuse ? copy_group(s, g, fp4, err)
			    : quantize_group(s, m, g, branch, calib, fp4, o, &b, err);
		if (ret < 0)
			goto out;
		fx_model_group_release(m, g);
		fx_stage_layer(s, g->name, lr, reuse);
		fx_progress_step(&prog, 1, 0);
	}
	fx_progress_end(&prog);
	ret = fx_stage_commit(s, err);
out:
	bufs_free(&b);
	free(modeljs);
	fx_st_close(branch);
	fx_st_close(calib);
	fx_model_close(m);
	if (stage_out && ret >= 0)
		*stage_out = s;
	else
		fx_stage_free(s);
	return ret;
}
