/* Text conditioning against transformers: the T5 tokenizer (both the
 * tokenizer.json and the spiece.model form), the CLIP tokenizer and both
 * encoders, on the small seeded models and trained tokenizers of
 * tests/fixtures/text (made by tests/fixtures/gen_text_ref.py, with the
 * reference ids and outputs in tests/fixtures/text-ref.safetensors).
 *
 * Ids must be identical. Encoder outputs: relative error max|a − b| / max|b|
 * over each tensor ≤ 1e-3 (both sides compute in f32 on the same rounded
 * weights; the error seen is ~1e-6). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-st.h"
#include "fx-textenc.h"
#include "fx-tok-clip.h"
#include "fx-tok-t5.h"
#include "fx-tok-unicode.h"

#define REL_BUDGET 1e-3

struct fixture {
	struct fx_st *ref;
	json_t *prompts;
	int np, t5_len;
	char t5_dir[4096], clip_dir[4096], spiece[4096];
};

static struct fixture fix;

static const char *src_dir(void)
{
	const char *d = getenv("FX_TESTS_SRC");

	return d && *d ? d : "tests";
}

static const struct fx_tensor *ref(const char *name)
{
	const struct fx_tensor *t = fx_st_find(fix.ref, name);

	if (!t)
		fail_msg("reference tensor '%s' missing", name);
	return t;
}

static const char *prompt(int i)
{
	return json_string_value(json_array_get(fix.prompts, (size_t)i));
}

static int setup_group(void **state)
{
	struct fx_err err = {0};
	char path[4096];
	const char *meta;

	(void)state;
	snprintf(path, sizeof(path), "%s/fixtures/text-ref.safetensors", src_dir());
	if (fx_st_open(&fix.ref, path, &err) < 0) {
		fprintf(stderr, "cannot open the reference: %s\n", err.msg);
		return -1;
	}
	meta = fx_st_meta(fix.ref, "prompts");
	fix.prompts = meta ? json_loads(meta, 0, NULL) : NULL;
	if (!json_is_array(fix.prompts) || !fx_st_meta(fix.ref, "t5_len"))
		return -1;
	fix.np = (int)json_array_size(fix.prompts);
	fix.t5_len = atoi(fx_st_meta(fix.ref, "t5_len"));
	snprintf(fix.t5_dir, sizeof(fix.t5_dir), "%s/fixtures/text/t5", src_dir());
	snprintf(fix.clip_dir, sizeof(fix.clip_dir), "%s/fixtures/text/clip", src_dir());
	snprintf(fix.spiece, sizeof(fix.spiece), "%s/fixtures/text/t5/spiece.model", src_dir());
	return 0;
}

static int teardown_group(void **state)
{
	(void)state;
	json_decref(fix.prompts);
	fx_st_close(fix.ref);
	return 0;
}

/* Compares n ids of prompt i; prints both rows on a mismatch. */
static void check_ids(const char *what, int i, const int32_t *got, const int32_t *want, int n)
{
	int k;

	for (k = 0; k < n; k++)
		if (got[k] != want[k])
			break;
	if (k == n)
		return;
	fprintf(stderr, "%s ids differ at %d for prompt %d '%s':\n  got ", what, k, i, prompt(i));
	for (int j = 0; j < n; j++)
		fprintf(stderr, "%d ", got[j]);
	fprintf(stderr, "\n  want ");
	for (int j = 0; j < n; j++)
		fprintf(stderr, "%d ", want[j]);
	fprintf(stderr, "\n");
	fail_msg("%s ids of prompt %d differ", what, i);
}

