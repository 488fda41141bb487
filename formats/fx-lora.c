/* LoRA files in the namings people have, as products on the diffusers-named
 * linears of a FLUX transformer (fx-lora.h, fx(7) LORA). */
#include "fx-lora.h"

#include <errno.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-hash.h"
#include "fx-log.h"
#include "fx-file.h"
#include "fx-st.h"
#include "fx-stage.h"

/* ---- --lora FILE[:SCALE] ---------------------------------------------- */

int fx_loras_add(struct fx_loras *l, const char *arg, struct fx_err *err)
{
	const char *colon = strrchr(arg, ':');
	size_t plen = strlen(arg);
	double s = 1.0;

	if (l->n >= FX_LORA_MAX)
		return fx_error(err, FX_E_ARG, "too many --lora options (at most %d)", FX_LORA_MAX);
	if (colon && colon[1]) {
		char *end;
		double v;

		errno = 0;
		v = strtod(colon + 1, &end);
		if (*end == '\0' && errno == 0 && isfinite(v)) {
			s = v;
			plen = (size_t)(colon - arg);
		}
	}
	if (plen == 0)
		return fx_error(err, FX_E_ARG, "--lora wants FILE[:SCALE], not '%s'", arg);
	if (plen >= sizeof(l->v[0].path))
		return fx_error(err, FX_E_ARG, "--lora path is too long: '%s'", arg);
	memcpy(l->v[l->n].path, arg, plen);
	l->v[l->n].path[plen] = '\0';
	l->v[l->n].scale = s;
	l->n++;
	return 0;
}

/* Shortest decimal text that reads back as v ("0.8", not 0.80000000000000004). */
static void real_str(char *buf, size_t cap, double v)
{
	for (int p = 1; p <= 17; p++) {
		snprintf(buf, cap, "%.*g", p, v);
		if (strtod(buf, NULL) == v)
			return;
	}
}

/* ---- key naming -------------------------------------------------------- */

enum role { R_DOWN, R_UP, R_ALPHA, R_UPBIAS, R_COUNT };

static const struct {
	const char *suffix;
	enum role role;
} suffixes[] = {
	{ ".lora_A.weight", R_DOWN }, { ".lora_B.weight", R_UP }, { ".lora_B.bias", R_UPBIAS },
	{ ".lora_down.weight", R_DOWN }, { ".lora_up.weight", R_UP }, { ".alpha", R_ALPHA },
	{ ".down.weight", R_DOWN }, { ".up.weight", R_UP },   /* XLabs */
};

/* Leading parts that only say where the file came from: diffusers/PEFT,
 * ComfyUI, a whole-checkpoint prefix, a raw PEFT model. */
static const char *const prefixes[] = {
	"transformer.", "diffusion_model.", "model.diffusion_model.", "base_model.model.",
};

static const char *const te_prefixes[] = {
	"lora_te", "text_encoder.", "text_encoder_2.", "text_encoders.", "te.", "te1.", "te2.",
	"text_model.",
};

