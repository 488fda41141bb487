#include "fx-textenc.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-io.h"
#include "fx-log.h"
#include "fx-tensor.h"
#include "fx-ops.h"
#include "fx-textenc-cuda.h"
#include "fx-st.h"

/* Rows (tokens over all sequences of a chunk) per linear layer call. */
#define CHUNK_ROWS 2048

/* Threads: OpenBLAS runs single-threaded while the OpenMP threads split each
 * product (fx_ops_linear) and run the attention heads in parallel: its own
 * spinning workers took the cores from the OpenMP loops (T5 ran at half
 * speed on 2 cores). */

/* ---- shared helpers ----------------------------------------------------- */

static int load_config(json_t **out, const char *dir, struct fx_err *err)
{
	char *p = fx_path_join(dir, "config.json");
	json_error_t je;

	*out = NULL;
	if (!p)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	*out = json_load_file(p, 0, &je);
	if (!*out) {
		int ret = fx_error(err, je.line < 0 ? FX_E_IO : FX_E_FORMAT, "'%s': %s", p, je.text);

		free(p);
		return ret;
	}
	free(p);
	return 0;
}

static int cfg_int(json_t *c, const char *key, int def, int lo, int hi, int *v, const char *dir,
		   struct fx_err *err)
{
	json_t *j = json_object_get(c, key);

	if (!j) {
		if (def < lo)
			return fx_error(err, FX_E_FORMAT, "'%s/config.json': '%s' missing", dir, key);
		*v = def;
		return 0;
	}
	if (!json_is_integer(j) || json_integer_value(j) < lo || json_integer_value(j) > hi)
		return fx_error(err, FX_E_FORMAT, "'%s/config.json': '%s' must be an integer in [%d, %d]",
				dir, key, lo, hi);
	*v = (int)json_integer_value(j);
	return 0;
}

static float cfg_real(json_t *c, const char *key, float def)
{
	json_t *j = json_object_get(c, key);

	return json_is_number(j) ? (float)json_number_value(j) : def;
}

/* A weight tensor with the expected shape (d1 == 0 for 1-D). */
static int weight(const struct fx_stset *set, const char *name, int64_t d0, int64_t d1,
		  const struct fx_tensor **out, struct fx_err *err)
{
	const struct fx_tensor *t = fx_stset_find(set, name);
	int nd = d1 ? 2 : 1;

	*out = NULL;
	if (!t)
		return fx_error(err, FX_E_FORMAT, "tensor '%s' missing from the text encoder", name);
	if (t->dtype != FX_BF16 && t->dtype != FX_F16 && t->dtype != FX_F32)
		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' is %s, expected BF16, F16 or F32",
				fx_stset_path_of(set, name), name, fx_dtype_name(t->dtype));
	if (t->ndim != nd || t->shape[0] != d0 || (d1 && t->shape[1] != d1)) {
		char a[64];

		return fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has shape %s, expected [%lld%s%lld]",
				fx_stset_path_of(set, name), name, fx_shape_str(a, sizeof(a), t->ndim, t->shape),
				(long long)d0, d1 ? "," : "", d1 ? (long long)d1 : 0LL);
	}
	*out = t;
	return 0;
}

/* Widens a tensor (or its rows [r0, r0+nr)) to f32, in parallel. */
static void widen_rows(float *dst, const struct fx_tensor *t, int64_t r0, int64_t nr)
{
	int64_t cols = t->ndim > 1 ? t->shape[1] : 1;
	size_t esz = fx_dtype_size(t->dtype), total = (size_t)(nr * cols);
	const char *src = (const char *)t->data + (size_t)(r0 * cols) * esz;
	int64_t nb = (int64_t)((total + 65535) / 65536);

	#pragma omp parallel for schedule(static) if (nb > 1)
	for (int64_t b = 0; b < nb; b++) {
		size_t s = (size_t)b * 65536, e = s + 65536 < total ? s + 65536 : total;

		if (t->dtype == FX_BF16) {
			/* bf16 is the high half of an f32 (little-endian host) */
			const char *p = src + s * 2;
			uint32_t *d = (uint32_t *)(dst + s);

			#pragma omp simd
			for (size_t i = 0; i < e - s; i++) {
				uint16_t v;

				memcpy(&v, p + 2 * i, 2);
				d[i] = (uint32_t)v << 16;
			}
		} else {
			fx_to_f32(dst + s, src + s * esz, t->dtype, e - s);
		}
	}
}

static int load_w(float *dst, const struct fx_stset *set, const char *name, int64_t d0, int64_t d1,
		  struct fx_err *err)
{
	const struct fx_tensor *t;
	int ret = weight(set, name, d0, d1, &t, err);

	if (ret < 0)
		return ret;
	widen_rows(dst, t, 0, d0);
	return 0;
}

static int act_of(const char *s, enum fx_textenc_act *a)
{
	if (!strcmp(s, "relu"))
		*a = FX_ACT_RELU;
	else if (!strcmp(s, "gelu_new") || !strcmp(s, "gelu_pytorch_tanh") || !strcmp(s, "gelu_fast"))
		*a = FX_ACT_GELU_TANH;
	else if (!strcmp(s, "gelu"))
		*a = FX_ACT_GELU;
	else if (!strcmp(s, "quick_gelu"))
		*a = FX_ACT_QUICK_GELU;
	else
		return -1;
	return 0;
}

