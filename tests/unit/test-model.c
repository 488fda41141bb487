/* Model loader and synthetic models: both layouts, shards, config inference,
 * group list, validation errors, NaN reporting. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fx-io.h"
#include "fx-model.h"
#include "fx-st.h"
#include "fx-synth.h"
#include "fx-tensor.h"

#define D 256
#define SEED 7

static char tmpdir[256];

static char *tpath(const char *name)
{
	static char buf[8][512];
	static int k;

	k = (k + 1) % 8;
	snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
	return buf[k];
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb;
	(void)flag;
	(void)ftw;
	return remove(p);
}

static void synth(const char *name, enum fx_layout layout, int shards, bool schnell,
		  uint64_t seed)
{
	struct fx_synth_opts o;
	struct fx_err err = {0};
	int ret;

	fx_synth_opts_init(&o);
	o.layout = layout;
	o.txt_dim = 512;
	o.seed = seed;
	o.shards = shards;
	o.schnell = schnell;
	ret = fx_synth_model(tpath(name), &o, &err);
	if (ret < 0)
		fail_msg("fx_synth_model: %s", err.msg);
}

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/fx-test-model.XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	synth("d", FX_LAYOUT_DIFFUSERS, 1, false, SEED);
	synth("b.safetensors", FX_LAYOUT_BFL, 1, false, SEED);
	synth("s", FX_LAYOUT_DIFFUSERS, 3, false, SEED);
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static struct fx_model *open_ok(const char *path)
{
	struct fx_model *m = NULL;
	struct fx_err err = {0};

	if (fx_model_open(&m, path, &err) < 0)
		fail_msg("fx_model_open(%s): %s", path, err.msg);
	return m;
}

static int open_err(const char *path, struct fx_err *err)
{
	struct fx_model *m = NULL;
	int ret = fx_model_open(&m, path, err);

	assert_null(m);
	return ret;
}

static void assert_contains(const char *hay, const char *needle)
{
	if (!strstr(hay, needle))
		fail_msg("'%s' does not contain '%s'", hay, needle);
}

/* ---- rewriting a safetensors file with one edit ---------------------- */

struct edit {
	const char *skip;       /* drop this tensor */
	const char *shrink;     /* drop the last row of this tensor */
	const char *poison;     /* write val at element idx of this tensor */
	int64_t idx;
	float val;
	const char *to_f32;     /* store this tensor as F32 */
	const char *to_u8;      /* store this tensor as U8 (same shape) */
	const char *prefix;     /* prefix every name */
	const char *extra;      /* add a small extra tensor */
};

static void rewrite(const char *src, const char *dst, const struct edit *e)
{
	struct fx_st *st = NULL;
	struct fx_stw *w = NULL;
	struct fx_out *o = NULL;
	struct fx_err err = {0};
	char nm[256];
	size_t i, n;
	int64_t one = 4;
	uint8_t zeros[8] = {0};

	if (fx_st_open(&st, src, &err) < 0 || fx_stw_new(&w, 0, &err) < 0 ||
	    fx_out_open(&o, dst, true, &err) < 0)
		fail_msg("rewrite: %s", err.msg);
	n = fx_st_count(st);
	for (i = 0; i < n; i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		int64_t shape[FX_MAX_DIMS];
		enum fx_dtype dt = t->dtype;

		if (e->skip && strcmp(t->name, e->skip) == 0)
			continue;
		memcpy(shape, t->shape, sizeof(shape));
		if (e->shrink && strcmp(t->name, e->shrink) == 0)
			shape[0]--;
		if (e->to_f32 && strcmp(t->name, e->to_f32) == 0)
			dt = FX_F32;
		if (e->to_u8 && strcmp(t->name, e->to_u8) == 0)
			dt = FX_U8;
		snprintf(nm, sizeof(nm), "%s%s", e->prefix ? e->prefix : "", t->name);
		if (fx_stw_add(w, nm, dt, t->ndim, shape, &err) < 0)
			fail_msg("rewrite: %s", err.msg);
	}
	if (e->extra && fx_stw_add(w, e->extra, FX_BF16, 1, &one, &err) < 0)
		fail_msg("rewrite: %s", err.msg);
	if (fx_stw_begin(w, fx_out_fd(o), &err) < 0)
		fail_msg("rewrite: %s", err.msg);
	for (i = 0; i < n; i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		size_t numel = (size_t)fx_tensor_numel(t), bytes = t->nbytes;
		uint16_t *buf;
		int ret;

		if (e->skip && strcmp(t->name, e->skip) == 0)
			continue;
		assert_int_equal(t->dtype, FX_BF16);
		buf = malloc(t->nbytes);
		assert_non_null(buf);
		memcpy(buf, t->data, t->nbytes);
		if (e->poison && strcmp(t->name, e->poison) == 0)
			buf[e->idx] = fx_f32_to_bf16(e->val);
		if (e->shrink && strcmp(t->name, e->shrink) == 0)
			bytes = t->nbytes / (size_t)t->shape[0] * (size_t)(t->shape[0] - 1);
		if (e->to_u8 && strcmp(t->name, e->to_u8) == 0)
			bytes = numel;
		snprintf(nm, sizeof(nm), "%s%s", e->prefix ? e->prefix : "", t->name);
		if (e->to_f32 && strcmp(t->name, e->to_f32) == 0) {
			float *f = malloc(numel * sizeof(*f));
			size_t j;

			assert_non_null(f);
			for (j = 0; j < numel; j++)
				f[j] = fx_bf16_to_f32(buf[j]);
			ret = fx_stw_write(w, nm, f, numel * 4, &err);
			free(f);
		} else {
			ret = fx_stw_write(w, nm, buf, bytes, &err);
		}
		free(buf);
		if (ret < 0)
			fail_msg("rewrite: %s", err.msg);
	}
	if ((e->extra && fx_stw_write(w, e->extra, zeros, 8, &err) < 0) ||
	    fx_stw_finish(w, &err) < 0 || fx_out_commit(o, &err) < 0)
		fail_msg("rewrite: %s", err.msg);
	fx_stw_free(w);
	fx_st_close(st);
}

