#include "fx-packfile.h"

#include "fx-family.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <errno.h>
#include <unistd.h>

#include "fx-io.h"
#include "fx-log.h"
#include "fx-tensor.h"
#include "fx-quant.h"
#include "fx-audit.h"
#include "fx-blocks.h"
#include "fx-file.h"
#include "fx-meta.h"
#include "fx-lora.h"
#include "fx-model.h"
#include "fx-pack.h"
#include "fx-stage.h"
#include "fx-st.h"

/* INT4 *_fc2 inputs arrive shifted by this constant (spec §2.3.3). */
#define FX_INT4_SHIFT 0.171875f

static const char *const norm_double[][2] = {
	{ "norm_q.weight", "attn.norm_q.weight" },
	{ "norm_k.weight", "attn.norm_k.weight" },
	{ "norm_added_q.weight", "attn.norm_added_q.weight" },
	{ "norm_added_k.weight", "attn.norm_added_k.weight" },
};

int fx_pack_norm_names(bool single, int i, const char **nsuf, const char **ssuf)
{
	if (i < 0 || i >= (single ? 2 : 4))
		return 0;
	*nsuf = norm_double[i][0];
	*ssuf = norm_double[i][1];
	return 1;
}

/* Shard set: each group must be in exactly one file. */
struct shards {
	struct fx_st *st[FX_PACK_MAX_SHARDS];
	int n;
};

static void shards_close(struct shards *s)
{
	int i;

	for (i = 0; i < s->n; i++)
		fx_st_close(s->st[i]);
	s->n = 0;
}

static const struct fx_st *shard_of(const struct shards *s, const char *group, const char *role,
				    const char *what, struct fx_err *err, int *ret)
{
	char name[160];
	const struct fx_st *hit = NULL;
	int i;

	snprintf(name, sizeof(name), "%s.%s", group, role);
	for (i = 0; i < s->n; i++) {
		if (!fx_st_find(s->st[i], name))
			continue;
		if (hit) {
			*ret = fx_error(err, FX_E_FORMAT, "layer '%s' is in two %s files ('%s' and '%s')",
					group, what, fx_st_path(hit), fx_st_path(s->st[i]));
			return NULL;
		}
		hit = s->st[i];
	}
	if (!hit)
		*ret = fx_error(err, FX_E_FORMAT, "layer '%s' is missing from the %s file%s (tensor '%s')",
				group, what, s->n > 1 ? "s" : "", name);
	return hit;
}

static const struct fx_tensor *need(const struct fx_st *st, const char *group, const char *role,
				    enum fx_dtype dt, int ndim, int64_t d0, int64_t d1,
				    struct fx_err *err, int *ret)
{
	char name[160], a[64], b[64];
	const struct fx_tensor *t;
	int64_t shp[2] = { d0, d1 };

	snprintf(name, sizeof(name), "%s.%s", group, role);
	t = fx_st_find(st, name);
	if (!t) {
		*ret = fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' missing", fx_st_path(st), name);
		return NULL;
	}
	if (t->dtype != dt || t->ndim != ndim || (d0 >= 0 && t->shape[0] != d0) ||
	    (ndim > 1 && d1 >= 0 && t->shape[1] != d1)) {
		*ret = fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' is %s %s, expected %s %s",
				fx_st_path(st), name, fx_dtype_name(t->dtype),
				fx_shape_str(a, sizeof(a), t->ndim, t->shape), fx_dtype_name(dt),
				fx_shape_str(b, sizeof(b), ndim, shp));
		return NULL;
	}
	return t;
}

struct ctx {
	const struct fx_packfile_opts *o;
	struct fx_model *m;
	const struct fx_model_config *c;
	struct shards q, br;
	bool fp4;
	int rank;            /* -1 until known */
	struct fx_stage *s;
	/* scratch */
	float *w, *bias, *tmpf;
	uint16_t *h16a, *h16b;
	uint8_t *u8a;
	size_t cap;
};

/* The runtime's tensor names of the model's family. */
#define PN(x) ((x)->c->family->packed)