static void t5_ids_against(const char *path, const char *refname, const char *ntokname)
{
	struct fx_tok_t5 *t = NULL;
	struct fx_err err = {0};
	const struct fx_tensor *want = ref(refname), *ntok = ref(ntokname);
	int32_t *ids = malloc((size_t)fix.t5_len * sizeof(int32_t));

	assert_int_equal(want->shape[0], fix.np);
	assert_int_equal(want->shape[1], fix.t5_len);
	if (fx_tok_t5_open(&t, path, &err) < 0)
		fail_msg("%s", err.msg);
	assert_int_equal(fx_tok_t5_eos(t), 1);
	assert_int_equal(fx_tok_t5_pad(t), 0);
	for (int i = 0; i < fix.np; i++) {
		int32_t *raw = NULL;
		size_t n = 0;
		int nt = 0;

		assert_int_equal(fx_tok_t5_encode(t, prompt(i), ids, fix.t5_len, &nt, &err), 0);
		check_ids(refname, i, ids, (const int32_t *)want->data + (size_t)i * fix.t5_len, fix.t5_len);
		assert_int_equal(fx_tok_t5_tokenize(t, prompt(i), &raw, &n, &err), 0);
		assert_int_equal((int)n, ((const int32_t *)ntok->data)[i]);
		assert_int_equal(nt, (int)n + 1 < fix.t5_len ? (int)n + 1 : fix.t5_len);
		free(raw);
	}
	free(ids);
	fx_tok_t5_free(t);
}

static void test_t5_tokenizer_json(void **state)
{
	(void)state;
	/* the folder: tokenizer.json is preferred over spiece.model */
	t5_ids_against(fix.t5_dir, "t5.ids", "t5.ntok");
}

static void test_t5_tokenizer_spiece(void **state)
{
	(void)state;
	t5_ids_against(fix.spiece, "t5.ids_spm", "t5.ntok_spm");
}

/* The fixture holds prompts that the two libraries normalize differently,
 * so that both normalizations are exercised. */
static void test_t5_forms_differ(void **state)
{
	const struct fx_tensor *a = ref("t5.ids"), *b = ref("t5.ids_spm");

	(void)state;
	assert_int_equal(a->nbytes, b->nbytes);
	assert_true(memcmp(a->data, b->data, a->nbytes) != 0);
}

static void test_clip_tokenizer(void **state)
{
	struct fx_tok_clip *t = NULL;
	struct fx_err err = {0};
	const struct fx_tensor *want = ref("clip.ids");
	int32_t ids[FX_CLIP_LEN];

	(void)state;
	assert_int_equal(want->shape[1], FX_CLIP_LEN);
	if (fx_tok_clip_open(&t, fix.clip_dir, &err) < 0)
		fail_msg("%s", err.msg);
	assert_int_equal(fx_tok_clip_pad(t), fx_tok_clip_eos(t));
	assert_int_equal(fx_tok_clip_bos(t) + 1, fx_tok_clip_eos(t));
	for (int i = 0; i < fix.np; i++) {
		int nt = 0;

		assert_int_equal(fx_tok_clip_encode(t, prompt(i), ids, FX_CLIP_LEN, &nt, &err), 0);
		check_ids("clip.ids", i, ids, (const int32_t *)want->data + (size_t)i * FX_CLIP_LEN,
			  FX_CLIP_LEN);
		assert_true(nt >= 2 && nt <= FX_CLIP_LEN);
	}
	fx_tok_clip_free(t);
}

static void test_truncation_and_padding(void **state)
{
	struct fx_tok_t5 *t5 = NULL;
	struct fx_tok_clip *cl = NULL;
	struct fx_err err = {0};
	int32_t ids[8];
	int nt;

	(void)state;
	assert_int_equal(fx_tok_t5_open(&t5, fix.t5_dir, &err), 0);
	assert_int_equal(fx_tok_clip_open(&cl, fix.clip_dir, &err), 0);
	/* length 1: only EOS; length 4 of a long prompt: 3 pieces + EOS */
	assert_int_equal(fx_tok_t5_encode(t5, "a photo of a cat", ids, 1, &nt, &err), 0);
	assert_int_equal(ids[0], 1);
	assert_int_equal(nt, 1);
	assert_int_equal(fx_tok_t5_encode(t5, "a photo of a cat on a red sofa", ids, 4, &nt, &err), 0);
	assert_int_equal(ids[3], 1);
	assert_int_equal(nt, 4);
	assert_int_equal(fx_tok_t5_encode(t5, "", ids, 8, &nt, &err), 0);
	assert_int_equal(ids[0], 1);
	assert_int_equal(ids[7], 0);
	assert_int_equal(nt, 1);
	assert_int_equal(fx_tok_t5_encode(t5, "x", ids, 0, &nt, &err), FX_E_ARG);
	/* CLIP: BOS ... EOS, pad = EOS */
	assert_int_equal(fx_tok_clip_encode(cl, "a photo of a cat on a red sofa", ids, 4, &nt, &err), 0);
	assert_int_equal(ids[0], fx_tok_clip_bos(cl));
	assert_int_equal(ids[3], fx_tok_clip_eos(cl));
	assert_int_equal(nt, 4);
	assert_int_equal(fx_tok_clip_encode(cl, "x", ids, 1, &nt, &err), FX_E_ARG);
	/* invalid UTF-8 is tokenized (as U+FFFD), not refused */
	assert_int_equal(fx_tok_t5_encode(t5, "bad \xff\xfe bytes \xc3", ids, 8, &nt, &err), 0);
	assert_int_equal(fx_tok_clip_encode(cl, "bad \xff\xfe bytes \xc3", ids, 8, &nt, &err), 0);
	fx_tok_t5_free(t5);
	fx_tok_clip_free(cl);
}