static bool starts(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

static bool ends(const char *s, const char *p)
{
	size_t a = strlen(s), b = strlen(p);

	return a >= b && strcmp(s + a - b, p) == 0;
}

/* kohya's underscored BFL names -> dotted ones: the parts after the block
 * number (double_blocks_N_..., single_blocks_N_...) and the top level. */
static const char *const kohya_double[][2] = {
	{ "img_attn_qkv", "img_attn.qkv" }, { "img_attn_proj", "img_attn.proj" },
	{ "img_mlp_0", "img_mlp.0" }, { "img_mlp_2", "img_mlp.2" }, { "img_mod_lin", "img_mod.lin" },
	{ "txt_attn_qkv", "txt_attn.qkv" }, { "txt_attn_proj", "txt_attn.proj" },
	{ "txt_mlp_0", "txt_mlp.0" }, { "txt_mlp_2", "txt_mlp.2" }, { "txt_mod_lin", "txt_mod.lin" },
};
static const char *const kohya_single[][2] = {
	{ "linear1", "linear1" }, { "linear2", "linear2" }, { "modulation_lin", "modulation.lin" },
};
static const char *const kohya_top[][2] = {
	{ "img_in", "img_in" }, { "txt_in", "txt_in" },
	{ "time_in_in_layer", "time_in.in_layer" }, { "time_in_out_layer", "time_in.out_layer" },
	{ "vector_in_in_layer", "vector_in.in_layer" }, { "vector_in_out_layer", "vector_in.out_layer" },
	{ "guidance_in_in_layer", "guidance_in.in_layer" },
	{ "guidance_in_out_layer", "guidance_in.out_layer" },
	{ "final_layer_linear", "final_layer.linear" },
	{ "final_layer_adaLN_modulation_1", "final_layer.adaLN_modulation.1" },
};

/* "double_blocks_3_img_attn_qkv" -> "double_blocks.3.img_attn.qkv"; false
 * when it names no FLUX layer. */
static bool kohya_to_bfl(const char *k, char *out, size_t cap)
{
	static const char *const kinds[] = { "double_blocks_", "single_blocks_" };
	size_t i, j;

	for (i = 0; i < 2; i++) {
		const char *p = k + strlen(kinds[i]);
		char *end;
		long b;

		if (!starts(k, kinds[i]) || *p < '0' || *p > '9')
			continue;
		b = strtol(p, &end, 10);
		if (*end != '_' || b < 0 || b > 100000)
			return false;
		for (j = 0; j < (i ? FX_ARRAY_SIZE(kohya_single) : FX_ARRAY_SIZE(kohya_double)); j++) {
			const char *const *e = i ? kohya_single[j] : kohya_double[j];

			if (!strcmp(end + 1, e[0])) {
				snprintf(out, cap, "%.*s.%ld.%s", (int)strlen(kinds[i]) - 1, kinds[i], b, e[1]);
				return true;
			}
		}
		return false;
	}
	for (j = 0; j < FX_ARRAY_SIZE(kohya_top); j++)
		if (!strcmp(k, kohya_top[j][0])) {
			snprintf(out, cap, "%s", kohya_top[j][1]);
			return true;
		}
	return false;
}

/* A BFL (or XLabs) layer as diffusers modules: parts in units of D
 * (hidden) or F (MLP width, coded as -1), in the fused tensor's row order. */
struct bfl_map {
	const char *bfl;
	const char *mod[4];
	int part[4];               /* rows: n·D, or -1 for F; 0 ends */
};

static const struct bfl_map double_map[] = {
	{ "img_attn.qkv", { "attn.to_q", "attn.to_k", "attn.to_v" }, { 1, 1, 1 } },
	{ "txt_attn.qkv", { "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj" }, { 1, 1, 1 } },
	{ "img_attn.proj", { "attn.to_out.0" }, { 1 } },
	{ "txt_attn.proj", { "attn.to_add_out" }, { 1 } },
	{ "img_mlp.0", { "ff.net.0.proj" }, { -1 } },
	{ "img_mlp.2", { "ff.net.2" }, { 1 } },
	{ "txt_mlp.0", { "ff_context.net.0.proj" }, { -1 } },
	{ "txt_mlp.2", { "ff_context.net.2" }, { 1 } },
	{ "img_mod.lin", { "norm1.linear" }, { 6 } },
	{ "txt_mod.lin", { "norm1_context.linear" }, { 6 } },
	/* XLabs: image stream 1, text stream 2 */
	{ "processor.qkv_lora1", { "attn.to_q", "attn.to_k", "attn.to_v" }, { 1, 1, 1 } },
	{ "processor.qkv_lora2", { "attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj" },
	  { 1, 1, 1 } },
	{ "processor.proj_lora1", { "attn.to_out.0" }, { 1 } },
	{ "processor.proj_lora2", { "attn.to_add_out" }, { 1 } },
};

static const struct bfl_map single_map[] = {
	{ "linear1", { "attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp" }, { 1, 1, 1, -1 } },
	{ "linear2", { "proj_out" }, { 1 } },
	{ "modulation.lin", { "norm.linear" }, { 3 } },
	{ "processor.qkv_lora", { "attn.to_q", "attn.to_k", "attn.to_v" }, { 1, 1, 1 } },
	{ "processor.proj_lora", { "proj_out" }, { 1 } },
};

/* Top-level layers; part 0: rows as the LoRA has them (the model checks). */
static const struct bfl_map top_map[] = {
	{ "img_in", { "x_embedder" }, { 1 } },
	{ "txt_in", { "context_embedder" }, { 1 } },
	{ "time_in.in_layer", { "time_text_embed.timestep_embedder.linear_1" }, { 1 } },
	{ "time_in.out_layer", { "time_text_embed.timestep_embedder.linear_2" }, { 1 } },
	{ "vector_in.in_layer", { "time_text_embed.text_embedder.linear_1" }, { 1 } },
	{ "vector_in.out_layer", { "time_text_embed.text_embedder.linear_2" }, { 1 } },
	{ "guidance_in.in_layer", { "time_text_embed.guidance_embedder.linear_1" }, { 1 } },
	{ "guidance_in.out_layer", { "time_text_embed.guidance_embedder.linear_2" }, { 1 } },
	{ "final_layer.linear", { "proj_out" }, { 0 } },
	/* [shift; scale] in BFL, [scale; shift] in diffusers: handled apart */
	{ "final_layer.adaLN_modulation.1", { "norm_out.linear" }, { 2 } },
};

static bool is_bfl_name(const char *n)
{
	size_t i;

	if (starts(n, "double_blocks.") || starts(n, "single_blocks."))
		return true;
	for (i = 0; i < FX_ARRAY_SIZE(top_map); i++)
		if (!strcmp(n, top_map[i].bfl))
			return true;
	return false;
}

/* ---- the file ---------------------------------------------------------- */

/* The tensors of one LoRA layer, gathered from its keys. */
struct base {
	char key[192];               /* the file's key less its role suffix */
	char name[160];              /* prefixes stripped; kohya turned dotted */
	const struct fx_tensor *t[R_COUNT];
};

struct fx_lora_file {
	struct fx_st *st;
	char *path;
	const char *kind;
	struct fx_lora_entry *e;
	size_t n, cap;
};

static void hash_tensor(struct fx_sha256 *h, const struct fx_tensor *t)
{
	char sh[64];

	if (!t) {
		fx_sha256_update(h, "-", 1);
		return;
	}
	fx_shape_str(sh, sizeof(sh), t->ndim, t->shape);
	fx_sha256_update(h, fx_dtype_name(t->dtype), strlen(fx_dtype_name(t->dtype)));
	fx_sha256_update(h, sh, strlen(sh));
	fx_content_digest(h, t->data, t->nbytes);
	fx_tensor_release(t);
}

static int add_entry(struct fx_lora_file *f, const struct base *b, const char *module, int64_t mrows,
		     int64_t mrow0, int64_t nrows, int64_t up_row0, double factor, struct fx_err *err)
{
	struct fx_lora_entry *e;
	struct fx_sha256 *h;
	char txt[512];

	if (f->n == f->cap) {
		size_t c = f->cap ? 2 * f->cap : 64;
		void *p = realloc(f->e, c * sizeof(*f->e));

		if (!p)
			return fx_error(err, FX_E_NOMEM, "out of memory");
		f->e = p;
		f->cap = c;
	}
	e = &f->e[f->n++];
	memset(e, 0, sizeof(*e));
	snprintf(e->module, sizeof(e->module), "%s", module);
	snprintf(e->key, sizeof(e->key), "%s", b->key);
	e->up = b->t[R_UP];
	e->down = b->t[R_DOWN];
	e->bias = b->t[R_UPBIAS];
	e->mrows = mrows;
	e->mrow0 = mrow0;
	e->nrows = nrows;
	e->up_row0 = up_row0;
	e->factor = factor;
	/* what a layer recipe needs of it: the bytes, where they go, the factor */
	h = fx_sha256_new();
	snprintf(txt, sizeof(txt), "%s|%s|%lld|%lld|%lld|%lld|%.17g|", e->key, e->module,
		 (long long)mrows, (long long)mrow0, (long long)nrows, (long long)up_row0, factor);
	fx_sha256_update(h, txt, strlen(txt));
	hash_tensor(h, e->up);
	hash_tensor(h, e->down);
	hash_tensor(h, e->bias);
	fx_sha256_final(h, e->digest);
	return 0;
}

static bool float_dtype(enum fx_dtype dt)
{
	return dt == FX_F32 || dt == FX_BF16 || dt == FX_F16 || dt == FX_F64 || dt == FX_F8_E4M3 ||
	       dt == FX_F8_E5M2;
}

/* Every value of t finite; else FX_E_VALUE naming the key and element. */
static int check_values(const struct fx_lora_file *f, const struct fx_tensor *t, struct fx_err *err)
{
	const size_t chunk = 1 << 16;
	uint64_t n = fx_tensor_numel(t), i, j;
	size_t es = fx_dtype_size(t->dtype);
	float *buf = malloc(chunk * sizeof(float));
	int ret = 0;

	if (!buf)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	for (i = 0; i < n && ret == 0; i += chunk) {
		size_t m = n - i < chunk ? (size_t)(n - i) : chunk;

		fx_to_f32(buf, (const char *)t->data + i * es, t->dtype, m);
		for (j = 0; j < m; j++) {
			uint64_t at = i + j;
			char where[64];

			if (isfinite(buf[j]))
				continue;
			if (t->ndim == 2)
				snprintf(where, sizeof(where), "[%llu,%llu]",
					 (unsigned long long)(at / (uint64_t)t->shape[1]),
					 (unsigned long long)(at % (uint64_t)t->shape[1]));
			else
				snprintf(where, sizeof(where), "[%llu]", (unsigned long long)at);
			ret = fx_error(err, FX_E_VALUE, "LoRA tensor '%s' has %s at %s (in '%s')", t->name,
				       isnan(buf[j]) ? "NaN" : buf[j] > 0 ? "Inf" : "-Inf", where, f->path);
			break;
		}
	}
	fx_tensor_release(t);
	free(buf);
	return ret;
}

/* The adapter config diffusers saves beside PEFT tensors
 * ("lora_adapter_metadata", keys with or without "transformer."): the
 * alpha of layers that have no .alpha tensor. */
struct adapter {
	bool have;
	double alpha;              /* lora_alpha */
	json_t *pattern;           /* alpha_pattern: layer name suffix -> alpha */
	bool rslora;               /* use_rslora: alpha / sqrt(rank) */
};

static json_t *adapter_key(json_t *o, const char *k)
{
	char pk[64];
	json_t *v;

	snprintf(pk, sizeof(pk), "transformer.%s", k);
	v = json_object_get(o, pk);
	return v ? v : json_object_get(o, k);
}

static int read_adapter(const struct fx_lora_file *f, struct adapter *ad, struct fx_err *err)
{
	const char *txt = fx_st_meta(f->st, "lora_adapter_metadata");
	json_t *o, *a, *p;
	int ret = 0;

	memset(ad, 0, sizeof(*ad));
	if (!txt)
		return 0;
	o = json_loads(txt, 0, NULL);
	a = adapter_key(o, "lora_alpha");
	p = adapter_key(o, "alpha_pattern");
	if (!json_is_object(o) || (a && !json_is_number(a)) || (p && !json_is_object(p) && !json_is_null(p))) {
		ret = fx_error(err, FX_E_FORMAT, "metadata 'lora_adapter_metadata' is not an adapter "
			       "config with a numeric lora_alpha (in '%s')", f->path);
		goto out;
	}
	if (a) {
		ad->have = true;
		ad->alpha = json_number_value(a);
	}
	if (json_is_object(p) && json_object_size(p))
		ad->pattern = json_incref(p);
	ad->rslora = json_is_true(adapter_key(o, "use_rslora"));
out:
	json_decref(o);
	return ret;
}

/* peft's reading of alpha_pattern: the first key that is the layer's name
 * or a dotted suffix of it (keys are taken literally, not as regexes). */
static bool pattern_alpha(const struct adapter *ad, const char *name, double *alpha)
{
	const char *k;
	json_t *v;

	json_object_foreach(ad->pattern, k, v) {
		size_t a = strlen(name), b = strlen(k);

		if (json_is_number(v) && a >= b && !strcmp(name + a - b, k) &&
		    (a == b || name[a - b - 1] == '.')) {
			*alpha = json_number_value(v);
			return true;
		}
	}
	return false;
}

/* Shapes and values of one layer; its rank and alpha. */
static int check_base(const struct fx_lora_file *f, const struct base *b, int64_t *rank,
		      double *alpha, struct fx_err *err)
{
	const struct fx_tensor *up = b->t[R_UP], *down = b->t[R_DOWN];
	char s1[64], s2[64];
	int i, ret;

	if (!up || !down)
		return fx_error(err, FX_E_FORMAT,
				"LoRA layer '%s' has no %s tensor (in '%s')", b->key,
				up ? "down (lora_A/lora_down)" : "up (lora_B/lora_up)", f->path);
	for (i = 0; i < R_COUNT; i++)
		if (b->t[i] && !float_dtype(b->t[i]->dtype))
			return fx_error(err, FX_E_FORMAT, "LoRA tensor '%s' has dtype %s, expected a float type (in '%s')",
					b->t[i]->name, fx_dtype_name(b->t[i]->dtype), f->path);
	if (up->ndim != 2 || down->ndim != 2 || up->shape[1] != down->shape[0] || down->shape[0] < 1)
		return fx_error(err, FX_E_FORMAT,
				"LoRA layer '%s': up %s and down %s are not (N,r) and (r,K) of one rank (in '%s')",
				b->key, fx_shape_str(s1, sizeof(s1), up->ndim, up->shape),
				fx_shape_str(s2, sizeof(s2), down->ndim, down->shape), f->path);
	if (b->t[R_UPBIAS] && (b->t[R_UPBIAS]->ndim != 1 || b->t[R_UPBIAS]->shape[0] != up->shape[0]))
		return fx_error(err, FX_E_FORMAT, "LoRA tensor '%s' has shape %s, expected [%lld] (in '%s')",
				b->t[R_UPBIAS]->name,
				fx_shape_str(s1, sizeof(s1), b->t[R_UPBIAS]->ndim, b->t[R_UPBIAS]->shape),
				(long long)up->shape[0], f->path);
	*rank = down->shape[0];
	*alpha = (double)*rank;
	if (b->t[R_ALPHA]) {
		float a;

		if (fx_tensor_numel(b->t[R_ALPHA]) != 1)
			return fx_error(err, FX_E_FORMAT, "LoRA tensor '%s' holds %llu values, expected one (in '%s')",
					b->t[R_ALPHA]->name,
					(unsigned long long)fx_tensor_numel(b->t[R_ALPHA]), f->path);
		fx_to_f32(&a, b->t[R_ALPHA]->data, b->t[R_ALPHA]->dtype, 1);
		if (!isfinite(a))
			return fx_error(err, FX_E_VALUE, "LoRA tensor '%s' is %g (in '%s')",
					b->t[R_ALPHA]->name, (double)a, f->path);
		*alpha = a;
	}
	for (i = 0; i < R_COUNT; i++)
		if (b->t[i] && i != R_ALPHA && (ret = check_values(f, b->t[i], err)) < 0)
			return ret;
	return 0;
}

/* One layer as entries: BFL/XLabs/kohya names through the tables (fused
 * tensors split in rows, every part sharing down), diffusers names as they
 * are (fx_model_open_loras checks them against the model). */
static int map_base(struct fx_lora_file *f, const struct base *b, const struct adapter *ad,
		    double scale, int64_t D, int64_t F, struct fx_err *err)
{
	const struct bfl_map *tab = NULL, *m = NULL;
	const char *rest = b->name;
	char pre[64] = "", mod[160];
	int64_t rank = 0, N, row = 0, want = 0;
	double alpha = 0, factor, pa;
	size_t ntab = 0, i;
	int ret, j;

	if ((ret = check_base(f, b, &rank, &alpha, err)) < 0)
		return ret;
	/* no .alpha tensor: the saved adapter config's, as diffusers reads it */
	if (!b->t[R_ALPHA] && ad->have)
		alpha = ad->pattern && pattern_alpha(ad, b->name, &pa) ? pa : ad->alpha;
	factor = scale * alpha / (ad->rslora ? sqrt((double)rank) : (double)rank);
	N = b->t[R_UP]->shape[0];
	if (!is_bfl_name(b->name))
		return add_entry(f, b, b->name, N, 0, N, 0, factor, err);
	if (starts(b->name, "double_blocks.") || starts(b->name, "single_blocks.")) {
		bool single = starts(b->name, "single_blocks.");
		const char *p = b->name + strlen(single ? "single_blocks." : "double_blocks.");
		char *end;
		long blk = strtol(p, &end, 10);

		if (end != p && *end == '.' && blk >= 0) {
			snprintf(pre, sizeof(pre), "%s.%ld.",
				 single ? "single_transformer_blocks" : "transformer_blocks", blk);
			rest = end + 1;
			tab = single ? single_map : double_map;
			ntab = single ? FX_ARRAY_SIZE(single_map) : FX_ARRAY_SIZE(double_map);
		}
	} else {
		tab = top_map;
		ntab = FX_ARRAY_SIZE(top_map);
	}
	for (i = 0; i < ntab && !m; i++)
		if (!strcmp(rest, tab[i].bfl))
			m = &tab[i];
	if (!m)
		return fx_error(err, FX_E_FORMAT,
				"LoRA key '%s' matches no layer of a FLUX transformer (in '%s')", b->key,
				f->path);
	for (j = 0; j < 4 && m->mod[j]; j++)
		want += m->part[j] < 0 ? F : m->part[j] * D;
	if (m->part[0] && N != want)
		return fx_error(err, FX_E_FORMAT,
				"LoRA layer '%s' has %lld outputs, a FLUX transformer of hidden size %lld has %lld there: a LoRA for another model? (in '%s')",
				b->key, (long long)N, (long long)D, (long long)want, f->path);
	if (m->part[0] == 2 && !strcmp(m->mod[0], "norm_out.linear")) {
		/* diffusers rows [0,D) are BFL rows [D,2D) and vice versa */
		if ((ret = add_entry(f, b, m->mod[0], 2 * D, 0, D, D, factor, err)) < 0)
			return ret;
		return add_entry(f, b, m->mod[0], 2 * D, D, D, 0, factor, err);
	}
	for (j = 0; j < 4 && m->mod[j]; j++) {
		int64_t rows = m->part[j] < 0 ? F : m->part[j] ? m->part[j] * D : N;

		snprintf(mod, sizeof(mod), "%s%s", pre, m->mod[j]);
		if ((ret = add_entry(f, b, mod, rows, 0, rows, row, factor, err)) < 0)
			return ret;
		row += rows;
	}
	return 0;
}

static bool is_text_encoder(const char *n)
{
	size_t i;

	for (i = 0; i < FX_ARRAY_SIZE(te_prefixes); i++)
		if (starts(n, te_prefixes[i]))
			return true;
	return false;
}

/* key -> (base key, role, normalised name); 0 when it is a LoRA tensor,
 * 1 for a text-encoder key, <0 with an error naming the key. */
static int classify(const struct fx_lora_file *f, const char *key, struct base *b, enum role *role,
		    const char **kind, struct fx_err *err)
{
	const char *n = key, *suf = NULL;
	size_t i, blen;
	bool again = true;

	for (i = 0; i < FX_ARRAY_SIZE(suffixes) && !suf; i++)
		if (ends(key, suffixes[i].suffix)) {
			suf = suffixes[i].suffix;
			*role = suffixes[i].role;
		}
	while (again) {
		again = false;
		for (i = 0; i < FX_ARRAY_SIZE(prefixes); i++)
			if (starts(n, prefixes[i])) {
				n += strlen(prefixes[i]);
				again = true;
			}
	}
	if (is_text_encoder(n))
		return 1;
	if (!suf) {
		if (strstr(key, "dora_scale") || strstr(key, "lora_magnitude_vector"))
			return fx_error(err, FX_E_UNSUPPORTED,
					"LoRA key '%s' is a DoRA magnitude, which fx does not merge (in '%s')",
					key, f->path);
		return fx_error(err, FX_E_FORMAT,
				"LoRA key '%s' is no LoRA tensor of a FLUX transformer (in '%s')", key,
				f->path);
	}
	blen = strlen(key) - strlen(suf);
	snprintf(b->key, sizeof(b->key), "%.*s", (int)blen, key);
	blen = strlen(n) - strlen(suf);
	if (starts(n, "lora_unet_")) {
		char tmp[160];

		snprintf(tmp, sizeof(tmp), "%.*s", (int)(blen - strlen("lora_unet_")),
			 n + strlen("lora_unet_"));
		if (!kohya_to_bfl(tmp, b->name, sizeof(b->name)))
			return fx_error(err, FX_E_FORMAT,
					"LoRA key '%s' matches no layer of a FLUX transformer: a LoRA for another model? (in '%s')",
					key, f->path);
		*kind = "kohya";
		return 0;
	}
	snprintf(b->name, sizeof(b->name), "%.*s", (int)blen, n);
	*kind = strstr(b->name, ".processor.") ? "xlabs" : is_bfl_name(b->name) ? "bfl" : "diffusers";
	return 0;
}

int fx_lora_file_open(struct fx_lora_file **out, const char *path, double scale,
		      bool ignore_unknown, int64_t hidden, int64_t mlp_hidden, struct fx_err *err)
{
	struct fx_lora_file *f = calloc(1, sizeof(*f));
	struct base *bases = NULL;
	struct adapter ad = { 0 };
	size_t nb = 0, i, j, nte = 0;
	const char *first_te = NULL;
	int ret = 0;

	*out = NULL;
	if (!f || !(f->path = strdup(path))) {
		free(f);
		return fx_error(err, FX_E_NOMEM, "out of memory");
	}
	if ((ret = fx_st_open(&f->st, path, err)) < 0)
		goto out;
	bases = calloc(fx_st_count(f->st) + 1, sizeof(*bases));
	if (!bases) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < fx_st_count(f->st); i++) {
		const struct fx_tensor *t = fx_st_at(f->st, i);
		const char *kind = NULL;
		struct base b;
		enum role role = R_DOWN;

		memset(&b, 0, sizeof(b));
		ret = classify(f, t->name, &b, &role, &kind, err);
		if (ret < 0)
			goto out;
		if (ret == 1) {
			if (!ignore_unknown) {
				ret = fx_error(err, FX_E_FORMAT,
					       "LoRA key '%s' is for a text encoder, not the transformer (in '%s'); --lora-ignore-unknown skips such keys",
					       t->name, path);
				goto out;
			}
			if (!nte++)
				first_te = t->name;
			ret = 0;
			continue;
		}
		if (!f->kind)
			f->kind = kind;
		for (j = 0; j < nb && strcmp(bases[j].key, b.key); j++)
			;
		if (j == nb)
			bases[nb++] = b;
		if (bases[j].t[role]) {
			ret = fx_error(err, FX_E_FORMAT, "LoRA keys '%s' and '%s' are the same tensor of layer '%s' (in '%s')",
				       bases[j].t[role]->name, t->name, b.key, path);
			goto out;
		}
		bases[j].t[role] = t;
	}
	if (nte)
		fx_log_info("note: '%s': %zu text-encoder keys ignored ('%s' ...)", path, nte, first_te);
	if (!nb) {
		ret = fx_error(err, FX_E_FORMAT, "'%s' holds no LoRA tensor for the transformer", path);
		goto out;
	}
	if ((ret = read_adapter(f, &ad, err)) < 0)
		goto out;
	for (j = 0; j < nb; j++)
		if ((ret = map_base(f, &bases[j], &ad, scale, hidden, mlp_hidden, err)) < 0)
			goto out;
	*out = f;
	f = NULL;
out:
	json_decref(ad.pattern);
	free(bases);
	fx_lora_file_close(f);
	return ret;
}