static int scratch(struct ctx *x, size_t nk, int64_t n, struct fx_err *err)
{
	size_t need_ = nk > (size_t)n ? nk : (size_t)n;

	if (need_ <= x->cap)
		return 0;
	free(x->w); free(x->bias); free(x->tmpf); free(x->h16a); free(x->h16b); free(x->u8a);
	x->w = malloc(need_ * sizeof(float));
	x->bias = malloc(need_ * sizeof(float));
	x->tmpf = malloc(need_ * sizeof(float));
	x->h16a = malloc(need_ * 2);
	x->h16b = malloc(need_ * 2);
	x->u8a = malloc(need_);
	x->cap = need_;
	if (!x->w || !x->bias || !x->tmpf || !x->h16a || !x->h16b || !x->u8a) {
		x->cap = 0;
		return fx_error(err, FX_E_NOMEM, "out of memory");
	}
	return 0;
}

static int add(struct ctx *x, const char *p, const char *suffix, enum fx_dtype dt, int ndim,
	       int64_t d0, int64_t d1, struct fx_err *err)
{
	char name[200];
	int64_t shp[2] = { d0, d1 };

	snprintf(name, sizeof(name), "%s.%s", p, suffix);
	return fx_stage_add(x->s, name, dt, ndim, shp, err);
}

static int put(struct ctx *x, const char *p, const char *suffix, const void *data, size_t n,
	       struct fx_err *err)
{
	char name[200];

	snprintf(name, sizeof(name), "%s.%s", p, suffix);
	return fx_stage_write(x->s, name, data, n, err);
}

static int group_rank(struct ctx *x, const struct fx_group *g, struct fx_err *err)
{
	const struct fx_st *b;
	const struct fx_tensor *t;
	int ret = 0;

	if (!x->br.n)
		return 0;
	if (!(b = shard_of(&x->br, g->name, "down", "branch", err, &ret)))
		return ret;
	if (!(t = need(b, g->name, "down", FX_F32, 2, -1, g->k, err, &ret)))
		return ret;
	return (int)t->shape[0];
}

static int declare_group(struct ctx *x, const struct fx_group *g, struct fx_err *err)
{
	int64_t n = g->n, k = g->k;
	const char *p = g->name;
	int ret, r;

	if (g->kind == FX_GROUP_ADALN) {
		if ((ret = add(x, p, "qweight", FX_I32, 2, n / 4, k / 2, err)) < 0 ||
		    (ret = add(x, p, "wscales", FX_BF16, 2, k / 64, n, err)) < 0 ||
		    (ret = add(x, p, "wzeros", FX_BF16, 2, k / 64, n, err)) < 0 ||
		    (ret = add(x, p, "bias", FX_BF16, 1, n, 0, err)) < 0)
			return ret;
		return 0;
	}
	if (n % 128 || k % 128)
		return fx_error(err, FX_E_FORMAT,
				"layer '%s' is %lldx%lld; the Nunchaku W4A4 format needs N and K multiples of 128",
				p, (long long)n, (long long)k);
	if ((r = group_rank(x, g, err)) < 0)
		return r;
	if (x->rank < 0)
		x->rank = r;
	if (r != x->rank)
		return fx_error(err, FX_E_FORMAT, "layer '%s' has rank %d, other layers %d: one rank per checkpoint",
				p, r, x->rank);
	if (r % 16)
		return fx_error(err, FX_E_FORMAT, "layer '%s' has rank %d; the runtime needs a multiple of 16", p, r);
	if ((ret = add(x, p, "qweight", FX_I8, 2, n, k / 2, err)) < 0 ||
	    (ret = add(x, p, "wscales", x->fp4 ? FX_F8_E4M3 : FX_BF16, 2, k / (x->fp4 ? 16 : 64), n, err)) < 0 ||
	    (ret = add(x, p, "bias", FX_BF16, 1, n, 0, err)) < 0 ||
	    (ret = add(x, p, PN(x)->smooth, FX_BF16, 1, k, 0, err)) < 0 ||
	    (ret = add(x, p, PN(x)->smooth_orig, FX_BF16, 1, k, 0, err)) < 0 ||
	    (ret = add(x, p, PN(x)->down, FX_BF16, 2, k, r, err)) < 0 ||
	    (ret = add(x, p, PN(x)->up, FX_BF16, 2, n, r, err)) < 0)
		return ret;
	if (x->fp4) {
		if (g->nmembers > 1)
			return add(x, p, "wcscales", FX_BF16, 1, n, 0, err);
		return add(x, p, "wtscale", FX_BF16, 1, 1, 0, err);
	}
	return 0;
}