static const char *dfile(void)
{
	return tpath("d/diffusion_pytorch_model.safetensors");
}

/* ---- comparisons ------------------------------------------------------- */

static void assert_config_equal(const struct fx_model_config *a, const struct fx_model_config *b)
{
	assert_int_equal(a->hidden, b->hidden);
	assert_int_equal(a->heads, b->heads);
	assert_int_equal(a->head_dim, b->head_dim);
	assert_int_equal(a->mlp_hidden, b->mlp_hidden);
	assert_int_equal(a->num_double, b->num_double);
	assert_int_equal(a->num_single, b->num_single);
	assert_int_equal(a->in_channels, b->in_channels);
	assert_int_equal(a->out_channels, b->out_channels);
	assert_int_equal(a->joint_dim, b->joint_dim);
	assert_int_equal(a->pooled_dim, b->pooled_dim);
	assert_int_equal(a->guidance, b->guidance);
	assert_int_equal(a->axes[0], b->axes[0]);
	assert_int_equal(a->axes[1], b->axes[1]);
	assert_int_equal(a->axes[2], b->axes[2]);
}

static void group_f32(const struct fx_model *m, const struct fx_group *g, float **w, float **b)
{
	struct fx_err err = {0};

	*w = malloc((size_t)(g->n * g->k) * sizeof(float));
	*b = malloc((size_t)g->n * sizeof(float));
	assert_non_null(*w);
	assert_non_null(*b);
	if (fx_model_group_f32(m, g, *w, *b, &err) < 0)
		fail_msg("group %s: %s", g->name, err.msg);
}

/* Same groups (names, shapes, f32 bytes) and plain tensors (bf16 and f32). */
static void assert_models_equal(const struct fx_model *a, const struct fx_model *b)
{
	struct fx_err err = {0};
	size_t i;
	int j;

	assert_config_equal(fx_model_config(a), fx_model_config(b));
	assert_int_equal(fx_model_ngroups(a), fx_model_ngroups(b));
	for (i = 0; i < fx_model_ngroups(a); i++) {
		const struct fx_group *ga = fx_model_group(a, i), *gb = fx_model_group(b, i);
		float *wa, *ba, *wb, *bb;

		assert_string_equal(ga->name, gb->name);
		assert_int_equal(ga->n, gb->n);
		assert_int_equal(ga->k, gb->k);
		assert_int_equal(ga->kind, gb->kind);
		assert_int_equal(ga->nmembers, gb->nmembers);
		assert_int_equal(ga->adaln_chunks, gb->adaln_chunks);
		assert_int_equal(ga->gelu_input, gb->gelu_input);
		for (j = 0; j < ga->nmembers; j++)
			assert_string_equal(ga->members[j].name, gb->members[j].name);
		group_f32(a, ga, &wa, &ba);
		group_f32(b, gb, &wb, &bb);
		assert_memory_equal(wa, wb, (size_t)(ga->n * ga->k) * sizeof(float));
		assert_memory_equal(ba, bb, (size_t)ga->n * sizeof(float));
		free(wa);
		free(ba);
		free(wb);
		free(bb);
	}
	assert_int_equal(fx_model_nplain(a), fx_model_nplain(b));
	for (i = 0; i < fx_model_nplain(a); i++) {
		const char *name = fx_model_plain_name(a, i);
		const struct fx_tensor *t = fx_model_plain(a, name);
		size_t n = (size_t)fx_tensor_numel(t);
		uint16_t *ha = malloc(n * 2), *hb = malloc(n * 2);
		float *fa = malloc(n * 4), *fb = malloc(n * 4);

		assert_string_equal(name, fx_model_plain_name(b, i));
		assert_int_equal(n, fx_tensor_numel(fx_model_plain(b, name)));
		assert_int_equal(fx_model_plain_bf16(a, name, ha, &err), 0);
		assert_int_equal(fx_model_plain_bf16(b, name, hb, &err), 0);
		assert_int_equal(fx_model_plain_f32(a, name, fa, &err), 0);
		assert_int_equal(fx_model_plain_f32(b, name, fb, &err), 0);
		assert_memory_equal(ha, hb, n * 2);
		assert_memory_equal(fa, fb, n * 4);
		free(ha);
		free(hb);
		free(fa);
		free(fb);
	}
}

/* ---- tests --------------------------------------------------------------- */

struct gexp {
	const char *fused;
	int64_t n, k;
	int nm, chunks;
	bool gelu;
	const char *m0;
};

