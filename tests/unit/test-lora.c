/* --lora: the merged values fx's loader gives against diffusers'
 * load_lora_weights + fuse_lora (tests/fixtures/lora, made by
 * tests/fixtures/gen_lora_ref.py), tensor by tensor, for every LoRA naming
 * and dtype, on the diffusers and the BFL layout of the tiny model; the
 * BF16 readers round the merged f32 once; the raw BF16 fast path is off
 * for merged groups; --lora argument parsing. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <float.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-lora.h"
#include "fx-model.h"
#include "fx-st.h"
#include "fx-tensor.h"

static const char *src_dir(void)
{
	const char *d = getenv("FX_TESTS_SRC");

	return d && *d ? d : "tests";
}

struct agree {
	double max_abs;      /* max |fx - diffusers| */
	double max_rel;      /* the same over FLT_EPSILON · max |reference| of its tensor */
	size_t n;
};

/* fx's values got against want (F32 reference, or the model without
 * LoRA), rows × n apart by the strides. Agreement within f32 rounding: the
 * two sum B·A in different orders, so the bound is a few units of f32
 * rounding at the size of the tensor's values. */
static void compare(struct agree *ag, const char *what, const float *got, const float *want,
		    size_t n, size_t stride_got, size_t stride_want, size_t rows)
{
	double amax = 1.0 / 64;

	for (size_t r = 0; r < rows; r++)
		for (size_t c = 0; c < n; c++)
			if (fabs((double)want[r * stride_want + c]) > amax)
				amax = fabs((double)want[r * stride_want + c]);
	for (size_t r = 0; r < rows; r++)
		for (size_t c = 0; c < n; c++) {
			float g = got[r * stride_got + c], w = want[r * stride_want + c];
			double d = fabs((double)g - (double)w), u = d / (FLT_EPSILON * amax);

			if (!(u <= 4.0))
				fail_msg("%s [%zu,%zu]: fx %.9g, diffusers %.9g (%.2f eps of max %.3g)", what,
					 r, c, (double)g, (double)w, u, amax);
			if (d > ag->max_abs)
				ag->max_abs = d;
			if (u > ag->max_rel)
				ag->max_rel = u;
			ag->n++;
		}
}

static float *tensor_f32(const struct fx_tensor *t)
{
	size_t n = (size_t)fx_tensor_numel(t);
	float *v = malloc(n * sizeof(float) + 1);

	assert_non_null(v);
	assert_int_equal(fx_to_f32(v, t->data, t->dtype, n), 0);
	return v;
}

/* The reference of diffusers tensor name under case, or NULL (unchanged). */
static const struct fx_tensor *ref_of(const struct fx_st *ref, const char *cas, const char *name)
{
	char k[256];

	snprintf(k, sizeof(k), "%s/%s", cas, name);
	return fx_st_find(ref, k);
}

static void check_case(const struct fx_st *ref, const char *cas, json_t *spec, const char *model,
		       struct agree *ag)
{
	json_t *files = json_array_get(spec, 0), *scales = json_array_get(spec, 1);
	struct fx_loras l;
	struct fx_model *m0 = NULL, *m1 = NULL;
	struct fx_err err = {0};
	char path[4096];
	size_t i, touched = 0;