static void activate(float *x, size_t n, enum fx_textenc_act a)
{
	switch (a) {
	case FX_ACT_GELU_TANH:
		fx_ops_gelu_tanh(x, n);
		break;
	case FX_ACT_RELU:
		#pragma omp parallel for schedule(static) if (n > 65536)
		for (size_t i = 0; i < n; i++)
			x[i] = x[i] > 0 ? x[i] : 0.0f;
		break;
	case FX_ACT_GELU:
		#pragma omp parallel for schedule(static) if (n > 65536)
		for (size_t i = 0; i < n; i++)
			x[i] = 0.5f * x[i] * (1.0f + erff(x[i] * 0.70710678118654752f));
		break;
	case FX_ACT_QUICK_GELU:
		#pragma omp parallel for schedule(static) if (n > 65536)
		for (size_t i = 0; i < n; i++)
			x[i] = x[i] / (1.0f + expf(-1.702f * x[i]));
		break;
	case FX_ACT_COUNT:
		break;
	}
}

/* One sequence's multi-head attention: qkv (L, 3·inner) -> o (L, inner).
 * scores = q kᵀ · scale (+ bias(bucket(i, j), h)) (causal: j <= i),
 * softmax, · v. Heads in parallel, each with single-threaded strided
 * products straight on qkv and o, and its own (L, L) score buffer. */
struct attn_ws {
	float *buf;
	size_t per;
	int nthreads;
};

static int attn_ws_init(struct attn_ws *ws, int64_t L)
{
	ws->nthreads = omp_get_max_threads();
	ws->per = (size_t)(L * L);
	ws->buf = malloc(ws->per * (size_t)ws->nthreads * sizeof(float));
	return ws->buf ? 0 : FX_E_NOMEM;
}

static void attn_ws_release(struct attn_ws *ws)
{
	free(ws->buf);
}

static void attention(float *o, const float *qkv, int64_t L, int heads, int dk, float scale,
		      const uint8_t *bucket, const float *bias, bool causal, struct attn_ws *ws)
{
	const int64_t inner = (int64_t)heads * dk, ld = 3 * inner;

	#pragma omp parallel for schedule(dynamic) num_threads(ws->nthreads)
	for (int h = 0; h < heads; h++) {
		float *sc = ws->buf + ws->per * (size_t)omp_get_thread_num();
		const float *q = qkv + (int64_t)h * dk, *k = q + inner, *v = q + 2 * inner;

		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (blasint)L, (blasint)L, (blasint)dk,
			    scale, q, (blasint)ld, k, (blasint)ld, 0.0f, sc, (blasint)L);
		for (int64_t i = 0; i < L; i++) {
			float *row = sc + i * L, mx = -INFINITY, inv;
			int64_t n = causal ? i + 1 : L;
			double sum = 0;

			if (bias)
				for (int64_t j = 0; j < n; j++)
					row[j] += bias[(int)bucket[i * L + j] * heads + h];
			for (int64_t j = 0; j < n; j++)
				mx = row[j] > mx ? row[j] : mx;
			for (int64_t j = 0; j < n; j++) {
				row[j] = expf(row[j] - mx);
				sum += row[j];
			}
			inv = (float)(1.0 / sum);
			for (int64_t j = 0; j < n; j++)
				row[j] *= inv;
			for (int64_t j = n; j < L; j++)
				row[j] = 0.0f;
		}
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (blasint)L, (blasint)dk, (blasint)L,
			    1.0f, sc, (blasint)L, v, (blasint)ld, 0.0f, o + (int64_t)h * dk, (blasint)inner);
	}
}

/* T5 RMSNorm: y = x / sqrt(mean(x²) + eps) · w (variance in f32 as
 * transformers, accumulated in double here). */
static void rmsnorm(float *y, const float *x, const float *w, int64_t m, int64_t d, float eps)
{
	#pragma omp parallel for schedule(static) if (m * d > 65536)
	for (int64_t r = 0; r < m; r++) {
		const float *xr = x + r * d;
		float *yr = y + r * d;
		double ss = 0;
		float inv;

		for (int64_t j = 0; j < d; j++)
			ss += (double)xr[j] * xr[j];
		inv = (float)(1.0 / sqrt(ss / (double)d + eps));
		for (int64_t j = 0; j < d; j++)
			yr[j] = xr[j] * inv * w[j];
	}
}

/* LayerNorm with affine weight and bias. */
static void layernorm(float *y, const float *x, const float *w, const float *b, int64_t m, int64_t d,
		      float eps)
{
	fx_ops_layernorm(y, x, m, d, eps);
	#pragma omp parallel for schedule(static) if (m * d > 65536)
	for (int64_t r = 0; r < m; r++)
		for (int64_t j = 0; j < d; j++)
			y[r * d + j] = y[r * d + j] * w[j] + b[j];
}

static bool ids_ok(const int32_t *ids, size_t n, int vocab, size_t *bad)
{
	for (size_t i = 0; i < n; i++)
		if (ids[i] < 0 || ids[i] >= vocab) {
			*bad = i;
			return false;
		}
	return true;
}

static int pick_device(int *cuda, const struct fx_device *dev, const char *what, struct fx_err *err)
{
	if (!dev || dev->kind == FX_DEV_CPU) {
		*cuda = -1;
		return 0;
	}
	if (dev->kind != FX_DEV_CUDA)
		return fx_error(err, FX_E_ARG, "unknown device kind %d", (int)dev->kind);
#if defined(FX_CUDA) && FX_CUDA
	(void)what;
	*cuda = dev->index;
	return 0;
#else
	return fx_error(err, FX_E_UNSUPPORTED, "%s on cuda:%d: this build has no CUDA (make CUDA=1)", what,
			dev->index);
#endif
}