void fx_lora_file_close(struct fx_lora_file *f)
{
	if (!f)
		return;
	fx_st_close(f->st);
	free(f->e);
	free(f->path);
	free(f);
}

size_t fx_lora_file_count(const struct fx_lora_file *f)
{
	return f->n;
}

const struct fx_lora_entry *fx_lora_file_entry(const struct fx_lora_file *f, size_t i)
{
	return i < f->n ? &f->e[i] : NULL;
}

const char *fx_lora_file_path(const struct fx_lora_file *f)
{
	return f->path;
}

const char *fx_lora_file_kind(const struct fx_lora_file *f)
{
	return f->kind ? f->kind : "diffusers";
}

/* ---- identity ---------------------------------------------------------- */

int fx_lora_model_id(char out[65], const char *path, const struct fx_loras *l,
		     struct fx_err *err)
{
	struct fx_sha256 *h;
	char mid[65], fid[65], sc[40];
	int i, ret;

	if ((ret = fx_input_id(mid, path, err)) < 0 || !l || !l->n) {
		if (ret == 0)
			memcpy(out, mid, 65);
		return ret;
	}
	h = fx_sha256_new();
	fx_sha256_update(h, "fx-model+lora/1\n", 16);
	fx_sha256_update(h, mid, 64);
	for (i = 0; i < l->n; i++) {
		if ((ret = fx_file_sha256(fid, l->v[i].path, err)) < 0) {
			fx_sha256_final(h, mid);
			return ret;
		}
		real_str(sc, sizeof(sc), l->v[i].scale);
		fx_sha256_update(h, "\n", 1);
		fx_sha256_update(h, fid, 64);
		fx_sha256_update(h, ":", 1);
		fx_sha256_update(h, sc, strlen(sc));
	}
	fx_sha256_final(h, out);
	return 0;
}