static void test_tokenizer_errors(void **state)
{
	struct fx_tok_t5 *t5 = NULL;
	struct fx_tok_clip *cl = NULL;
	struct fx_err err = {0};
	char path[8200];

	(void)state;
	assert_int_equal(fx_tok_t5_open(&t5, "/nonexistent/t5", &err), FX_E_IO);
	assert_null(t5);
	assert_int_equal(fx_tok_clip_open(&cl, "/nonexistent/clip", &err), FX_E_IO);
	assert_null(cl);
	/* a CLIP vocab.json is not a T5 tokenizer */
	snprintf(path, sizeof(path), "%s/vocab.json", fix.clip_dir);
	assert_int_equal(fx_tok_t5_open(&t5, path, &err), FX_E_UNSUPPORTED);
	assert_non_null(strstr(err.msg, "Unigram"));
	/* nor is a safetensors file a SentencePiece model */
	snprintf(path, sizeof(path), "%s/model.safetensors", fix.t5_dir);
	assert_true(fx_tok_t5_open(&t5, path, &err) < 0);
	assert_null(t5);
}

/* Special-token text against transformers (tests/fixtures/text-special-ref.json,
 * made by gen_text_special.py): every case's ids of FluxPipeline's call,
 * padding included, for the fixture tokenizers and their variants with
 * FLUX.1's <extra_id_N>, added-token flags, FLUX.1's CLIP configuration and
 * a pad token "!". */
static void test_special_tokens(void **state)
{
	struct fx_tok_t5 *t5 = NULL;
	struct fx_tok_clip *cl = NULL;
	char path[4096], cur[4096] = "";
	json_error_t je;
	json_t *root, *cases, *c;
	size_t i;
	int len, checked = 0;

	(void)state;
	snprintf(path, sizeof(path), "%s/fixtures/text-special-ref.json", src_dir());
	root = json_load_file(path, 0, &je);
	if (!root)
		fail_msg("'%s': %s", path, je.text);
	len = (int)json_integer_value(json_object_get(root, "len"));
	cases = json_object_get(root, "cases");
	assert_true(len >= 2 && json_array_size(cases) > 100);
	json_array_foreach(cases, i, c) {
		const char *kind = json_string_value(json_object_get(c, "kind"));
		const char *tok = json_string_value(json_object_get(c, "tokenizer"));
		const char *p = json_string_value(json_object_get(c, "prompt"));
		json_t *want = json_object_get(c, "ids");
		int32_t got[64], w[64];
		struct fx_err err = {0};
		char where[4096];
		int nt = 0, k;

		assert_true(kind && tok && p && (int)json_array_size(want) == len && len <= 64);
		for (k = 0; k < len; k++)
			w[k] = (int32_t)json_integer_value(json_array_get(want, (size_t)k));
		snprintf(where, sizeof(where), "%s/fixtures/%s", src_dir(), tok);
		if (strcmp(cur, where)) {   /* the cases come grouped by tokenizer */
			fx_tok_t5_free(t5);
			fx_tok_clip_free(cl);
			t5 = NULL;
			cl = NULL;
			if (!strcmp(kind, "t5") ? fx_tok_t5_open(&t5, where, &err) < 0 :
						  fx_tok_clip_open(&cl, where, &err) < 0)
				fail_msg("%s", err.msg);
			snprintf(cur, sizeof(cur), "%s", where);
		}
		if (t5)
			assert_int_equal(fx_tok_t5_encode(t5, p, got, len, &nt, &err), 0);
		else
			assert_int_equal(fx_tok_clip_encode(cl, p, got, len, &nt, &err), 0);
		for (k = 0; k < len && got[k] == w[k]; k++)
			;
		if (k < len) {
			fprintf(stderr, "%s '%s': ids differ at %d\n  got ", tok, p, k);
			for (int j = 0; j < len; j++)
				fprintf(stderr, "%d ", got[j]);
			fprintf(stderr, "\n  want ");
			for (int j = 0; j < len; j++)
				fprintf(stderr, "%d ", w[j]);
			fprintf(stderr, "\n");
			fail_msg("%s: ids of '%s' differ from transformers'", tok, p);
		}
		checked++;
	}
	printf("# %d special-token cases agree with transformers\n", checked);
	fx_tok_t5_free(t5);
	fx_tok_clip_free(cl);
	json_decref(root);
}