static void test_group_list(void **state)
{
	static const struct gexp dbl[] = {
		{ "norm1.linear", 6 * D, D, 1, 6, false, "norm1.linear" },
		{ "norm1_context.linear", 6 * D, D, 1, 6, false, "norm1_context.linear" },
		{ "qkv_proj", 3 * D, D, 3, 0, false, "attn.to_q" },
		{ "qkv_proj_context", 3 * D, D, 3, 0, false, "attn.add_q_proj" },
		{ "out_proj", D, D, 1, 0, false, "attn.to_out.0" },
		{ "out_proj_context", D, D, 1, 0, false, "attn.to_add_out" },
		{ "mlp_fc1", 4 * D, D, 1, 0, false, "ff.net.0.proj" },
		{ "mlp_fc2", D, 4 * D, 1, 0, true, "ff.net.2" },
		{ "mlp_context_fc1", 4 * D, D, 1, 0, false, "ff_context.net.0.proj" },
		{ "mlp_context_fc2", D, 4 * D, 1, 0, true, "ff_context.net.2" },
	}, sgl[] = {
		{ "norm.linear", 3 * D, D, 1, 3, false, "norm.linear" },
		{ "qkv_proj", 3 * D, D, 3, 0, false, "attn.to_q" },
		{ "mlp_fc1", 4 * D, D, 1, 0, false, "proj_mlp" },
		{ "out_proj", D, D, 1, 0, false, "proj_out" },
		{ "mlp_fc2", D, 4 * D, 1, 0, true, "proj_out" },
	};
	const char *paths[2] = { tpath("d"), tpath("b.safetensors") };
	int p;

	(void)state;
	for (p = 0; p < 2; p++) {
		struct fx_model *m = open_ok(paths[p]);
		size_t gi = 0;
		int blk, j;
		char want[128];

		assert_int_equal(fx_model_layout(m), p ? FX_LAYOUT_BFL : FX_LAYOUT_DIFFUSERS);
		assert_int_equal(fx_model_ngroups(m), 2 * 10 + 2 * 5);
		for (blk = 0; blk < 4; blk++) {
			bool single = blk >= 2;
			int b = blk % 2;
			size_t nd = single ? FX_ARRAY_SIZE(sgl) : FX_ARRAY_SIZE(dbl);

			for (j = 0; j < (int)nd; j++, gi++) {
				const struct fx_group *g = fx_model_group(m, gi);
				const struct gexp *x = single ? &sgl[j] : &dbl[j];
				char pre[64];

				fx_block_prefix(pre, sizeof(pre), single, b);
				snprintf(want, sizeof(want), "%s.%s", pre, x->fused);
				assert_string_equal(g->name, want);
				assert_ptr_equal(fx_model_find_group(m, want), g);
				assert_string_equal(g->fused, x->fused);
				assert_int_equal(g->block, b);
				assert_int_equal(g->single, single);
				assert_int_equal(g->n, x->n);
				assert_int_equal(g->k, x->k);
				assert_int_equal(g->nmembers, x->nm);
				assert_int_equal(g->adaln_chunks, x->chunks);
				assert_int_equal(g->kind, x->chunks ? FX_GROUP_ADALN : FX_GROUP_W4A4);
				assert_int_equal(g->gelu_input, x->gelu);
				snprintf(want, sizeof(want), "%s.%s", pre, x->m0);
				assert_string_equal(g->members[0].name, want);
				assert_int_equal(g->members[0].ncols, g->k);
			}
		}
		/* qkv members: to_q, to_k, to_v at rows 0, D, 2D */
		{
			const struct fx_group *g = fx_model_find_group(m,
				"transformer_blocks.1.qkv_proj_context");

			assert_non_null(g);
			assert_string_equal(g->members[1].name, "transformer_blocks.1.attn.add_k_proj");
			assert_string_equal(g->members[2].name, "transformer_blocks.1.attn.add_v_proj");
			for (j = 0; j < 3; j++) {
				assert_int_equal(g->members[j].out_row0, j * D);
				assert_int_equal(g->members[j].nrows, D);
				assert_int_equal(g->members[j].row0, p ? j * D : 0);
			}
			g = fx_model_find_group(m, "single_transformer_blocks.0.out_proj");
			assert_null(g->members[0].bias);
			assert_int_equal(g->members[0].col0, 0);
			g = fx_model_find_group(m, "single_transformer_blocks.0.mlp_fc2");
			assert_non_null(g->members[0].bias);
			assert_int_equal(g->members[0].col0, D);
			assert_int_equal(g->members[0].ncols, 4 * D);
			g = fx_model_find_group(m, "single_transformer_blocks.1.mlp_fc1");
			assert_int_equal(g->members[0].row0, p ? 3 * D : 0);
		}
		assert_null(fx_model_find_group(m, "transformer_blocks.2.qkv_proj"));
		assert_null(fx_model_group(m, 30));
		fx_model_close(m);
	}
}

static void test_layouts_equal(void **state)
{
	struct fx_model *d = open_ok(tpath("d")), *b = open_ok(tpath("b.safetensors"));

	(void)state;
	assert_int_equal(fx_model_layout(b), FX_LAYOUT_BFL);
	assert_models_equal(d, b);
	fx_model_close(d);
	fx_model_close(b);
}