static void to_bf16(uint16_t *dst, const float *src, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		dst[i] = fx_f32_to_bf16(src[i]);
}

static int pack_adaln(struct ctx *x, const struct fx_group *g, struct fx_err *err)
{
	const struct fx_st *q;
	const struct fx_tensor *tc, *ts, *tz;
	int64_t n = g->n, k = g->k;
	int ret = 0;

	if (!(q = shard_of(&x->q, g->name, "codes", "quant", err, &ret)) ||
	    !(tc = need(q, g->name, "codes", FX_U8, 2, n, k / 2, err, &ret)) ||
	    !(ts = need(q, g->name, "scales", FX_BF16, 2, n, k / 64, err, &ret)) ||
	    !(tz = need(q, g->name, "zeros", FX_BF16, 2, n, k / 64, err, &ret)))
		return ret;
	if ((ret = scratch(x, (size_t)n * k, n, err)) < 0 ||
	    (ret = fx_model_group_f32(x->m, g, NULL, x->bias, err)) < 0)
		return ret;
	if ((ret = fx_pack_w4a16_weight(x->u8a, tc->data, n, k, err)) < 0 ||
	    (ret = put(x, g->name, "qweight", x->u8a, (size_t)n * k / 2, err)) < 0 ||
	    (ret = fx_pack_w4a16_scales(x->h16a, ts->data, n, k, err)) < 0 ||
	    (ret = put(x, g->name, "wscales", x->h16a, (size_t)n * (k / 64) * 2, err)) < 0 ||
	    (ret = fx_pack_w4a16_scales(x->h16a, tz->data, n, k, err)) < 0 ||
	    (ret = put(x, g->name, "wzeros", x->h16a, (size_t)n * (k / 64) * 2, err)) < 0 ||
	    (ret = fx_quant_adaln_bias(x->h16a, x->bias, n, g->adaln_chunks, err)) < 0 ||
	    (ret = put(x, g->name, "bias", x->h16a, (size_t)n * 2, err)) < 0)
		return fx_error_prefix(err, "layer '%s'", g->name);
	fx_tensor_release(tc);
	fx_tensor_release(ts);
	fx_tensor_release(tz);
	return 0;
}