static void test_unicode(void **state)
{
	uint32_t cp, lo[2], in[4], out[12];
	char buf[4];

	(void)state;
	assert_int_equal(fx_utf8_decode("\xc3\xa9", 2, &cp), 2);
	assert_int_equal(cp, 0xE9);
	assert_int_equal(fx_utf8_decode("\xc0\x80", 2, &cp), 0);          /* overlong */
	assert_int_equal(fx_utf8_decode("\xed\xa0\x80", 3, &cp), 0);      /* surrogate */
	assert_int_equal(fx_utf8_decode("\xf0\x9f\x90", 3, &cp), 0);      /* truncated */
	assert_int_equal(fx_utf8_encode(0x1F431, buf), 4);
	assert_int_equal(fx_utf8_decode(buf, 4, &cp), 4);
	assert_int_equal(cp, 0x1F431);
	assert_true(fx_uni_is_letter(0xE9) && fx_uni_is_letter(0x6771) && !fx_uni_is_letter(0x1F431));
	assert_true(fx_uni_is_number(0x2460) && !fx_uni_is_number('x'));
	assert_true(fx_uni_is_space(0x3000) && !fx_uni_is_space(0x200B));
	assert_int_equal(fx_uni_lower(0xC9, lo), 1);
	assert_int_equal(lo[0], 0xE9);
	assert_int_equal(fx_uni_lower(0x130, lo), 2);
	assert_int_equal(fx_uni_lower(0x3A3, lo), 1);
	assert_int_equal(lo[0], 0x3C3);
	/* e + combining acute -> é; Hangul jamo -> syllable; Ångström sign -> Å */
	in[0] = 'e';
	in[1] = 0x301;
	in[2] = 0x1100;
	in[3] = 0x1161;
	assert_int_equal(fx_uni_nfc(out, in, 4), 2);
	assert_int_equal(out[0], 0xE9);
	assert_int_equal(out[1], 0xAC00);
	in[0] = 0x212B;
	assert_int_equal(fx_uni_nfc(out, in, 1), 1);
	assert_int_equal(out[0], 0xC5);
}

static void test_t5_buckets(void **state)
{
	const struct fx_tensor *b = ref("t5.buckets");
	const int32_t *v = b->data;

	(void)state;
	assert_int_equal(b->shape[0], 1201);
	for (int r = -600; r <= 600; r++) {
		int got = fx_t5_bucket(600, 600 + r, 32, 128);

		if (got != v[r + 600])
			fail_msg("bucket of relative position %d: %d, transformers %d", r, got, v[r + 600]);
	}
}

static double rel_err(const float *a, const float *b, size_t n)
{
	double md = 0, mb = 0;

	for (size_t i = 0; i < n; i++) {
		double d = fabs((double)a[i] - b[i]);

		if (!(d <= md))
			md = d;   /* NaN propagates */
		if (fabs((double)b[i]) > mb)
			mb = fabs((double)b[i]);
	}
	return mb > 0 ? md / mb : md;
}