/* ---- T5 ------------------------------------------------------------------ */

struct fx_t5 {
	char *dir;
	struct fx_stset *set;
	struct fx_t5_config c;
	const char *embed;        /* name of the embedding tensor */
	int cuda;                 /* CUDA device, or -1: the CPU */
};

int fx_t5_bucket(int i, int j, int buckets, int max_distance)
{
	int rel = j - i, nb = buckets / 2, b = 0, max_exact, r;

	if (rel > 0)
		b += nb;
	r = rel < 0 ? -rel : rel;
	max_exact = nb / 2;
	if (r < max_exact)
		return b + r;
	/* f32 arithmetic in transformers' order: the bucket boundaries (r = 16,
	 * 32, 64 with the defaults) depend on it */
	{
		float v = logf((float)r / (float)max_exact);

		v = v / (float)log((double)max_distance / max_exact);
		v = v * (float)(nb - max_exact);
		r = max_exact + (int)v;
	}
	return b + (r < nb - 1 ? r : nb - 1);
}

int fx_t5_open(struct fx_t5 **out, const char *dir, struct fx_err *err)
{
	struct fx_t5 *m = calloc(1, sizeof(*m));
	struct fx_t5_config *c;
	json_t *cfg = NULL;
	const char *ff;
	int ret;

	*out = NULL;
	if (!m || !(m->dir = strdup(dir))) {
		free(m);
		return fx_error(err, FX_E_NOMEM, "out of memory");
	}
	c = &m->c;
	m->cuda = -1;
	if ((ret = load_config(&cfg, dir, err)) < 0)
		goto out;
	if ((ret = cfg_int(cfg, "d_model", -1, 1, 1 << 16, &c->d_model, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "d_kv", -1, 1, 1 << 12, &c->d_kv, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "num_heads", -1, 1, 1 << 10, &c->heads, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "d_ff", -1, 1, 1 << 18, &c->d_ff, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "num_layers", -1, 1, 1024, &c->layers, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "vocab_size", -1, 1, 1 << 24, &c->vocab, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "relative_attention_num_buckets", 32, 2, 256, &c->buckets, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "relative_attention_max_distance", 128, 1, 1 << 20, &c->max_distance, dir,
			   err)) < 0)
		goto out;
	c->eps = cfg_real(cfg, "layer_norm_epsilon", 1e-6f);
	ff = json_string_value(json_object_get(cfg, "feed_forward_proj"));
	if (!ff)
		ff = "relu";
	c->gated = !strncmp(ff, "gated-", 6);
	if (c->gated && !strcmp(ff + 6, "gelu"))
		c->act = FX_ACT_GELU_TANH;   /* transformers maps gated-gelu to gelu_new */
	else if (act_of(c->gated ? ff + 6 : ff, &c->act) < 0) {
		ret = fx_error(err, FX_E_UNSUPPORTED, "'%s/config.json': feed_forward_proj '%s' is not supported",
			       dir, ff);
		goto out;
	}
	if ((ret = fx_stset_open(&m->set, dir, err)) < 0)
		goto out;
	if (fx_stset_find(m->set, "encoder.embed_tokens.weight"))
		m->embed = "encoder.embed_tokens.weight";
	else if (fx_stset_find(m->set, "shared.weight"))
		m->embed = "shared.weight";
	else {
		ret = fx_error(err, FX_E_FORMAT, "'%s': no token embedding (shared.weight or "
			       "encoder.embed_tokens.weight): not a T5 encoder", dir);
		goto out;
	}
	{
		const struct fx_tensor *t = fx_stset_find(m->set, m->embed);

		if (t->ndim != 2 || t->shape[1] != c->d_model || t->shape[0] < 1) {
			char a[64];

			ret = fx_error(err, FX_E_FORMAT, "'%s': tensor '%s' has shape %s, expected [vocab,%d]",
				       fx_stset_path_of(m->set, m->embed), m->embed,
				       fx_shape_str(a, sizeof(a), t->ndim, t->shape), c->d_model);
			goto out;
		}
		/* the config's vocab_size may exceed the rows (T5: 32128 padded) */
		if (t->shape[0] < c->vocab)
			c->vocab = (int)t->shape[0];
	}
	*out = m;
	m = NULL;
out:
	json_decref(cfg);
	fx_t5_close(m);
	return ret;
}

void fx_t5_close(struct fx_t5 *m)
{
	if (!m)
		return;
	fx_stset_close(m->set);
	free(m->dir);
	free(m);
}

const struct fx_t5_config *fx_t5_config(const struct fx_t5 *m)
{
	return &m->c;
}

int fx_t5_set_device(struct fx_t5 *m, const struct fx_device *dev, struct fx_err *err)
{
	return pick_device(&m->cuda, dev, "T5 encoder", err);
}

struct t5_layer {
	float *qkv, *o, *ln0, *ln1, *wi, *wo;
};