static int pack_w4a4(struct ctx *x, const struct fx_group *g, struct fx_err *err)
{
	const struct fx_st *q, *b = NULL;
	const struct fx_tensor *tc, *ts, *tt = NULL, *tsm = NULL, *td = NULL, *tu = NULL;
	int64_t n = g->n, k = g->k, r = x->rank < 0 ? 0 : x->rank, i;
	const float *smooth = NULL;
	int ret = 0;

	if (!(q = shard_of(&x->q, g->name, "codes", "quant", err, &ret)) ||
	    !(tc = need(q, g->name, "codes", FX_U8, 2, n, k / 2, err, &ret)))
		return ret;
	if (x->fp4) {
		if (!(ts = need(q, g->name, "scales", FX_F8_E4M3, 2, n, k / 16, err, &ret)) ||
		    !(tt = need(q, g->name, "tscale", FX_F32, 1, g->nmembers, 0, err, &ret)))
			return ret;
	} else if (!(ts = need(q, g->name, "scales", FX_BF16, 2, n, k / 64, err, &ret))) {
		return ret;
	}
	if (x->br.n) {
		if (!(b = shard_of(&x->br, g->name, "smooth", "branch", err, &ret)) ||
		    !(tsm = need(b, g->name, "smooth", FX_F32, 1, k, 0, err, &ret)) ||
		    !(td = need(b, g->name, "down", FX_F32, 2, r, k, err, &ret)) ||
		    !(tu = need(b, g->name, "up", FX_F32, 2, n, r, err, &ret)))
			return ret;
		smooth = tsm->data;
		for (i = 0; i < k; i++)
			if (!(smooth[i] > 0) || !isfinite(smooth[i]))
				return fx_error(err, FX_E_VALUE, "'%s': tensor '%s.smooth' has %g at %lld (must be > 0)",
						fx_st_path(b), g->name, smooth[i], (long long)i);
	}
	/* the weight itself is only needed for the INT4 shift correction */
	if ((ret = scratch(x, (size_t)n * (k > r ? k : r), n, err)) < 0 ||
	    (ret = fx_model_group_f32(x->m, g, !x->fp4 && g->gelu_input ? x->w : NULL, x->bias, err)) < 0)
		return ret;

	/* codes and scales: permutations of the fx.quant forms */
	if ((ret = fx_pack_w4a4_weight(x->u8a, tc->data, n, k, err)) < 0 ||
	    (ret = put(x, g->name, "qweight", x->u8a, (size_t)n * k / 2, err)) < 0)
		return ret;
	if (x->fp4) {
		const float *tsc = tt->data;

		if ((ret = fx_pack_fp4_wscales(x->u8a, ts->data, n, k, err)) < 0 ||
		    (ret = put(x, g->name, "wscales", x->u8a, (size_t)n * (k / 16), err)) < 0)
			return ret;
		if (g->nmembers > 1) {
			int mi;

			for (mi = 0; mi < g->nmembers; mi++)
				for (i = 0; i < g->members[mi].nrows; i++)
					x->h16b[g->members[mi].out_row0 + i] = fx_f32_to_bf16(tsc[mi]);
			if ((ret = fx_pack_vector(x->h16a, x->h16b, n, err)) < 0 ||
			    (ret = put(x, g->name, "wcscales", x->h16a, (size_t)n * 2, err)) < 0)
				return ret;
		} else {
			uint16_t t16 = fx_f32_to_bf16(tsc[0]);

			if ((ret = put(x, g->name, "wtscale", &t16, 2, err)) < 0)
				return ret;
		}
	} else if ((ret = fx_pack_int4_wscales(x->h16a, ts->data, n, k, err)) < 0 ||
		   (ret = put(x, g->name, "wscales", x->h16a, (size_t)n * (k / 64) * 2, err)) < 0) {
		return ret;
	}

	/* bias, with the INT4 shift correction b − c·Σ_k R[n][k]/s[k], R = W·diag(s) − up·down */
	if (!x->fp4 && g->gelu_input) {
		/* Σ_k R[n][k]/s[k] = Σ_k W[n][k] − Σ_j up[n][j]·(Σ_k down[j][k]/s[k]) */
		double *dsum = calloc((size_t)(r ? r : 1), sizeof(double));

		if (!dsum)
			return fx_error(err, FX_E_NOMEM, "out of memory");
		for (int64_t j = 0; j < r; j++) {
			const float *d = (const float *)td->data + j * k;

			for (i = 0; i < k; i++)
				dsum[j] += (double)d[i] / smooth[i];
		}
#pragma omp parallel for
		for (int64_t row = 0; row < n; row++) {
			double acc = 0;

			for (int64_t c = 0; c < k; c++)
				acc += x->w[row * k + c];
			for (int64_t j = 0; j < r; j++)
				acc -= (double)((const float *)tu->data)[row * r + j] * dsum[j];
			x->bias[row] = (float)((double)x->bias[row] - FX_INT4_SHIFT * acc);
		}
		free(dsum);
	}
	to_bf16(x->h16b, x->bias, n);
	if ((ret = fx_pack_vector(x->h16a, x->h16b, n, err)) < 0 ||
	    (ret = put(x, g->name, "bias", x->h16a, (size_t)n * 2, err)) < 0)
		return ret;

	/* smooth and smooth_orig: never folded, so both are s */
	for (i = 0; i < k; i++)
		x->h16b[i] = smooth ? fx_f32_to_bf16(smooth[i]) : fx_f32_to_bf16(1.0f);
	if ((ret = fx_pack_vector(x->h16a, x->h16b, k, err)) < 0 ||
	    (ret = put(x, g->name, PN(x)->smooth, x->h16a, (size_t)k * 2, err)) < 0 ||
	    (ret = put(x, g->name, PN(x)->smooth_orig, x->h16a, (size_t)k * 2, err)) < 0)
		return ret;

	/* low-rank branch: lora_down = down/s (K, r), lora_up = up (N, r) */
	if (r > 0) {
		if ((ret = fx_lora_down_bf16(x->h16b, td->data, smooth, k, r, err)) < 0 ||
		    (ret = fx_pack_lora_down(x->h16a, x->h16b, k, r, err)) < 0 ||
		    (ret = put(x, g->name, PN(x)->down, x->h16a, (size_t)k * r * 2, err)) < 0)
			return ret;
		to_bf16(x->h16b, tu->data, (size_t)n * r);
		if ((ret = fx_pack_lora_up(x->h16a, x->h16b, n, r, err)) < 0 ||
		    (ret = put(x, g->name, PN(x)->up, x->h16a, (size_t)n * r * 2, err)) < 0)
			return ret;
	} else if ((ret = put(x, g->name, PN(x)->down, NULL, 0, err)) < 0 ||
		   (ret = put(x, g->name, PN(x)->up, NULL, 0, err)) < 0) {
		return ret;
	}
	fx_tensor_release(tc);
	fx_tensor_release(ts);
	return 0;
}