	memset(&l, 0, sizeof(l));
	for (i = 0; i < json_array_size(files); i++) {
		char arg[4200];

		snprintf(arg, sizeof(arg), "%s/fixtures/lora/%s:%.17g", src_dir(),
			 json_string_value(json_array_get(files, i)),
			 json_number_value(json_array_get(scales, i)));
		if (fx_loras_add(&l, arg, &err) < 0)
			fail_msg("%s", err.msg);
	}
	snprintf(path, sizeof(path), "%s/fixtures/%s", src_dir(), model);
	if (fx_model_open(&m0, path, &err) < 0 || fx_model_open_loras(&m1, path, &l, &err) < 0)
		fail_msg("%s: %s", cas, err.msg);
	/* the kept (plain) tensors: x_embedder, norm_out (BFL: halves swapped) ... */
	for (i = 0; i < fx_model_nplain(m1); i++) {
		const char *name = fx_model_plain_name(m1, i);
		const struct fx_tensor *t = fx_model_plain(m1, name), *rt = ref_of(ref, cas, name);
		size_t n = (size_t)fx_tensor_numel(t);
		float *got = malloc(n * sizeof(float)), *want = rt ? tensor_f32(rt) : malloc(n * sizeof(float));
		uint16_t *h = malloc(n * 2);
		char what[300];

		assert_non_null(got);
		assert_non_null(h);
		assert_int_equal(fx_model_plain_f32(m1, name, got, &err), 0);
		if (!rt)
			assert_int_equal(fx_model_plain_f32(m0, name, want, &err), 0);
		else
			touched++;
		snprintf(what, sizeof(what), "%s %s %s", cas, model, name);
		compare(ag, what, got, want, n, 0, 0, 1);
		/* BF16 readers: the merged sum rounded once */
		assert_int_equal(fx_model_plain_bf16(m1, name, h, &err), 0);
		for (size_t k = 0; k < n; k++)
			if (h[k] != fx_f32_to_bf16(got[k]))
				fail_msg("%s: BF16 value %zu is 0x%04x, the merged f32 rounds to 0x%04x", what,
					 k, h[k], fx_f32_to_bf16(got[k]));
		free(got);
		free(want);
		free(h);
	}
	/* the fused groups, member by member against the diffusers tensors */
	for (i = 0; i < fx_model_ngroups(m1); i++) {
		const struct fx_group *g = fx_model_group(m1, i);
		size_t nk = (size_t)(g->n * g->k);
		float *w = malloc(nk * sizeof(float)), *b = malloc((size_t)g->n * sizeof(float));
		float *w0 = malloc(nk * sizeof(float)), *b0 = malloc((size_t)g->n * sizeof(float));
		uint16_t *h = malloc(nk * 2);
		bool merged = false;

		assert_non_null(w);
		assert_non_null(h);
		assert_int_equal(fx_model_group_f32(m1, g, w, b, &err), 0);
		assert_int_equal(fx_model_group_f32(m0, fx_model_group(m0, i), w0, b0, &err), 0);
		for (int j = 0; j < g->nmembers; j++) {
			const struct fx_member *mb = &g->members[j];
			char nm[200], what[300];
			const struct fx_tensor *rt;

			snprintf(nm, sizeof(nm), "%s.weight", mb->name);
			snprintf(what, sizeof(what), "%s %s %s", cas, model, nm);
			rt = ref_of(ref, cas, nm);
			if (rt) {
				float *want = tensor_f32(rt);

				merged = true;
				touched++;
				assert_int_equal(rt->shape[0], mb->nrows);
				compare(ag, what, w + mb->out_row0 * g->k, want + mb->col0, (size_t)g->k,
					(size_t)g->k, (size_t)rt->shape[1], (size_t)mb->nrows);
				free(want);
			} else {
				compare(ag, what, w + mb->out_row0 * g->k, w0 + mb->out_row0 * g->k,
					(size_t)g->k, (size_t)g->k, (size_t)g->k, (size_t)mb->nrows);
			}
			if (!mb->bias)
				continue;
			snprintf(nm, sizeof(nm), "%s.bias", mb->name);
			snprintf(what, sizeof(what), "%s %s %s", cas, model, nm);
			rt = ref_of(ref, cas, nm);
			if (rt) {
				float *want = tensor_f32(rt);

				merged = true;
				compare(ag, what, b + mb->out_row0, want, (size_t)mb->nrows, 0, 0, 1);
				free(want);
			} else {
				compare(ag, what, b + mb->out_row0, b0 + mb->out_row0, (size_t)mb->nrows, 0, 0, 1);
			}
		}
		/* the loader's own flag: the raw BF16 GEMV path is off exactly there */
		assert_int_equal(fx_model_group_merged(m1, g), merged);
		assert_int_equal(g->lora[0] != '\0', merged);
		assert_int_equal(fx_model_group_bf16(m1, g, h, b, &err), 0);
		for (size_t k = 0; k < nk; k++)
			if (h[k] != fx_f32_to_bf16(w[k]))
				fail_msg("%s %s: BF16 weight %zu is 0x%04x, the merged f32 rounds to 0x%04x",
					 cas, g->name, k, h[k], fx_f32_to_bf16(w[k]));
		/* row reads (fx-quant's streaming, adaLN permutations) give the same rows */
		for (int64_t r0 = 0; r0 < g->n; r0 += 37) {
			int64_t nr = g->n - r0 < 37 ? g->n - r0 : 37, rows[2] = { r0, g->n - 1 - r0 };

			assert_int_equal(fx_model_group_rows_f32(m1, g, r0, nr, NULL, w0, &err), 0);
			assert_memory_equal(w0, w + r0 * g->k, (size_t)(nr * g->k) * sizeof(float));
			assert_int_equal(fx_model_group_rows_f32(m1, g, 0, 2, rows, w0, &err), 0);
			assert_memory_equal(w0, w + rows[0] * g->k, (size_t)g->k * sizeof(float));
			assert_memory_equal(w0 + g->k, w + rows[1] * g->k, (size_t)g->k * sizeof(float));
		}
		free(w);
		free(b);
		free(w0);
		free(b0);
		free(h);
	}
	if (!touched)
		fail_msg("%s: the reference changes no tensor", cas);
	fx_model_close(m0);
	fx_model_close(m1);
}