static int t5_load_layer(struct fx_t5 *m, int l, struct t5_layer *w, struct fx_err *err)
{
	const struct fx_t5_config *c = &m->c;
	int64_t inner = (int64_t)c->heads * c->d_kv, D = c->d_model, F = c->d_ff;
	static const char *const qkv[] = { "q", "k", "v" };
	char name[160];
	int ret, i;

	for (i = 0; i < 3; i++) {
		snprintf(name, sizeof(name), "encoder.block.%d.layer.0.SelfAttention.%s.weight", l, qkv[i]);
		if ((ret = load_w(w->qkv + i * inner * D, m->set, name, inner, D, err)) < 0)
			return ret;
	}
	snprintf(name, sizeof(name), "encoder.block.%d.layer.0.SelfAttention.o.weight", l);
	if ((ret = load_w(w->o, m->set, name, D, inner, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "encoder.block.%d.layer.0.layer_norm.weight", l);
	if ((ret = load_w(w->ln0, m->set, name, D, 0, err)) < 0)
		return ret;
	snprintf(name, sizeof(name), "encoder.block.%d.layer.1.layer_norm.weight", l);
	if ((ret = load_w(w->ln1, m->set, name, D, 0, err)) < 0)
		return ret;
	if (c->gated) {
		snprintf(name, sizeof(name), "encoder.block.%d.layer.1.DenseReluDense.wi_0.weight", l);
		if ((ret = load_w(w->wi, m->set, name, F, D, err)) < 0)
			return ret;
		snprintf(name, sizeof(name), "encoder.block.%d.layer.1.DenseReluDense.wi_1.weight", l);
		if ((ret = load_w(w->wi + F * D, m->set, name, F, D, err)) < 0)
			return ret;
	} else {
		snprintf(name, sizeof(name), "encoder.block.%d.layer.1.DenseReluDense.wi.weight", l);
		if ((ret = load_w(w->wi, m->set, name, F, D, err)) < 0)
			return ret;
	}
	snprintf(name, sizeof(name), "encoder.block.%d.layer.1.DenseReluDense.wo.weight", l);
	return load_w(w->wo, m->set, name, D, F, err);
}

#if defined(FX_CUDA) && FX_CUDA
static enum fx_tenc_cuda_act cuda_act(enum fx_textenc_act a)
{
	switch (a) {
	case FX_ACT_RELU: return FX_TENC_RELU;
	case FX_ACT_GELU_TANH: return FX_TENC_GELU_TANH;
	case FX_ACT_GELU: return FX_TENC_GELU;
	case FX_ACT_QUICK_GELU: return FX_TENC_QUICK_GELU;
	case FX_ACT_COUNT: break;
	}
	return FX_TENC_ACT_COUNT;
}

/* The T5 layers on the GPU: embeddings and the (heads, L, L) position bias
 * on the host, then each layer widened here and run there. */
static int t5_encode_cuda(struct fx_t5 *m, const int32_t *ids, int n, int len, float *out,
			  const struct fx_tensor *emb, const struct fx_tensor *rb,
			  fx_textenc_progress_fn progress, void *ctx, struct fx_err *err)
{
	const struct fx_t5_config *c = &m->c;
	const int64_t D = c->d_model, F = c->d_ff, inner = (int64_t)c->heads * c->d_kv, L = len;
	const int64_t nf = c->gated ? 2 * F : F;
	struct fx_tenc_cuda_dims d = {
		.n = n, .L = L, .D = D, .heads = c->heads, .dk = c->d_kv, .F = F, .gated = c->gated,
		.causal = false, .rms = true, .act = cuda_act(c->act), .eps = c->eps, .scale = 1.0f,
	};
	struct fx_tenc_cuda *g = NULL;
	struct t5_layer w = {0};
	float *bias = NULL, *pb = NULL, *fin = NULL;
	int ret, l;

	w.qkv = fx_ops_alloc((size_t)(3 * inner * D) * sizeof(float));
	w.o = fx_ops_alloc((size_t)(D * inner) * sizeof(float));
	w.ln0 = malloc((size_t)D * sizeof(float));
	w.ln1 = malloc((size_t)D * sizeof(float));
	w.wi = fx_ops_alloc((size_t)(nf * D) * sizeof(float));
	w.wo = fx_ops_alloc((size_t)(D * F) * sizeof(float));
	bias = malloc((size_t)c->buckets * c->heads * sizeof(float));
	pb = fx_ops_alloc((size_t)(c->heads * L * L) * sizeof(float));
	fin = malloc((size_t)D * sizeof(float));
	if (!w.qkv || !w.o || !w.ln0 || !w.ln1 || !w.wi || !w.wo || !bias || !pb || !fin) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory for the T5 encoder (%d sequences of %d tokens)",
			       n, len);
		goto out;
	}
	widen_rows(bias, rb, 0, c->buckets);
	#pragma omp parallel for schedule(static) if (L * L > 65536)
	for (int64_t i = 0; i < L; i++)
		for (int64_t j = 0; j < L; j++) {
			int b = fx_t5_bucket((int)i, (int)j, c->buckets, c->max_distance);

			for (int h = 0; h < c->heads; h++)
				pb[((int64_t)h * L + i) * L + j] = bias[b * c->heads + h];
		}
	#pragma omp parallel for schedule(static) if ((int64_t)n * L > 64)
	for (int64_t r = 0; r < (int64_t)n * L; r++)
		widen_rows(out + r * D, emb, ids[r], 1);
	if ((ret = fx_tenc_cuda_new(&g, m->cuda, &d, out, pb, err)) < 0)
		goto out;
	for (l = 0; l < c->layers; l++) {
		struct fx_tenc_cuda_layer cw = {
			.qkv = w.qkv, .o = w.o, .ln1_w = w.ln0, .ln2_w = w.ln1, .fc1 = w.wi, .fc2 = w.wo,
		};

		/* widening overlaps the device's work on the previous layer */
		if ((ret = t5_load_layer(m, l, &w, err)) < 0 || (ret = fx_tenc_cuda_layer(g, &cw, err)) < 0)
			goto out;
		if (progress)
			progress(ctx, l + 1, c->layers);
	}
	if ((ret = load_w(fin, m->set, "encoder.final_layer_norm.weight", D, 0, err)) < 0)
		goto out;
	ret = fx_tenc_cuda_finish(g, fin, NULL, out, err);
out:
	fx_tenc_cuda_free(g);
	free(w.qkv);
	free(w.o);
	free(w.ln0);
	free(w.ln1);
	free(w.wi);
	free(w.wo);
	free(bias);
	free(pb);
	free(fin);
	return ret;
}
#endif