/* Checks the swap on the raw files, independent of the loader. */
static void test_norm_out_swap(void **state)
{
	struct fx_st *sd = NULL, *sb = NULL;
	struct fx_err err = {0};
	const struct fx_tensor *td, *tb;
	size_t half;

	(void)state;
	assert_int_equal(fx_st_open(&sd, dfile(), &err), 0);
	assert_int_equal(fx_st_open(&sb, tpath("b.safetensors"), &err), 0);
	td = fx_st_find(sd, "norm_out.linear.weight");
	tb = fx_st_find(sb, "final_layer.adaLN_modulation.1.weight");
	assert_non_null(td);
	assert_non_null(tb);
	assert_int_equal(td->nbytes, tb->nbytes);
	half = td->nbytes / 2;
	assert_memory_equal(td->data, (const char *)tb->data + half, half);
	assert_memory_equal((const char *)td->data + half, tb->data, half);
	assert_memory_not_equal(td->data, tb->data, half);
	td = fx_st_find(sd, "norm_out.linear.bias");
	tb = fx_st_find(sb, "final_layer.adaLN_modulation.1.bias");
	half = td->nbytes / 2;
	assert_memory_equal(td->data, (const char *)tb->data + half, half);
	/* single proj_out is copied unsplit */
	td = fx_st_find(sd, "single_transformer_blocks.1.proj_out.weight");
	tb = fx_st_find(sb, "single_blocks.1.linear2.weight");
	assert_memory_equal(td->data, tb->data, td->nbytes);
	fx_st_close(sd);
	fx_st_close(sb);
}

static void test_group_values(void **state)
{
	struct fx_model *m = open_ok(tpath("b.safetensors"));
	const struct fx_group *g = fx_model_find_group(m, "single_transformer_blocks.0.out_proj");
	const struct fx_group *g2 = fx_model_find_group(m, "single_transformer_blocks.0.mlp_fc2");
	const struct fx_tensor *l2 = g->members[0].weight, *l2b = g2->members[0].bias;
	const uint16_t *raw = l2->data, *rawb = l2b->data;
	float *w, *b, *w2, *b2;
	int64_t r, c;

	(void)state;
	group_f32(m, g, &w, &b);
	group_f32(m, g2, &w2, &b2);
	for (r = 0; r < D; r++) {
		assert_true(b[r] == 0.0f);
		assert_true(b2[r] == fx_bf16_to_f32(rawb[r]));
		for (c = 0; c < 5 * D; c++) {
			float v = fx_bf16_to_f32(raw[r * 5 * D + c]);

			if (c < D)
				assert_true(w[r * D + c] == v);
			else
				assert_true(w2[r * 4 * D + c - D] == v);
		}
	}
	free(w);
	free(b);
	free(w2);
	free(b2);
	fx_model_close(m);
}

static void test_sharded(void **state)
{
	struct fx_model *d = open_ok(tpath("d")), *s = open_ok(tpath("s"));
	struct fx_model *si = open_ok(tpath("s/diffusion_pytorch_model.safetensors.index.json"));

	(void)state;
	assert_int_equal(fx_stset_nfiles(fx_model_files(s)), 3);
	assert_int_equal(fx_stset_nfiles(fx_model_files(d)), 1);
	assert_true(fx_model_config_from_file(si));
	assert_models_equal(d, s);
	assert_models_equal(d, si);
	fx_model_close(d);
	fx_model_close(s);
	fx_model_close(si);
}

static void test_config_inferred(void **state)
{
	struct edit e = {0};
	struct fx_model *d, *b, *x;
	const char *j;

	(void)state;
	rewrite(dfile(), tpath("plain.safetensors"), &e);
	d = open_ok(tpath("d"));
	b = open_ok(tpath("b.safetensors"));
	x = open_ok(tpath("plain.safetensors"));
	assert_true(fx_model_config_from_file(d));
	assert_false(fx_model_config_from_file(b));
	assert_false(fx_model_config_from_file(x));
	assert_config_equal(fx_model_config(d), fx_model_config(b));
	assert_config_equal(fx_model_config(d), fx_model_config(x));
	assert_int_equal(fx_model_config(d)->hidden, D);
	assert_int_equal(fx_model_config(d)->heads, 2);
	assert_int_equal(fx_model_config(d)->joint_dim, 512);
	assert_int_equal(fx_model_config(d)->pooled_dim, 768);
	assert_true(fx_model_config(d)->guidance);
	/* the synthesised config is what fx-synth wrote as config.json */
	j = fx_model_config_json(b);
	assert_non_null(j);
	assert_string_equal(j, fx_model_config_json(d));
	assert_contains(j, "\"_class_name\": \"FluxTransformer2DModel\"");
	assert_contains(j, "\"guidance_embeds\": true");
	assert_models_equal(d, x);
	fx_model_close(d);
	fx_model_close(b);
	fx_model_close(x);
}

static void test_schnell(void **state)
{
	struct fx_model *d, *b;
	size_t i;

	(void)state;
	synth("sd", FX_LAYOUT_DIFFUSERS, 1, true, SEED);
	synth("sb.safetensors", FX_LAYOUT_BFL, 1, true, SEED);
	d = open_ok(tpath("sd"));
	b = open_ok(tpath("sb.safetensors"));
	assert_false(fx_model_config(d)->guidance);
	assert_false(fx_model_config(b)->guidance);
	assert_int_equal(fx_model_nplain(d), 16 + 2 * 4 + 2 * 2);
	for (i = 0; i < fx_model_nplain(d); i++)
		assert_null(strstr(fx_model_plain_name(d, i), "guidance"));
	assert_models_equal(d, b);
	fx_model_close(d);
	fx_model_close(b);
}