static void test_against_diffusers(void **state)
{
	static const char *const models[] = { "flux-tiny", "flux-tiny-bfl.safetensors" };
	struct fx_st *ref = NULL;
	struct fx_err err = {0};
	char path[4096];
	json_t *cases;
	const char *cas;
	json_t *spec;

	(void)state;
	snprintf(path, sizeof(path), "%s/fixtures/lora/lora-ref.safetensors", src_dir());
	if (fx_st_open(&ref, path, &err) < 0)
		fail_msg("%s", err.msg);
	cases = json_loads(fx_st_meta(ref, "cases"), 0, NULL);
	assert_non_null(cases);
	assert_true(json_object_size(cases) >= 9);
	json_object_foreach(cases, cas, spec) {
		for (size_t k = 0; k < 2; k++) {
			struct agree ag = { 0 };

			check_case(ref, cas, spec, models[k], &ag);
			print_message("# %-18s %-26s %7zu values, max |fx - diffusers| %.3g = %.2f eps x max|w|\n",
				      cas, models[k], ag.n, ag.max_abs, ag.max_rel);
		}
	}
	json_decref(cases);
	fx_st_close(ref);
}

static void test_lora_args(void **state)
{
	struct fx_loras l;
	struct fx_err err = {0};

	(void)state;
	memset(&l, 0, sizeof(l));
	assert_int_equal(fx_loras_add(&l, "a.safetensors:0.8", &err), 0);
	assert_int_equal(fx_loras_add(&l, "dir:x/b.safetensors", &err), 0);
	assert_int_equal(fx_loras_add(&l, "c.safetensors:-1e-1", &err), 0);
	assert_int_equal(fx_loras_add(&l, "d.safetensors:", &err), 0);
	assert_string_equal(l.v[0].path, "a.safetensors");
	assert_true(l.v[0].scale == 0.8);
	assert_string_equal(l.v[1].path, "dir:x/b.safetensors");
	assert_true(l.v[1].scale == 1.0);
	assert_true(l.v[2].scale == -0.1);
	assert_string_equal(l.v[3].path, "d.safetensors:");
	assert_int_equal(fx_loras_add(&l, ":0.5", &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "FILE[:SCALE]"));
	assert_int_equal(fx_loras_add(&l, "e.safetensors:inf", &err), 0);   /* a name, not a scale */
	assert_string_equal(l.v[4].path, "e.safetensors:inf");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_lora_args),
		cmocka_unit_test(test_against_diffusers),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