int fx_t5_encode(struct fx_t5 *m, const int32_t *ids, int n, int len, float *out,
		 fx_textenc_progress_fn progress, void *ctx, struct fx_err *err)
{
	const struct fx_t5_config *c = &m->c;
	const int64_t D = c->d_model, F = c->d_ff, inner = (int64_t)c->heads * c->d_kv, L = len;
	const int64_t nf = c->gated ? 2 * F : F;
	const int64_t seq_per_chunk = L >= CHUNK_ROWS ? 1 : CHUNK_ROWS / L;
	const int64_t R = seq_per_chunk * L;        /* rows per chunk */
	const struct fx_tensor *emb, *rb;
	struct t5_layer w = {0};
	struct attn_ws ws = {0};
	float *x = NULL, *big = NULL, *mid = NULL, *y = NULL, *bias = NULL, *fin = NULL;
	uint8_t *bucket = NULL;
	size_t bad;
	int ret, l, blas_prev;
	double t_widen = 0, t_start = fx_now();

	if (n <= 0 || len <= 0)
		return fx_error(err, FX_E_ARG, "T5: nothing to encode (%d sequences of %d)", n, len);
	if (!ids_ok(ids, (size_t)n * (size_t)len, c->vocab, &bad))
		return fx_error(err, FX_E_ARG, "T5: token id %d at sequence %zu position %zu is outside the "
				"vocabulary of %d", ids[bad], bad / (size_t)len, bad % (size_t)len, c->vocab);
	if ((ret = weight(m->set, m->embed, fx_stset_find(m->set, m->embed)->shape[0], D, &emb, err)) < 0 ||
	    (ret = weight(m->set, "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight",
			  c->buckets, c->heads, &rb, err)) < 0)
		return ret;
#if defined(FX_CUDA) && FX_CUDA
	if (m->cuda >= 0)
		return t5_encode_cuda(m, ids, n, len, out, emb, rb, progress, ctx, err);
#endif
	blas_prev = fx_ops_blas_single();
	w.qkv = fx_ops_alloc((size_t)(3 * inner * D) * sizeof(float));
	w.o = fx_ops_alloc((size_t)(D * inner) * sizeof(float));
	w.ln0 = malloc((size_t)D * sizeof(float));
	w.ln1 = malloc((size_t)D * sizeof(float));
	w.wi = fx_ops_alloc((size_t)(nf * D) * sizeof(float));
	w.wo = fx_ops_alloc((size_t)(D * F) * sizeof(float));
	x = fx_ops_alloc((size_t)(R * D) * sizeof(float));
	y = fx_ops_alloc((size_t)(R * D) * sizeof(float));
	big = fx_ops_alloc((size_t)(R * (3 * inner > nf ? 3 * inner : nf)) * sizeof(float));
	mid = fx_ops_alloc((size_t)(R * (inner > F ? inner : F)) * sizeof(float));
	bias = malloc((size_t)c->buckets * c->heads * sizeof(float));
	fin = malloc((size_t)D * sizeof(float));
	bucket = malloc((size_t)(L * L));
	if (!w.qkv || !w.o || !w.ln0 || !w.ln1 || !w.wi || !w.wo || !x || !y || !big || !mid || !bias ||
	    !fin || !bucket || attn_ws_init(&ws, L) < 0) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory for the T5 encoder (%d sequences of %d tokens)",
			       n, len);
		goto out;
	}
	widen_rows(bias, rb, 0, c->buckets);
	#pragma omp parallel for schedule(static) if (L * L > 65536)
	for (int64_t i = 0; i < L; i++)
		for (int64_t j = 0; j < L; j++)
			bucket[i * L + j] = (uint8_t)fx_t5_bucket((int)i, (int)j, c->buckets, c->max_distance);
	/* embeddings into the residual stream (out) */
	#pragma omp parallel for schedule(static) if ((int64_t)n * L > 64)
	for (int64_t r = 0; r < (int64_t)n * L; r++)
		widen_rows(out + r * D, emb, ids[r], 1);
	for (l = 0; l < c->layers; l++) {
		double t0 = fx_now();

		if ((ret = t5_load_layer(m, l, &w, err)) < 0)
			goto out;
		t_widen += fx_now() - t0;
		for (int64_t s0 = 0; s0 < n; s0 += seq_per_chunk) {
			int64_t ns = n - s0 < seq_per_chunk ? n - s0 : seq_per_chunk, rows = ns * L;
			float *h = out + s0 * L * D;

			/* self-attention */
			rmsnorm(x, h, w.ln0, rows, D, c->eps);
			fx_ops_linear(big, x, w.qkv, NULL, rows, 3 * inner, D);
			for (int64_t s = 0; s < ns; s++)
				attention(mid + s * L * inner, big + s * L * 3 * inner, L, c->heads, c->d_kv, 1.0f,
					  bucket, bias, false, &ws);
			fx_ops_linear(y, mid, w.o, NULL, rows, D, inner);
			fx_ops_add(h, y, (size_t)(rows * D));
			/* feed-forward */
			rmsnorm(x, h, w.ln1, rows, D, c->eps);
			fx_ops_linear(big, x, w.wi, NULL, rows, nf, D);
			if (c->gated) {
				#pragma omp parallel for schedule(static)
				for (int64_t r = 0; r < rows; r++) {
					float *g = big + r * nf;

					activate(g, (size_t)F, c->act);
					for (int64_t j = 0; j < F; j++)
						mid[r * F + j] = g[j] * g[F + j];
				}
			} else {
				activate(big, (size_t)(rows * F), c->act);
				memcpy(mid, big, (size_t)(rows * F) * sizeof(float));
			}
			fx_ops_linear(y, mid, w.wo, NULL, rows, D, F);
			fx_ops_add(h, y, (size_t)(rows * D));
		}
		if (progress)
			progress(ctx, l + 1, c->layers);
	}
	if ((ret = load_w(fin, m->set, "encoder.final_layer_norm.weight", D, 0, err)) < 0)
		goto out;
	rmsnorm(out, out, fin, (int64_t)n * L, D, c->eps);
	fx_log_debug("T5: %d sequences x %d tokens: weights widened in %.2f s, %d layers in %.2f s", n, len,
		     t_widen, c->layers, fx_now() - t_start - t_widen);
	ret = 0;