/* A packed layer is made from its quant and branch layers: their recipes. */
static void layer_entry(struct fx_layer_hash *h, const struct shards *sh, const char *layer)
{
	int i;

	for (i = 0; i < sh->n; i++) {
		json_t *m = json_loads(fx_st_meta(sh->st[i], "fx.layers"), 0, NULL);
		const char *v = json_string_value(json_object_get(m, layer));

		if (v)
			fx_layer_hash_str(h, v);
		json_decref(m);
	}
}

static void layer_recipe(char out[65], const struct ctx *x, const struct fx_group *g)
{
	struct fx_layer_hash *h = fx_layer_hash_new();

	fx_layer_hash_str(h, g->name);
	fx_layer_hash_str(h, x->fp4 ? "fp4" : "int4");
	layer_entry(h, &x->q, g->name);
	layer_entry(h, &x->br, g->name);
	fx_layer_hash_final(h, out);
}

static int open_shards(struct shards *s, const char *const *paths, int n, const char *fmt,
		       const char *model_path, const char *model_id, struct fx_stage *stage,
		       const char *role, struct fx_err *err)
{
	char id[65];
	int i, ret;

	for (i = 0; i < n; i++) {
		if ((ret = fx_st_open(&s->st[s->n], paths[i], err)) < 0)
			return ret;
		s->n++;
		if ((ret = fx_file_expect(s->st[i], fmt, "fx-pack", err)) < 0)
			return ret;
		if (fx_file_input_is(s->st[i], "model", model_id) != 1)
			return fx_error(err, FX_E_HASH, "'%s' was made from another model than '%s' "
					"(stale %s; rerun the stage that wrote it)",
					paths[i], model_path, fmt);
		/* header, checksums (dropping the pages they touch) and groups */
		if ((ret = fx_audit_input(s->st[i], fmt, model_path, "fx-pack", err)) < 0)
			return ret;
	}
	/* one identity for the set, whatever the sharding */
	if (n > 0) {
		if ((ret = fx_shards_id(id, (const struct fx_st *const *)s->st, s->n, err)) < 0)
			return ret;
		fx_stage_input_id(stage, role, id);
	}
	return 0;
}