int fx_lora_describe(char **out, const struct fx_loras *l, struct fx_err *err)
{
	char *s = NULL, *r = NULL;
	size_t len = 0;
	int i, ret = 0;

	*out = NULL;
	if (!l || !l->n)
		return 0;
	/* built by hand: jansson would print 0.8 as 0.80000000000000004 */
	for (i = 0; i < l->n && ret == 0; i++) {
		const char *base = strrchr(l->v[i].path, '/');
		char fid[65], sc[40], *name;
		json_t *js;

		base = base ? base + 1 : l->v[i].path;
		if ((ret = fx_file_sha256(fid, l->v[i].path, err)) < 0)
			break;
		real_str(sc, sizeof(sc), l->v[i].scale);
		js = json_string(base);
		name = js ? json_dumps(js, JSON_ENCODE_ANY) : NULL;
		json_decref(js);
		if (!name) {
			ret = fx_error(err, FX_E_ARG, "--lora file name '%s' is not UTF-8", base);
			break;
		}
		if (asprintf(&r, "%s%s{\"file\": %s, \"scale\": %s, \"sha256\": \"%s\"}",
			     s ? s : "[", i ? ", " : "", name, sc, fid) < 0)
			r = NULL;
		free(name);
		free(s);
		s = r;
		if (!s)
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
	}
	if (ret == 0 && s) {
		len = strlen(s);
		r = realloc(s, len + 2);
		if (!r) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
		} else {
			s = r;
			memcpy(s + len, "]", 2);
		}
	}
	if (ret < 0) {
		free(s);
		return ret;
	}
	*out = s;
	return 0;
}

int fx_lora_stage_model(struct fx_stage *s, const char *path, const struct fx_loras *l,
			char id[65], struct fx_err *err)
{
	char *js = NULL;
	int ret;

	if ((ret = fx_lora_model_id(id, path, l, err)) < 0 || (ret = fx_lora_describe(&js, l, err)) < 0)
		return ret;
	fx_stage_input_id(s, "model", id);
	if (js)
		fx_stage_meta(s, "fx.loras", js);
	free(js);
	return 0;
}