out:
	free(w.qkv);
	free(w.o);
	free(w.ln0);
	free(w.ln1);
	free(w.wi);
	free(w.wo);
	free(x);
	free(y);
	free(big);
	free(mid);
	free(bias);
	free(fin);
	free(bucket);
	attn_ws_release(&ws);
	fx_ops_blas_restore(blas_prev);
	return ret;
}

/* ---- CLIP ---------------------------------------------------------------- */

struct fx_clip {
	char *dir;
	struct fx_stset *set;
	struct fx_clip_config c;
	const char *prefix;       /* "text_model." (transformers' files) or "" */
	int cuda;                 /* CUDA device, or -1: the CPU */
};

/* "<prefix>rest" into buf. */
static const char *clip_name(const struct fx_clip *m, char *buf, size_t cap, const char *rest)
{
	snprintf(buf, cap, "%s%s", m->prefix, rest);
	return buf;
}

int fx_clip_open(struct fx_clip **out, const char *dir, struct fx_err *err)
{
	struct fx_clip *m = calloc(1, sizeof(*m));
	struct fx_clip_config *c;
	json_t *root = NULL, *cfg;
	const char *act;
	int ret;

	*out = NULL;
	if (!m || !(m->dir = strdup(dir))) {
		free(m);
		return fx_error(err, FX_E_NOMEM, "out of memory");
	}
	c = &m->c;
	m->cuda = -1;
	if ((ret = load_config(&root, dir, err)) < 0)
		goto out;
	cfg = json_object_get(root, "text_config");
	if (!json_is_object(cfg))
		cfg = root;
	if ((ret = cfg_int(cfg, "hidden_size", 512, 1, 1 << 16, &c->hidden, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "intermediate_size", 2048, 1, 1 << 18, &c->ff, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "num_attention_heads", 8, 1, 1 << 10, &c->heads, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "num_hidden_layers", 12, 1, 1024, &c->layers, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "max_position_embeddings", 77, 1, 1 << 16, &c->max_pos, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "vocab_size", 49408, 1, 1 << 24, &c->vocab, dir, err)) < 0 ||
	    (ret = cfg_int(cfg, "eos_token_id", 2, 0, 1 << 24, &c->eos_token_id, dir, err)) < 0)
		goto out;
	if (c->hidden % c->heads) {
		ret = fx_error(err, FX_E_FORMAT, "'%s/config.json': hidden_size %d is not a multiple of "
			       "num_attention_heads %d", dir, c->hidden, c->heads);
		goto out;
	}
	c->eps = cfg_real(cfg, "layer_norm_eps", 1e-5f);
	act = json_string_value(json_object_get(cfg, "hidden_act"));
	if (act_of(act ? act : "quick_gelu", &c->act) < 0) {
		ret = fx_error(err, FX_E_UNSUPPORTED, "'%s/config.json': hidden_act '%s' is not supported",
			       dir, act);
		goto out;
	}
	if ((ret = fx_stset_open(&m->set, dir, err)) < 0)
		goto out;
	{
		const struct fx_tensor *t = fx_stset_find(m->set, "text_model.embeddings.token_embedding.weight");

		m->prefix = "text_model.";
		if (!t && (t = fx_stset_find(m->set, "embeddings.token_embedding.weight")))
			m->prefix = "";
		if (!t) {
			ret = fx_error(err, FX_E_FORMAT, "'%s': no text_model.embeddings.token_embedding.weight: "
				       "not a CLIP text model", dir);
			goto out;
		}
		if (t->ndim == 2 && t->shape[0] < c->vocab)
			c->vocab = (int)t->shape[0];
	}
	*out = m;
	m = NULL;
out:
	json_decref(root);
	fx_clip_close(m);
	return ret;
}

void fx_clip_close(struct fx_clip *m)
{
	if (!m)
		return;
	fx_stset_close(m->set);
	free(m->dir);
	free(m);
}

const struct fx_clip_config *fx_clip_config(const struct fx_clip *m)
{
	return &m->c;
}

int fx_clip_set_device(struct fx_clip *m, const struct fx_device *dev, struct fx_err *err)
{
	return pick_device(&m->cuda, dev, "CLIP text model", err);
}