/* The quant files must have been made from exactly these branch files. */
static int check_quant_branch(struct ctx *x, struct fx_err *err)
{
	int i, j;

	for (i = 0; i < x->q.n; i++) {
		json_t *in = json_loads(fx_st_meta(x->q.st[i], "fx.inputs"), 0, NULL);
		const char *bid = json_string_value(json_object_get(in, "branch"));
		bool found = false;

		if (!bid && x->br.n) {
			json_decref(in);
			return fx_error(err, FX_E_HASH, "'%s' was quantized without a branch file, "
					"but --branch was given (rerun fx-quant with --branch)",
					fx_st_path(x->q.st[i]));
		}
		for (j = 0; bid && j < x->br.n; j++) {
			char id[65];

			if (fx_input_id(id, fx_st_path(x->br.st[j]), NULL) == 0 && !strcmp(id, bid))
				found = true;
		}
		if (bid && !found) {
			if (x->br.n == 1)
				fx_error(err, FX_E_HASH, "'%s' was quantized with another branch file than '%s' "
					 "(stale quant; rerun fx-quant)", fx_st_path(x->q.st[i]),
					 fx_st_path(x->br.st[0]));
			else if (x->br.n)
				fx_error(err, FX_E_HASH, "'%s' was quantized with another branch file than "
					 "the %d given ('%s', ...) (stale quant; rerun fx-quant)",
					 fx_st_path(x->q.st[i]), x->br.n, fx_st_path(x->br.st[0]));
			else
				fx_error(err, FX_E_HASH, "'%s' was quantized with a branch file, none given "
					 "(give --branch)", fx_st_path(x->q.st[i]));
			json_decref(in);
			return FX_E_HASH;
		}
		json_decref(in);
	}
	return 0;
}

static int pack_plain_renamed(struct ctx *x, bool declare, struct fx_err *err)
{
	size_t i;
	int ret;

	for (i = 0; i < fx_model_nplain(x->m); i++) {
		const char *name = fx_model_plain_name(x->m, i);
		const struct fx_tensor *t = fx_model_plain(x->m, name);
		uint64_t nel = fx_tensor_numel(t);
		char nn[200];
		const char *out = x->c->family->packed_plain_name(name, nn, sizeof(nn));

		if (declare) {
			if ((ret = fx_stage_add(x->s, out, FX_BF16, t->ndim, t->shape, err)) < 0)
				return ret;
			continue;
		}
		if ((ret = scratch(x, nel, 1, err)) < 0 ||
		    (ret = fx_model_plain_bf16(x->m, name, x->h16a, err)) < 0 ||
		    (ret = fx_stage_write(x->s, out, x->h16a, nel * 2, err)) < 0)
			return ret;
		fx_tensor_release(t);
	}
	return 0;
}

static bool is_block_tensor(const char *name)
{
	return !strncmp(name, "transformer_blocks.", 19) || !strncmp(name, "single_transformer_blocks.", 26);
}

/* Writes one part into a temporary file; *outp stays uncommitted. */
static int write_part(struct fx_out **outp, const char *path, const struct fx_st *st, bool blocks,
		      struct fx_err *err)
{
	struct fx_stw *w = NULL;
	struct fx_out *out = NULL;
	size_t i;
	int ret;

	if ((ret = fx_stw_new(&w, 0, err)) < 0)
		goto out;
	for (i = 0; i < fx_st_count(st); i++) {
		const struct fx_tensor *t = fx_st_at(st, i);

		if (is_block_tensor(t->name) == blocks &&
		    (ret = fx_stw_add(w, t->name, t->dtype, t->ndim, t->shape, err)) < 0)
			goto out;
	}
	if ((ret = fx_out_open(&out, path, true, err)) < 0 ||
	    (ret = fx_stw_begin(w, fx_out_fd(out), err)) < 0)
		goto out;
	for (i = 0; i < fx_st_count(st); i++) {
		const struct fx_tensor *t = fx_st_at(st, i);

		if (is_block_tensor(t->name) == blocks &&
		    (ret = fx_stw_write(w, t->name, t->data, t->nbytes, err)) < 0)
			goto out;
	}
	ret = fx_stw_finish(w, err);
out:
	fx_stw_free(w);   /* its writer thread first: it may still hold the fd */
	if (ret < 0)
		fx_out_abort(out);
	else
		*outp = out;
	return ret;
}