static void test_t5_encoder(void **state)
{
	struct fx_t5 *m = NULL;
	struct fx_err err = {0};
	const struct fx_tensor *ids = ref("t5.ids"), *want = ref("t5.out");
	const struct fx_t5_config *c;
	float *out;
	double e;

	(void)state;
	if (fx_t5_open(&m, fix.t5_dir, &err) < 0)
		fail_msg("%s", err.msg);
	c = fx_t5_config(m);
	assert_int_equal(c->d_model, 64);
	assert_true(c->gated);
	assert_int_equal(want->shape[2], c->d_model);
	out = malloc((size_t)fx_tensor_numel(want) * sizeof(float));
	assert_non_null(out);
	if (fx_t5_encode(m, ids->data, fix.np, fix.t5_len, out, NULL, NULL, &err) < 0)
		fail_msg("%s", err.msg);
	e = rel_err(out, want->data, (size_t)fx_tensor_numel(want));
	printf("# T5 encoder: max relative error %.3g over %d prompts x %d tokens (budget %g)\n", e,
	       fix.np, fix.t5_len, REL_BUDGET);
	assert_true(e <= REL_BUDGET);
	/* one sequence at a time gives the same rows */
	if (fx_t5_encode(m, (const int32_t *)ids->data + 3 * fix.t5_len, 1, fix.t5_len, out, NULL, NULL,
			 &err) < 0)
		fail_msg("%s", err.msg);
	e = rel_err(out, (const float *)want->data + (size_t)3 * fix.t5_len * c->d_model,
		    (size_t)fix.t5_len * c->d_model);
	assert_true(e <= REL_BUDGET);
	/* ids outside the vocabulary are refused */
	{
		int32_t bad[4] = { 1, 2, 100000, 0 };

		assert_int_equal(fx_t5_encode(m, bad, 1, 4, out, NULL, NULL, &err), FX_E_ARG);
		assert_non_null(strstr(err.msg, "vocabulary"));
	}
	free(out);
	fx_t5_close(m);
}

static void test_clip_encoder(void **state)
{
	struct fx_clip *m = NULL;
	struct fx_err err = {0};
	const struct fx_tensor *ids = ref("clip.ids"), *want = ref("clip.pooled");
	float *pooled;
	double e;

	(void)state;
	if (fx_clip_open(&m, fix.clip_dir, &err) < 0)
		fail_msg("%s", err.msg);
	assert_int_equal(fx_clip_config(m)->hidden, want->shape[1]);
	pooled = malloc((size_t)fx_tensor_numel(want) * sizeof(float));
	assert_non_null(pooled);
	if (fx_clip_encode(m, ids->data, fix.np, FX_CLIP_LEN, pooled, NULL, NULL, NULL, &err) < 0)
		fail_msg("%s", err.msg);
	e = rel_err(pooled, want->data, (size_t)fx_tensor_numel(want));
	printf("# CLIP text model: pooled max relative error %.3g over %d prompts (budget %g)\n", e, fix.np,
	       REL_BUDGET);
	assert_true(e <= REL_BUDGET);
	assert_int_equal(fx_clip_encode(m, ids->data, 1, FX_CLIP_LEN + 1, pooled, NULL, NULL, NULL, &err),
			 FX_E_ARG);
	free(pooled);
	fx_clip_close(m);
}

/* The GPU path (CUDA=1 builds on a machine with a GPU) against transformers
 * with the same budget, and the CLIP hidden states against the CPU's; a
 * build without CUDA refuses the device. */