struct clip_layer {
	float *qkv, *qkv_b, *o, *o_b, *ln1_w, *ln1_b, *ln2_w, *ln2_b, *fc1, *fc1_b, *fc2, *fc2_b;
};

static int clip_load_layer(struct fx_clip *m, int l, struct clip_layer *w, struct fx_err *err)
{
	const struct fx_clip_config *c = &m->c;
	const int64_t D = c->hidden, F = c->ff;
	static const char *const qkv[] = { "q_proj", "k_proj", "v_proj" };
	char name[160];
	int ret, i;

#define P "%sencoder.layers.%d."
	for (i = 0; i < 3; i++) {
		snprintf(name, sizeof(name), P "self_attn.%s.weight", m->prefix, l, qkv[i]);
		if ((ret = load_w(w->qkv + i * D * D, m->set, name, D, D, err)) < 0)
			return ret;
		snprintf(name, sizeof(name), P "self_attn.%s.bias", m->prefix, l, qkv[i]);
		if ((ret = load_w(w->qkv_b + i * D, m->set, name, D, 0, err)) < 0)
			return ret;
	}
	struct { float *dst; const char *n; int64_t d0, d1; } t[] = {
		{ w->o, "self_attn.out_proj.weight", D, D }, { w->o_b, "self_attn.out_proj.bias", D, 0 },
		{ w->ln1_w, "layer_norm1.weight", D, 0 }, { w->ln1_b, "layer_norm1.bias", D, 0 },
		{ w->ln2_w, "layer_norm2.weight", D, 0 }, { w->ln2_b, "layer_norm2.bias", D, 0 },
		{ w->fc1, "mlp.fc1.weight", F, D }, { w->fc1_b, "mlp.fc1.bias", F, 0 },
		{ w->fc2, "mlp.fc2.weight", D, F }, { w->fc2_b, "mlp.fc2.bias", D, 0 },
	};
	for (i = 0; i < (int)FX_ARRAY_SIZE(t); i++) {
		snprintf(name, sizeof(name), P "%s", m->prefix, l, t[i].n);
		if ((ret = load_w(t[i].dst, m->set, name, t[i].d0, t[i].d1, err)) < 0)
			return ret;
	}
#undef P
	return 0;
}

#if defined(FX_CUDA) && FX_CUDA
/* The CLIP layers on the GPU, on the embedded sequences h (n L, D), which
 * come back with the layers' output; w: host buffers for one layer. */
static int clip_layers_cuda(struct fx_clip *m, float *h, int n, int len, struct clip_layer *w,
			    fx_textenc_progress_fn progress, void *ctx, struct fx_err *err)
{
	const struct fx_clip_config *c = &m->c;
	const int64_t dk = c->hidden / c->heads;
	struct fx_tenc_cuda_dims d = {
		.n = n, .L = len, .D = c->hidden, .heads = c->heads, .dk = dk, .F = c->ff, .gated = false,
		.causal = true, .rms = false, .act = cuda_act(c->act), .eps = c->eps,
		.scale = 1.0f / sqrtf((float)dk),
	};
	struct fx_tenc_cuda_layer cw = {
		.qkv = w->qkv, .qkv_b = w->qkv_b, .o = w->o, .o_b = w->o_b, .ln1_w = w->ln1_w,
		.ln1_b = w->ln1_b, .ln2_w = w->ln2_w, .ln2_b = w->ln2_b, .fc1 = w->fc1, .fc1_b = w->fc1_b,
		.fc2 = w->fc2, .fc2_b = w->fc2_b,
	};
	struct fx_tenc_cuda *g = NULL;
	int ret;

	if ((ret = fx_tenc_cuda_new(&g, m->cuda, &d, h, NULL, err)) < 0)
		goto out;
	for (int l = 0; l < c->layers; l++) {
		if ((ret = clip_load_layer(m, l, w, err)) < 0 || (ret = fx_tenc_cuda_layer(g, &cw, err)) < 0)
			goto out;
		if (progress)
			progress(ctx, l + 1, c->layers);
	}
	ret = fx_tenc_cuda_finish(g, NULL, NULL, h, err);
out:
	fx_tenc_cuda_free(g);
	return ret;
}
#endif