static int write_text(struct fx_out **outp, const char *path, const char *text, struct fx_err *err)
{
	struct fx_out *out = NULL;
	int ret;

	if ((ret = fx_out_open(&out, path, true, err)) < 0)
		return ret;
	if ((ret = fx_write_all(fx_out_fd(out), text, strlen(text), path, err)) < 0 ||
	    (ret = fx_write_all(fx_out_fd(out), "\n", 1, path, err)) < 0) {
		fx_out_abort(out);
		return ret;
	}
	*outp = out;
	return 0;
}

/* The legacy folder form (spec §1.1): transformer_blocks.safetensors,
 * unquantized_layers.safetensors (no metadata), config.json, comfy_config.json.
 * All four are written to temporary files first and renamed into place only
 * when every one is complete, so a failed or interrupted run leaves the
 * folder as it was, not a mix of new and old (or missing) files. */
static int write_legacy(const char *dir, const char *packed, struct fx_model *m, struct fx_err *err)
{
	static const char *const names[] = { "transformer_blocks.safetensors",
					     "unquantized_layers.safetensors", "config.json",
					     "comfy_config.json" };
	struct fx_st *st = NULL;
	struct fx_meta_opts mo = { .rank = -1 };
	struct fx_out *outs[4] = { 0 };
	char *vals[FX_META_COUNT] = {0}, path[4096];
	bool made;
	int ret, i;

	made = mkdir(dir, 0777) == 0;
	if (!made && errno != EEXIST)
		return fx_error(err, FX_E_IO, "cannot create '%s': %s", dir, strerror(errno));
	if ((ret = fx_st_open(&st, packed, err)) < 0)
		goto out;
	mo.config_json = fx_model_config_json(m);
	if ((ret = fx_meta_compute(st, &mo, vals, err)) < 0)
		goto out;
	for (i = 0; i < 4 && ret >= 0; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		ret = i < 2 ? write_part(&outs[i], path, st, i == 0, err)
			: write_text(&outs[i], path, vals[i == 2 ? FX_META_CONFIG : FX_META_COMFY], err);
	}
	if (ret < 0)
		goto out;
	/* sync all before the first rename: the renames follow each other closely */
	for (i = 0; i < 4; i++)
		if (fsync(fx_out_fd(outs[i])) != 0) {
			ret = fx_error(err, FX_E_IO, "fsync '%s': %s", fx_out_tmp_path(outs[i]),
				       strerror(errno));
			goto out;
		}
	for (i = 0; i < 4; i++) {
		struct fx_out *o = outs[i];

		outs[i] = NULL;
		if ((ret = fx_out_commit(o, err)) < 0)
			goto out;
	}
out:
	for (i = 0; i < 4; i++)
		fx_out_abort(outs[i]);
	if (ret < 0 && made)
		rmdir(dir);   /* only if still empty */
	for (i = 0; i < FX_META_COUNT; i++)
		free(vals[i]);
	fx_st_close(st);
	return ret;
}

int fx_packfile_run(const struct fx_packfile_opts *o, bool *up_to_date,
		    struct fx_stage **stage_out, struct fx_err *err)
{
	struct ctx x = { .o = o, .rank = -1 };
	char model_id[65], *modeljs = NULL;
	const char *prec = NULL;
	size_t i;
	int ret;