static void test_plain_list(void **state)
{
	static const char *const want[] = {
		"x_embedder.weight", "x_embedder.bias", "context_embedder.weight",
		"context_embedder.bias", "time_text_embed.timestep_embedder.linear_1.weight",
		"time_text_embed.timestep_embedder.linear_1.bias",
		"time_text_embed.timestep_embedder.linear_2.weight",
		"time_text_embed.timestep_embedder.linear_2.bias",
		"time_text_embed.guidance_embedder.linear_1.weight",
		"time_text_embed.guidance_embedder.linear_1.bias",
		"time_text_embed.guidance_embedder.linear_2.weight",
		"time_text_embed.guidance_embedder.linear_2.bias",
		"time_text_embed.text_embedder.linear_1.weight",
		"time_text_embed.text_embedder.linear_1.bias",
		"time_text_embed.text_embedder.linear_2.weight",
		"time_text_embed.text_embedder.linear_2.bias", "norm_out.linear.weight",
		"norm_out.linear.bias", "proj_out.weight", "proj_out.bias",
		"transformer_blocks.0.attn.norm_q.weight", "transformer_blocks.0.attn.norm_k.weight",
		"transformer_blocks.0.attn.norm_added_q.weight",
		"transformer_blocks.0.attn.norm_added_k.weight",
	};
	struct fx_model *m = open_ok(tpath("b.safetensors"));
	struct fx_err err = {0};
	const struct fx_tensor *t;
	uint16_t h[128];
	size_t i;

	(void)state;
	assert_int_equal(fx_model_nplain(m), 20 + 2 * 4 + 2 * 2);
	for (i = 0; i < FX_ARRAY_SIZE(want); i++)
		assert_string_equal(fx_model_plain_name(m, i), want[i]);
	assert_string_equal(fx_model_plain_name(m, 31),
			    "single_transformer_blocks.1.attn.norm_k.weight");
	assert_null(fx_model_plain_name(m, 32));
	t = fx_model_plain(m, "single_transformer_blocks.1.attn.norm_k.weight");
	assert_non_null(t);
	assert_string_equal(t->name, "single_blocks.1.norm.key_norm.scale");
	assert_int_equal(t->shape[0], 128);
	assert_int_equal(fx_model_plain_bf16(m, "single_transformer_blocks.1.attn.norm_k.weight", h,
					     &err), 0);
	assert_memory_equal(h, t->data, sizeof(h));
	t = fx_model_plain(m, "proj_out.weight");
	assert_string_equal(t->name, "final_layer.linear.weight");
	assert_int_equal(t->shape[0], 64);
	assert_null(fx_model_plain(m, "transformer_blocks.0.attn.to_q.weight"));
	assert_int_equal(fx_model_plain_f32(m, "nope", NULL, &err), FX_E_ARG);
	fx_model_close(m);
}

static void test_parent_folder(void **state)
{
	struct fx_model *a, *b;

	(void)state;
	assert_int_equal(mkdir(tpath("pipe"), 0777), 0);
	synth("pipe/transformer", FX_LAYOUT_DIFFUSERS, 1, false, SEED);
	a = open_ok(tpath("pipe"));
	b = open_ok(tpath("d"));
	assert_true(fx_model_config_from_file(a));
	assert_models_equal(a, b);
	fx_model_close(a);
	fx_model_close(b);
}

static void test_prefix(void **state)
{
	struct edit e = { .prefix = "model.diffusion_model." };
	struct fx_model *a, *b;

	(void)state;
	rewrite(tpath("b.safetensors"), tpath("pre.safetensors"), &e);
	a = open_ok(tpath("pre.safetensors"));
	b = open_ok(tpath("b.safetensors"));
	assert_int_equal(fx_model_layout(a), FX_LAYOUT_BFL);
	assert_models_equal(a, b);
	fx_model_close(a);
	fx_model_close(b);
}