int fx_clip_encode(struct fx_clip *m, const int32_t *ids, int n, int len, float *pooled,
		   float *hidden_out, fx_textenc_progress_fn progress, void *ctx, struct fx_err *err)
{
	const struct fx_clip_config *c = &m->c;
	const int64_t D = c->hidden, F = c->ff, L = len, dk = D / c->heads;
	const struct fx_tensor *tok, *pos;
	char tn[160], pn[160], fwn[160], fbn[160];
	struct clip_layer w = {0};
	struct attn_ws ws = {0};
	float *h = NULL, *x = NULL, *big = NULL, *att = NULL, *y = NULL, *fw = NULL, *fb = NULL;
	size_t bad;
	int ret, l, blas_prev;

	if (n <= 0 || len <= 0 || len > c->max_pos)
		return fx_error(err, FX_E_ARG, "CLIP: %d sequences of %d tokens (at most %d)", n, len, c->max_pos);
	if (!ids_ok(ids, (size_t)n * (size_t)len, c->vocab, &bad))
		return fx_error(err, FX_E_ARG, "CLIP: token id %d at sequence %zu position %zu is outside the "
				"vocabulary of %d", ids[bad], bad / (size_t)len, bad % (size_t)len, c->vocab);
	clip_name(m, tn, sizeof(tn), "embeddings.token_embedding.weight");
	clip_name(m, pn, sizeof(pn), "embeddings.position_embedding.weight");
	clip_name(m, fwn, sizeof(fwn), "final_layer_norm.weight");
	clip_name(m, fbn, sizeof(fbn), "final_layer_norm.bias");
	if ((ret = weight(m->set, tn, fx_stset_find(m->set, tn)->shape[0], D, &tok, err)) < 0 ||
	    (ret = weight(m->set, pn, c->max_pos, D, &pos, err)) < 0)
		return ret;
	blas_prev = fx_ops_blas_single();
	w.qkv = fx_ops_alloc((size_t)(3 * D * D) * sizeof(float));
	w.qkv_b = malloc((size_t)(3 * D) * sizeof(float));
	w.o = fx_ops_alloc((size_t)(D * D) * sizeof(float));
	w.fc1 = fx_ops_alloc((size_t)(F * D) * sizeof(float));
	w.fc2 = fx_ops_alloc((size_t)(D * F) * sizeof(float));
	w.fc1_b = malloc((size_t)F * sizeof(float));
	w.o_b = malloc((size_t)D * sizeof(float));
	w.ln1_w = malloc((size_t)D * sizeof(float));
	w.ln1_b = malloc((size_t)D * sizeof(float));
	w.ln2_w = malloc((size_t)D * sizeof(float));
	w.ln2_b = malloc((size_t)D * sizeof(float));
	w.fc2_b = malloc((size_t)D * sizeof(float));
	h = malloc((size_t)((int64_t)n * L * D) * sizeof(float));
	x = malloc((size_t)(L * D) * sizeof(float));
	y = malloc((size_t)(L * D) * sizeof(float));
	att = malloc((size_t)(L * D) * sizeof(float));
	big = malloc((size_t)(L * (3 * D > F ? 3 * D : F)) * sizeof(float));
	fw = malloc((size_t)D * sizeof(float));
	fb = malloc((size_t)D * sizeof(float));
	if (!w.qkv || !w.qkv_b || !w.o || !w.fc1 || !w.fc2 || !w.fc1_b || !w.o_b || !w.ln1_w || !w.ln1_b ||
	    !w.ln2_w || !w.ln2_b || !w.fc2_b || !h || !x || !y || !att || !big || !fw || !fb ||
	    attn_ws_init(&ws, L) < 0) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory for the CLIP text model");
		goto out;
	}
	/* token + position embeddings */
	for (int64_t s = 0; s < n; s++)
		for (int64_t i = 0; i < L; i++) {
			float *r = h + (s * L + i) * D;

			widen_rows(r, tok, ids[s * L + i], 1);
			widen_rows(y, pos, i, 1);
			fx_ops_add(r, y, (size_t)D);
		}
#if defined(FX_CUDA) && FX_CUDA
	if (m->cuda >= 0 && (ret = clip_layers_cuda(m, h, n, len, &w, progress, ctx, err)) < 0)
		goto out;
#endif
	for (l = 0; l < c->layers && m->cuda < 0; l++) {
		if ((ret = clip_load_layer(m, l, &w, err)) < 0)
			goto out;
		for (int64_t s = 0; s < n; s++) {
			float *hs = h + s * L * D;

			layernorm(x, hs, w.ln1_w, w.ln1_b, L, D, c->eps);
			fx_ops_linear(big, x, w.qkv, w.qkv_b, L, 3 * D, D);
			attention(att, big, L, c->heads, (int)dk, 1.0f / sqrtf((float)dk), NULL, NULL, true, &ws);
			fx_ops_linear(y, att, w.o, w.o_b, L, D, D);
			fx_ops_add(hs, y, (size_t)(L * D));
			layernorm(x, hs, w.ln2_w, w.ln2_b, L, D, c->eps);
			fx_ops_linear(big, x, w.fc1, w.fc1_b, L, F, D);
			activate(big, (size_t)(L * F), c->act);
			fx_ops_linear(y, big, w.fc2, w.fc2_b, L, D, F);
			fx_ops_add(hs, y, (size_t)(L * D));
		}
		if (progress)
			progress(ctx, l + 1, c->layers);
	}
	if ((ret = load_w(fw, m->set, fwn, D, 0, err)) < 0 || (ret = load_w(fb, m->set, fbn, D, 0, err)) < 0)
		goto out;
	for (int64_t s = 0; s < n; s++) {
		const int32_t *si = ids + s * L;
		int64_t e = 0;

		if (c->eos_token_id == 2) {
			for (int64_t i = 1; i < L; i++)
				if (si[i] > si[e])
					e = i;
		} else {
			for (int64_t i = 0; i < L; i++)
				if (si[i] == c->eos_token_id) {
					e = i;
					break;
				}
		}
		layernorm(pooled + s * D, h + (s * L + e) * D, fw, fb, 1, D, c->eps);
	}
	if (hidden_out)
		layernorm(hidden_out, h, fw, fb, (int64_t)n * L, D, c->eps);
	ret = 0;
out:
	free(w.qkv);
	free(w.qkv_b);
	free(w.o);
	free(w.fc1);
	free(w.fc2);
	free(w.fc1_b);
	free(w.o_b);
	free(w.ln1_w);
	free(w.ln1_b);
	free(w.ln2_w);
	free(w.ln2_b);
	free(w.fc2_b);
	free(h);
	free(x);
	free(y);
	free(att);
	free(big);
	free(fw);
	free(fb);
	attn_ws_release(&ws);
	fx_ops_blas_restore(blas_prev);
	return ret;
}