static void test_encoders_cuda(void **state)
{
	struct fx_device dev = { .kind = FX_DEV_CUDA, .index = 0, .desc = "cuda:0" };
	const struct fx_tensor *ids5 = ref("t5.ids"), *want5 = ref("t5.out");
	const struct fx_tensor *idsc = ref("clip.ids"), *wantc = ref("clip.pooled");
	struct fx_t5 *t5 = NULL;
	struct fx_clip *cl = NULL;
	struct fx_err err = {0};
	float *out, *pooled, *hid, *hid_cpu;
	size_t nh;
	double e;

	(void)state;
	if (fx_t5_open(&t5, fix.t5_dir, &err) < 0 || fx_clip_open(&cl, fix.clip_dir, &err) < 0)
		fail_msg("%s", err.msg);
	if (!fx_cuda_built()) {
		assert_int_equal(fx_t5_set_device(t5, &dev, &err), FX_E_UNSUPPORTED);
		assert_non_null(strstr(err.msg, "CUDA=1"));
		assert_int_equal(fx_clip_set_device(cl, &dev, &err), FX_E_UNSUPPORTED);
		fx_t5_close(t5);
		fx_clip_close(cl);
		return;
	}
	if (fx_cuda_device_count() < 1) {
		/* passes: tests/run.sh counts cmocka's "not ok # SKIP" as a failure */
		printf("# skip: CUDA build without a GPU\n");
		fx_t5_close(t5);
		fx_clip_close(cl);
		return;
	}
	out = malloc((size_t)fx_tensor_numel(want5) * sizeof(float));
	pooled = malloc((size_t)fx_tensor_numel(wantc) * sizeof(float));
	nh = (size_t)fix.np * FX_CLIP_LEN * (size_t)fx_clip_config(cl)->hidden;
	hid = malloc(nh * sizeof(float));
	hid_cpu = malloc(nh * sizeof(float));
	assert_true(out && pooled && hid && hid_cpu);
	if (fx_clip_encode(cl, idsc->data, fix.np, FX_CLIP_LEN, pooled, hid_cpu, NULL, NULL, &err) < 0 ||
	    fx_t5_set_device(t5, &dev, &err) < 0 || fx_clip_set_device(cl, &dev, &err) < 0 ||
	    fx_t5_encode(t5, ids5->data, fix.np, fix.t5_len, out, NULL, NULL, &err) < 0 ||
	    fx_clip_encode(cl, idsc->data, fix.np, FX_CLIP_LEN, pooled, hid, NULL, NULL, &err) < 0)
		fail_msg("%s", err.msg);
	e = rel_err(out, want5->data, (size_t)fx_tensor_numel(want5));
	printf("# T5 encoder on cuda:0: max relative error %.3g (budget %g)\n", e, REL_BUDGET);
	assert_true(e <= REL_BUDGET);
	e = rel_err(pooled, wantc->data, (size_t)fx_tensor_numel(wantc));
	printf("# CLIP text model on cuda:0: pooled max relative error %.3g (budget %g)\n", e, REL_BUDGET);
	assert_true(e <= REL_BUDGET);
	e = rel_err(hid, hid_cpu, nh);
	printf("# CLIP hidden states, cuda:0 vs cpu: max relative error %.3g\n", e);
	assert_true(e <= REL_BUDGET);
	free(out);
	free(pooled);
	free(hid);
	free(hid_cpu);
	fx_t5_close(t5);
	fx_clip_close(cl);
}

static void test_encoder_errors(void **state)
{
	struct fx_t5 *t5 = NULL;
	struct fx_clip *cl = NULL;
	struct fx_err err = {0};

	(void)state;
	assert_true(fx_t5_open(&t5, "/nonexistent/t5", &err) < 0);
	assert_null(t5);
	/* a CLIP folder is not a T5 encoder, and the other way round */
	assert_int_equal(fx_t5_open(&t5, fix.clip_dir, &err), FX_E_FORMAT);
	assert_null(t5);
	assert_int_equal(fx_clip_open(&cl, fix.t5_dir, &err), FX_E_FORMAT);
	assert_null(cl);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_unicode),
		cmocka_unit_test(test_t5_tokenizer_json),
		cmocka_unit_test(test_t5_tokenizer_spiece),
		cmocka_unit_test(test_t5_forms_differ),
		cmocka_unit_test(test_clip_tokenizer),
		cmocka_unit_test(test_truncation_and_padding),
		cmocka_unit_test(test_special_tokens),
		cmocka_unit_test(test_tokenizer_errors),
		cmocka_unit_test(test_t5_buckets),
		cmocka_unit_test(test_t5_encoder),
		cmocka_unit_test(test_clip_encoder),
		cmocka_unit_test(test_encoders_cuda),
		cmocka_unit_test(test_encoder_errors),
	};

	return cmocka_run_group_tests_name("encode", tests, setup_group, teardown_group);
}