static void test_missing(void **state)
{
	struct edit e = { .skip = "transformer_blocks.1.attn.to_k.weight" };
	struct edit f = { .skip = "single_blocks.1.linear1.bias" };
	struct fx_err err = {0};

	(void)state;
	rewrite(dfile(), tpath("miss.safetensors"), &e);
	assert_int_equal(open_err(tpath("miss.safetensors"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "'transformer_blocks.1.attn.to_k.weight'");
	assert_contains(err.msg, "missing");
	assert_contains(err.msg, "[256,256]");
	assert_contains(err.msg, "miss.safetensors");
	rewrite(tpath("b.safetensors"), tpath("missb.safetensors"), &f);
	assert_int_equal(open_err(tpath("missb.safetensors"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "'single_blocks.1.linear1.bias'");
	assert_contains(err.msg, "[1792]");
	assert_contains(err.msg, "missb.safetensors");
}

static void test_misshapen(void **state)
{
	struct edit e = { .shrink = "transformer_blocks.0.ff.net.2.weight" };
	struct edit f = { .shrink = "double_blocks.1.txt_attn.qkv.weight" };
	struct fx_err err = {0};

	(void)state;
	rewrite(dfile(), tpath("shape.safetensors"), &e);
	assert_int_equal(open_err(tpath("shape.safetensors"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "'transformer_blocks.0.ff.net.2.weight'");
	assert_contains(err.msg, "[255,1024]");
	assert_contains(err.msg, "[256,1024]");
	assert_contains(err.msg, "shape.safetensors");
	rewrite(tpath("b.safetensors"), tpath("shapeb.safetensors"), &f);
	assert_int_equal(open_err(tpath("shapeb.safetensors"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "'double_blocks.1.txt_attn.qkv.weight' has shape [767,256], "
			"expected [768,256]");
}

static void test_config_mismatch(void **state)
{
	static const char cfg[] = "{\"_class_name\": \"FluxTransformer2DModel\", "
		"\"num_layers\": 1, \"num_single_layers\": 2, \"num_attention_heads\": 2, "
		"\"joint_attention_dim\": 512, \"guidance_embeds\": true}";
	struct edit e = {0};
	struct fx_err err = {0};
	FILE *f;

	(void)state;
	assert_int_equal(mkdir(tpath("cm"), 0777), 0);
	rewrite(dfile(), tpath("cm/diffusion_pytorch_model.safetensors"), &e);
	f = fopen(tpath("cm/config.json"), "w");
	assert_non_null(f);
	fputs(cfg, f);
	fclose(f);
	assert_int_equal(open_err(tpath("cm"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "unexpected tensor 'transformer_blocks.1.");
	/* a config that disagrees with the shapes */
	f = fopen(tpath("cm/config.json"), "w");
	fputs("{\"num_layers\": 2, \"num_single_layers\": 2, \"num_attention_heads\": 2, "
	      "\"guidance_embeds\": true}", f);
	fclose(f);
	assert_int_equal(open_err(tpath("cm"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "'context_embedder.weight' has shape [256,512], expected [256,4096]");
	f = fopen(tpath("cm/config.json"), "w");
	fputs("{\"num_layers\": \"two\"}", f);
	fclose(f);
	assert_int_equal(open_err(tpath("cm"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "num_layers");
	assert_contains(err.msg, "config.json");
}

static void test_unexpected(void **state)
{
	struct edit e = { .extra = "extra.weight" };
	struct fx_err err = {0};

	(void)state;
	rewrite(dfile(), tpath("extra.safetensors"), &e);
	assert_int_equal(open_err(tpath("extra.safetensors"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "unexpected tensor 'extra.weight'");
}

/* fx_model_group_bf16 = BF16 rounding of fx_model_group_f32, every group. */
static void assert_group_bf16(const struct fx_model *m)
{
	for (size_t i = 0; i < fx_model_ngroups(m); i++) {
		const struct fx_group *g = fx_model_group(m, i);
		uint16_t *h = malloc((size_t)(g->n * g->k) * sizeof(uint16_t));
		float *w, *b, *b2 = malloc((size_t)g->n * sizeof(float));
		struct fx_err err = {0};

		assert_non_null(h);
		assert_non_null(b2);
		group_f32(m, g, &w, &b);
		if (fx_model_group_bf16(m, g, h, b2, &err) < 0)
			fail_msg("group %s: %s", g->name, err.msg);
		for (int64_t j = 0; j < g->n * g->k; j++)
			if (h[j] != fx_f32_to_bf16(w[j]))
				fail_msg("group %s element %lld: %04x, f32 %g", g->name, (long long)j,
					 h[j], w[j]);
		assert_memory_equal(b, b2, (size_t)g->n * sizeof(float));
		free(h);
		free(w);
		free(b);
		free(b2);
	}
}

static void test_dtypes(void **state)
{
	struct edit e = { .to_f32 = "transformer_blocks.0.attn.to_q.weight" };
	struct edit f = { .to_u8 = "transformer_blocks.0.attn.to_q.weight" };
	struct fx_model *a, *b;
	struct fx_err err = {0};

	(void)state;
	rewrite(dfile(), tpath("f32.safetensors"), &e);
	a = open_ok(tpath("f32.safetensors"));
	b = open_ok(tpath("d"));
	assert_int_equal(fx_model_find_group(a, "transformer_blocks.0.qkv_proj")->members[0]
			 .weight->dtype, FX_F32);
	assert_models_equal(a, b);
	assert_group_bf16(a);   /* an F32 member rounded */
	assert_group_bf16(b);
	fx_model_close(a);
	fx_model_close(b);
	rewrite(dfile(), tpath("u8.safetensors"), &f);
	assert_int_equal(open_err(tpath("u8.safetensors"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "'transformer_blocks.0.attn.to_q.weight' has dtype U8");
}

static void expect_value_error(const char *path, const char *group, bool bias, const char *msg)
{
	struct fx_model *m = open_ok(path);
	const struct fx_group *g = fx_model_find_group(m, group);
	struct fx_err err = {0};
	float *w = malloc((size_t)(g->n * g->k) * sizeof(float)), *b = malloc((size_t)g->n * 4);

	assert_non_null(g);
	if (bias) {
		assert_int_equal(fx_model_group_f32(m, g, w, NULL, &err), 0);
		assert_int_equal(fx_model_group_f32(m, g, NULL, b, &err), FX_E_VALUE);
	} else {
		assert_int_equal(fx_model_group_f32(m, g, NULL, b, &err), 0);
		assert_int_equal(fx_model_group_f32(m, g, w, b, &err), FX_E_VALUE);
		assert_contains(err.msg, msg);
		/* the BF16 copy (CUDA BF16 GEMMs) finds the same element */
		memset(&err, 0, sizeof(err));
		assert_int_equal(fx_model_group_bf16(m, g, (uint16_t *)w, NULL, &err), FX_E_VALUE);
	}
	assert_contains(err.msg, msg);
	free(w);
	free(b);
	fx_model_close(m);
}

static void test_nan(void **state)
{
	struct edit e = { .poison = "double_blocks.0.img_attn.qkv.weight", .idx = 12 * D + 7,
			  .val = NAN };
	struct edit f = { .poison = "double_blocks.0.img_attn.qkv.weight",
			  .idx = (int64_t)(D + 44) * D + 5, .val = -INFINITY };
	struct edit g = { .poison = "single_transformer_blocks.1.proj_out.weight",
			  .idx = 3 * 5 * D + 260, .val = INFINITY };
	struct edit h = { .poison = "transformer_blocks.1.attn.to_v.bias", .idx = 5, .val = NAN };
	struct fx_model *m;
	const struct fx_group *og;
	float *w;
	struct fx_err err = {0};

	(void)state;
	rewrite(tpath("b.safetensors"), tpath("nan.safetensors"), &e);
	expect_value_error(tpath("nan.safetensors"), "transformer_blocks.0.qkv_proj", false,
			   "tensor 'double_blocks.0.img_attn.qkv.weight' has NaN at [12,7] "
			   "(in '");
	rewrite(tpath("b.safetensors"), tpath("nan2.safetensors"), &f);
	expect_value_error(tpath("nan2.safetensors"), "transformer_blocks.0.qkv_proj", false,
			   "'double_blocks.0.img_attn.qkv.weight' has -Inf at [300,5]");
	rewrite(dfile(), tpath("nan3.safetensors"), &g);
	expect_value_error(tpath("nan3.safetensors"), "single_transformer_blocks.1.mlp_fc2", false,
			   "'single_transformer_blocks.1.proj_out.weight' has Inf at [3,260]");
	/* the attention columns of the same tensor are clean */
	m = open_ok(tpath("nan3.safetensors"));
	og = fx_model_find_group(m, "single_transformer_blocks.1.out_proj");
	w = malloc((size_t)(og->n * og->k) * sizeof(float));
	assert_int_equal(fx_model_group_f32(m, og, w, NULL, &err), 0);
	free(w);
	fx_model_close(m);
	rewrite(dfile(), tpath("nan4.safetensors"), &h);
	expect_value_error(tpath("nan4.safetensors"), "transformer_blocks.1.qkv_proj", true,
			   "'transformer_blocks.1.attn.to_v.bias' has NaN at [5]");
}

static void test_plain_nan(void **state)
{
	struct edit e = { .poison = "final_layer.adaLN_modulation.1.bias", .idx = 3, .val = NAN };
	struct fx_model *m;
	struct fx_err err = {0};
	float f[2 * D];

	(void)state;
	rewrite(tpath("b.safetensors"), tpath("pnan.safetensors"), &e);
	m = open_ok(tpath("pnan.safetensors"));
	assert_int_equal(fx_model_plain_f32(m, "norm_out.linear.bias", f, &err), FX_E_VALUE);
	assert_contains(err.msg, "'final_layer.adaLN_modulation.1.bias' has NaN at [3]");
	fx_model_close(m);
}

static void test_open_errors(void **state)
{
	struct fx_synth_cond_opts co;
	struct fx_err err = {0};

	(void)state;
	assert_true(open_err(tpath("nonexistent"), &err) < 0);
	assert_contains(err.msg, "nonexistent");
	fx_synth_cond_opts_init(&co);
	co.txt_dim = 64;
	assert_int_equal(fx_synth_cond(tpath("cond.safetensors"), &co, &err), 0);
	assert_int_equal(open_err(tpath("cond.safetensors"), &err), FX_E_FORMAT);
	assert_contains(err.msg, "not a FLUX transformer");
}

static bool files_equal(const char *a, const char *b)
{
	FILE *fa = fopen(a, "rb"), *fb = fopen(b, "rb");
	bool eq = fa && fb;
	int ca, cb;

	while (eq) {
		ca = fgetc(fa);
		cb = fgetc(fb);
		if (ca != cb)
			eq = false;
		if (ca == EOF)
			break;
	}
	if (fa)
		fclose(fa);
	if (fb)
		fclose(fb);
	return eq;
}

static void test_synth_deterministic(void **state)
{
	struct fx_synth_opts o;
	struct fx_err err = {0};

	(void)state;
	synth("b2.safetensors", FX_LAYOUT_BFL, 1, false, SEED);
	synth("b3.safetensors", FX_LAYOUT_BFL, 1, false, SEED + 1);
	assert_true(files_equal(tpath("b.safetensors"), tpath("b2.safetensors")));
	assert_false(files_equal(tpath("b.safetensors"), tpath("b3.safetensors")));
	/* refused without force, replaced with it */
	fx_synth_opts_init(&o);
	o.layout = FX_LAYOUT_BFL;
	o.txt_dim = 512;
	o.seed = SEED;
	assert_int_equal(fx_synth_model(tpath("b3.safetensors"), &o, &err), FX_E_ARG);
	assert_contains(err.msg, "exists");
	o.force = true;
	assert_int_equal(fx_synth_model(tpath("b3.safetensors"), &o, &err), 0);
	assert_true(files_equal(tpath("b.safetensors"), tpath("b3.safetensors")));
	/* a sharded folder rewritten as one file loses its stale shards */
	synth("s2", FX_LAYOUT_DIFFUSERS, 2, false, SEED);
	o.layout = FX_LAYOUT_DIFFUSERS;
	assert_int_equal(fx_synth_model(tpath("s2"), &o, &err), 0);
	assert_int_equal(access(tpath("s2/diffusion_pytorch_model-00001-of-00002.safetensors"), F_OK),
			 -1);
	assert_true(files_equal(dfile(), tpath("s2/diffusion_pytorch_model.safetensors")));
	o.hidden = 200;
	assert_int_equal(fx_synth_model(tpath("bad"), &o, &err), FX_E_ARG);
	assert_int_equal(access(tpath("bad"), F_OK), -1);
}

/* The weights are not trivial to quantize: varied rows, outlier columns,
 * a dominant low-rank part, non-zero modulation. */
static void test_synth_weights(void **state)
{
	struct fx_model *m = open_ok(tpath("d"));
	const struct fx_group *g = fx_model_find_group(m, "transformer_blocks.0.mlp_fc1");
	const struct fx_group *a = fx_model_find_group(m, "single_transformer_blocks.1.norm.linear");
	float *w, *b, *wa, *ba;
	double rmin = INFINITY, rmax = 0, cmax = 0, csum = 0;
	int64_t r, c;

	(void)state;
	group_f32(m, g, &w, &b);
	for (r = 0; r < g->n; r++) {
		double s = 0;

		for (c = 0; c < g->k; c++)
			s += (double)w[r * g->k + c] * w[r * g->k + c];
		rmin = fmin(rmin, s);
		rmax = fmax(rmax, s);
	}
	for (c = 0; c < g->k; c++) {
		double s = 0;

		for (r = 0; r < g->n; r++)
			s += fabs(w[r * g->k + c]);
		cmax = fmax(cmax, s);
		csum += s;
	}
	assert_true(rmax / rmin > 4.0);                 /* row norms vary */
	assert_true(cmax / (csum / (double)g->k) > 5.0);   /* outlier input channels */
	group_f32(m, a, &wa, &ba);
	for (r = 0; r < a->n * a->k && wa[r] == 0.0f; r++)
		;
	assert_true(r < a->n * a->k);                   /* modulation is not zero */
	free(w);
	free(b);
	free(wa);
	free(ba);
	fx_model_close(m);
}

static void test_cond(void **state)
{
	struct fx_synth_cond_opts co;
	struct fx_st *st = NULL;
	struct fx_err err = {0};
	const struct fx_tensor *t;
	const uint16_t *h;
	double mx = 0, sum = 0;
	size_t i, n;

	(void)state;
	fx_synth_cond_opts_init(&co);
	co.prompts = 3;
	co.txt_len = 16;
	co.txt_dim = 512;
	assert_int_equal(fx_synth_cond(tpath("c.safetensors"), &co, &err), 0);
	assert_int_equal(fx_synth_cond(tpath("c.safetensors"), &co, &err), FX_E_ARG);
	assert_int_equal(fx_st_open(&st, tpath("c.safetensors"), &err), 0);
	t = fx_st_find(st, "prompt_embeds");
	assert_non_null(t);
	assert_int_equal(t->dtype, FX_BF16);
	assert_int_equal(t->ndim, 3);
	assert_int_equal(t->shape[0], 3);
	assert_int_equal(t->shape[1], 16);
	assert_int_equal(t->shape[2], 512);
	h = t->data;
	n = (size_t)fx_tensor_numel(t);
	for (i = 0; i < n; i++) {
		double v = fabs(fx_bf16_to_f32(h[i]));

		mx = fmax(mx, v);
		sum += v;
	}
	assert_true(mx > 20 * sum / (double)n);   /* a few large channels */
	t = fx_st_find(st, "pooled_prompt_embeds");
	assert_non_null(t);
	assert_int_equal(t->shape[0], 3);
	assert_int_equal(t->shape[1], 768);
	fx_st_close(st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_group_list),
		cmocka_unit_test(test_layouts_equal),
		cmocka_unit_test(test_norm_out_swap),
		cmocka_unit_test(test_group_values),
		cmocka_unit_test(test_sharded),
		cmocka_unit_test(test_config_inferred),
		cmocka_unit_test(test_schnell),
		cmocka_unit_test(test_plain_list),
		cmocka_unit_test(test_parent_folder),
		cmocka_unit_test(test_prefix),
		cmocka_unit_test(test_missing),
		cmocka_unit_test(test_misshapen),
		cmocka_unit_test(test_config_mismatch),
		cmocka_unit_test(test_unexpected),
		cmocka_unit_test(test_dtypes),
		cmocka_unit_test(test_nan),
		cmocka_unit_test(test_plain_nan),
		cmocka_unit_test(test_open_errors),
		cmocka_unit_test(test_synth_deterministic),
		cmocka_unit_test(test_synth_weights),
		cmocka_unit_test(test_cond),
	};

	return cmocka_run_group_tests_name("model", tests, setup, teardown);
}