	*up_to_date = false;
	if (stage_out)
		*stage_out = NULL;
	if (o->nquant < 1) {
		ret = fx_error(err, FX_E_ARG, "no --quant file given");
		goto out;
	}
	if ((ret = fx_model_open_loras(&x.m, o->model, o->loras, err)) < 0)
		goto out;
	x.c = fx_model_config(x.m);
	if (o->legacy_dir && !x.c->family->two_file_form) {
		ret = fx_error(err, FX_E_ARG, "--legacy: the %s loaders read only the single-file form",
			       x.c->family->title);
		goto out;
	}
	if ((ret = fx_stage_new(&x.s, "fx-pack", FX_FMT_PACKED, o->output, err)) < 0 ||
	    (ret = fx_lora_stage_model(x.s, o->model, o->loras, model_id, err)) < 0)
		goto out;
	if ((ret = open_shards(&x.q, o->quant, o->nquant, FX_FMT_QUANT, o->model, model_id, x.s, "quant", err)) < 0 ||
	    (ret = open_shards(&x.br, o->branch, o->nbranch, FX_FMT_BRANCH, o->model, model_id, x.s,
				    "branch", err)) < 0)
		goto out;
	/* one precision across the quant shards */
	for (i = 0; i < (size_t)x.q.n; i++) {
		json_t *p = json_loads(fx_st_meta(x.q.st[i], "fx.params"), 0, NULL);
		const char *pi = json_string_value(json_object_get(p, "precision"));
		char pb[8];

		snprintf(pb, sizeof(pb), "%s", pi ? pi : "");
		json_decref(p);
		if (!pb[0] || (prec && strcmp(prec, pb))) {
			ret = fx_error(err, FX_E_FORMAT, "'%s': precision '%s' differs from the other quant files",
				       fx_st_path(x.q.st[i]), pb);
			goto out;
		}
		prec = !strcmp(pb, "fp4") ? "fp4" : "int4";
	}
	x.fp4 = !strcmp(prec, "fp4");
	if ((ret = check_quant_branch(&x, err)) < 0)
		goto out;
	fx_stage_param_str(x.s, "precision", prec);
	/* GPTQ codes change what fx-verify may expect of the weight error */
	for (int qi = 0; qi < x.q.n; qi++) {
		const char *qp = fx_st_meta(x.q.st[qi], "fx.params");

		if (qp && strstr(qp, "\"gptq\":1")) {
			fx_stage_param_int(x.s, "gptq", 1);
			break;
		}
	}
	ret = fx_stage_check(x.s, o->force, err);
	if (ret < 0)
		goto out;
	if (ret == 1 && !o->legacy_dir) {
		*up_to_date = true;
		ret = 0;
		goto out;
	}
	if (ret == 1) {
		*up_to_date = true;
		ret = write_legacy(o->legacy_dir, o->output, x.m, err);
		goto out;
	}
	for (i = 0; i < fx_model_ngroups(x.m); i++)
		if ((ret = declare_group(&x, fx_model_group(x.m, i), err)) < 0)
			goto out;
	if (x.rank < 0)
		x.rank = 0;
	if ((ret = pack_plain_renamed(&x, true, err)) < 0)
		goto out;
	if (!(modeljs = fx_model_brief_json(x.c))) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	fx_stage_meta(x.s, "fx.model", modeljs);
	fx_stage_reserve(x.s, 32768);   /* room for fx-meta to write in place */
	if ((ret = fx_stage_begin(x.s, err)) < 0)
		goto out;
	for (i = 0; i < fx_model_ngroups(x.m); i++) {
		const struct fx_group *g = fx_model_group(x.m, i);

		char lr[65];

		ret = g->kind == FX_GROUP_ADALN ? pack_adaln(&x, g, err) : pack_w4a4(&x, g, err);
		if (ret < 0)
			goto out;
		layer_recipe(lr, &x, g);
		fx_model_group_release(x.m, g);
		fx_stage_layer(x.s, g->name, lr, false);
	}
	if ((ret = pack_plain_renamed(&x, false, err)) < 0 || (ret = fx_stage_commit(x.s, err)) < 0)
		goto out;
	if (o->legacy_dir)
		ret = write_legacy(o->legacy_dir, o->output, x.m, err);
out:
	free(modeljs);
	free(x.w); free(x.bias); free(x.tmpf); free(x.h16a); free(x.h16b); free(x.u8a);
	shards_close(&x.q);
	shards_close(&x.br);
	fx_model_close(x.m);
	if (stage_out && ret >= 0)
		*stage_out = x.s;
	else
		fx_stage_free(x.s);
	return ret;
}
