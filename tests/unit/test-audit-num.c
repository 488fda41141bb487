/* fx-verify's audit against the inputs: numerics of packed checkpoints (W_eff
 * and output SNR against the source), provenance of the input chain, the
 * groups of intermediates, and fx-eval (sampler PSNR, per-step, per-layer,
 * the PNG). One synthetic model and its chain, made once. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zlib.h>

#include "fx-log.h"
#include "fx-audit-model.h"
#include "fx-audit-prov.h"
#include "fx-audit.h"
#include "fx-calibrate.h"
#include "fx-eval.h"
#include "fx-search.h"
#include "fx-model.h"
#include "fx-packfile.h"
#include "fx-quantize.h"
#include "fx-st.h"
#include "fx-stage.h"
#include "fx-synth.h"

static char tmpdir[256];

static char *tpath(const char *name)
{
	static char buf[16][512];
	static int k;

	k = (k + 1) % 16;
	snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
	return buf[k];
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb; (void)flag; (void)ftw;
	return remove(p);
}

/* ---- the chain ---------------------------------------------------------- */

static int synth(const char *name, int hidden, uint64_t seed)
{
	struct fx_synth_opts o;
	struct fx_err err = {0};

	fx_synth_opts_init(&o);
	o.hidden = hidden;
	o.seed = seed;
	o.txt_dim = 256;
	if (fx_synth_model(tpath(name), &o, &err) < 0) {
		fprintf(stderr, "synth: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int calib(const char *name, uint64_t seed)
{
	struct fx_calibrate_opts o = {0};
	struct fx_err err = {0};
	bool utd;

	o.model = tpath("m");
	o.cond = tpath("cond.safetensors");
	o.output = tpath(name);
	o.steps = 1;
	o.width = o.height = 128;
	o.guidance = -1;
	o.seed = seed;
	o.samples = 64;
	o.first_block = o.last_block = -1;
	if (fx_calibrate_run(&o, &utd, NULL, &err) < 0) {
		fprintf(stderr, "calib: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int branch(const char *name, const char *cal)
{
	struct fx_lowrank_stage_opts o;
	struct fx_err err = {0};
	bool utd;

	fx_lowrank_stage_opts_init(&o);
	o.model = tpath("m");
	o.calib = tpath(cal);
	o.output = tpath(name);
	o.rank = 32;
	o.precision = "int4";
	o.grid = 2;
	o.iters = 0;
	if (fx_lowrank_run(&o, &utd, NULL, &err) < 0) {
		fprintf(stderr, "lowrank: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int quant(const char *name, const char *br, const char *prec, int first, int last)
{
	struct fx_quantize_opts o = {0};
	struct fx_err err = {0};
	bool utd;

	o.model = tpath("m");
	o.branch = br ? tpath(br) : NULL;
	o.precision = prec;
	o.first_block = first;
	o.last_block = last;
	o.output = tpath(name);
	if (fx_quantize_run(&o, &utd, NULL, &err) < 0) {
		fprintf(stderr, "quant: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int pack(const char *name, const char *q, const char *br)
{
	struct fx_packfile_opts o = {0};
	struct fx_err err = {0};
	bool utd;

	o.model = tpath("m");
	o.quant[o.nquant++] = tpath(q);
	if (br)
		o.branch[o.nbranch++] = tpath(br);
	o.output = tpath(name);
	if (fx_packfile_run(&o, &utd, NULL, &err) < 0) {
		fprintf(stderr, "pack: %s\n", err.msg);
		return -1;
	}
	return 0;
}

static int setup(void **state)
{
	struct fx_synth_cond_opts co;
	struct fx_err err = {0};

	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/fx-test-audit-num.XXXXXX");
	if (!mkdtemp(tmpdir))
		return -1;
	fx_synth_cond_opts_init(&co);
	co.prompts = 2;
	co.txt_len = 16;
	co.txt_dim = 256;
	if (synth("m", 256, 1) || synth("other", 256, 9) || synth("big", 384, 1) ||
	    fx_synth_cond(tpath("cond.safetensors"), &co, &err) < 0 ||
	    calib("calib.safetensors", 0) || calib("calib2.safetensors", 5) ||
	    branch("branch.safetensors", "calib.safetensors") ||
	    quant("q.safetensors", "branch.safetensors", "int4", -1, -1) ||
	    quant("rq.safetensors", NULL, "int4", -1, -1) ||
	    quant("fq.safetensors", NULL, "fp4", -1, -1) ||
	    quant("q01.safetensors", NULL, "int4", 0, 1) ||
	    pack("svdq.safetensors", "q.safetensors", "branch.safetensors") ||
	    pack("rtn.safetensors", "rq.safetensors", NULL) ||
	    pack("fp4.safetensors", "fq.safetensors", NULL))
		return -1;
	return 0;
}

static int teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

/* ---- helpers ------------------------------------------------------------ */

/* Copy of a safetensors file without the tensors whose names start with
 * drop (NULL: none), data compacted; with swap, the two halves of that
 * tensor's bytes exchanged. */
static void rewrite(const char *src, const char *dst, const char *drop, const char *swap)
{
	FILE *f = fopen(src, "rb");
	long size;
	uint8_t *raw, *out;
	uint64_t hn, at = 0;
	json_t *hdr, *v, *keep = json_object();
	const char *k;
	char *h;
	size_t hl, pad, i, nk = 0;
	const char **names;

	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	fseek(f, 0, SEEK_SET);
	raw = malloc(size);
	out = malloc(size);
	assert_int_equal(fread(raw, 1, size, f), (size_t)size);
	fclose(f);
	memcpy(&hn, raw, 8);
	hdr = json_loadb((const char *)raw + 8, hn, 0, NULL);
	assert_non_null(hdr);
	names = calloc(json_object_size(hdr), sizeof(*names));
	json_object_foreach(hdr, k, v)
		if (strcmp(k, "__metadata__") && !(drop && !strncmp(k, drop, strlen(drop))))
			names[nk++] = k;
	/* in data order */
	for (i = 0; i < nk; i++)
		for (size_t j = i + 1; j < nk; j++) {
			json_int_t a = json_integer_value(json_array_get(json_object_get(json_object_get(hdr, names[i]), "data_offsets"), 0));
			json_int_t b = json_integer_value(json_array_get(json_object_get(json_object_get(hdr, names[j]), "data_offsets"), 0));

			if (b < a) {
				const char *t = names[i];

				names[i] = names[j];
				names[j] = t;
			}
		}
	for (i = 0; i < nk; i++) {
		json_t *t = json_deep_copy(json_object_get(hdr, names[i])), *off = json_object_get(t, "data_offsets");
		uint64_t b = (uint64_t)json_integer_value(json_array_get(off, 0));
		uint64_t e = (uint64_t)json_integer_value(json_array_get(off, 1));
		const uint8_t *d = raw + 8 + hn + b;

		if (swap && !strcmp(names[i], swap)) {
			uint64_t half = (e - b) / 2;

			memcpy(out + at, d + half, half);
			memcpy(out + at + half, d, half);
		} else {
			memcpy(out + at, d, e - b);
		}
		json_object_set_new(t, "data_offsets", json_pack("[I, I]", (json_int_t)at, (json_int_t)(at + e - b)));
		json_object_set_new(keep, names[i], t);
		at += e - b;
	}
	if (json_object_get(hdr, "__metadata__"))
		json_object_set(keep, "__metadata__", json_object_get(hdr, "__metadata__"));
	h = json_dumps(keep, JSON_COMPACT);
	hl = strlen(h);
	pad = (8 - hl % 8) % 8;
	hn = hl + pad;
	f = fopen(dst, "wb");
	assert_non_null(f);
	fwrite(&hn, 8, 1, f);
	fwrite(h, 1, hl, f);
	fwrite("        ", 1, pad, f);
	fwrite(out, 1, at, f);
	fclose(f);
	free(h);
	free(names);
	json_decref(keep);
	json_decref(hdr);
	free(raw);
	free(out);
}

static size_t lines_with(const struct fx_audit *a, const char *s)
{
	size_t i, n = 0;

	for (i = 0; i < a->lines_n; i++)
		n += strstr(a->lines[i], s) != NULL;
	return n;
}

/* Findings of a check whose message (or where) holds s. */
static size_t found(const struct fx_audit *a, const char *check, const char *s)
{
	size_t i, n = 0;

	for (i = 0; i < a->nfind; i++)
		n += !strcmp(a->find[i].check, check) &&
		     (strstr(a->find[i].msg, s) || strstr(a->find[i].where, s));
	return n;
}

/* The audit as TAP comments, with FX_TEST_VERBOSE set. */
static void dump(const struct fx_audit *a)
{
	size_t i;

	if (!getenv("FX_TEST_VERBOSE"))
		return;
	for (i = 0; i < a->lines_n; i++)
		print_message("# %s\n", a->lines[i]);
	for (i = 0; i < a->nfind; i++)
		print_message("# %s %s %s: %s\n", fx_severity_name(a->find[i].sev), a->find[i].check,
			      a->find[i].where, a->find[i].msg);
}

/* Numerics of one file: returns the audit (caller releases). */
static void numerics(struct fx_audit *a, const char *file, const char *cal)
{
	struct fx_audit_opts o = { .model = tpath("m"), .calib = cal ? tpath(cal) : NULL };
	struct fx_st *st = NULL;
	struct fx_err err = {0};

	fx_audit_init(a);
	assert_int_equal(fx_st_open(&st, file, &err), 0);
	if (fx_audit_numerics(a, st, &o, &err) < 0)
		fail_msg("numerics: %s", err.msg);
	fx_st_close(st);
	dump(a);
}

/* The [NUM] lines' weight errors, in order; returns how many. */
static size_t num_errors(const struct fx_audit *a, double *e, size_t cap)
{
	size_t i, n = 0;

	for (i = 0; i < a->lines_n && n < cap; i++) {
		const char *w = strstr(a->lines[i], " weight ");

		if (!strncmp(a->lines[i], "[NUM] ", 6) && w)
			e[n++] = strtod(w + 8, NULL);
	}
	return n;
}

/* ---- numerics ----------------------------------------------------------- */

static void test_numerics_good(void **state)
{
	const char *files[] = { "svdq.safetensors", "rtn.safetensors", "fp4.safetensors" };
	double e[64], mean[3];
	struct fx_audit a;
	size_t f, i, n;

	(void)state;
	for (f = 0; f < 3; f++) {
		numerics(&a, tpath(files[f]), NULL);
		assert_int_equal(a.nfind, 0);
		assert_int_equal(lines_with(&a, "numerics against"), 1);
		/* 2 double blocks x 10 modules + 2 single x 5 */
		n = num_errors(&a, e, 64);
		assert_int_equal(n, 30);
		for (i = 0, mean[f] = 0; i < n; i++) {
			assert_true(e[i] >= 0 && e[i] < FX_AUDIT_MAX_WEIGHT_ERR);
			if (i)
				assert_true(e[i] <= e[i - 1]);   /* worst first */
			mean[f] += e[i] / n;
		}
		fx_audit_release(&a);
	}
	print_message("# mean weight error: svdq %.4f, rtn %.4f, fp4 %.4f\n", mean[0], mean[1], mean[2]);
	/* the branch takes the outliers: W_eff is closer to W than with RTN */
	assert_true(mean[0] < mean[1]);
}

static void test_numerics_snr(void **state)
{
	struct fx_audit a;
	size_t i, n = 0;
	double svdq = 0, rtn = 0;

	(void)state;
	numerics(&a, tpath("svdq.safetensors"), "calib.safetensors");
	for (i = 0; i < a.lines_n; i++) {
		const char *s = strstr(a.lines[i], " SNR ");

		if (s && !strncmp(a.lines[i], "[NUM] ", 6)) {
			svdq += strtod(s + 5, NULL);
			n++;
		}
	}
	assert_int_equal(n, 24);   /* the W4A4 modules */
	fx_audit_release(&a);
	numerics(&a, tpath("rtn.safetensors"), "calib.safetensors");
	for (i = 0; i < a.lines_n; i++)
		if (strstr(a.lines[i], " SNR ") && !strncmp(a.lines[i], "[NUM] ", 6))
			rtn += strtod(strstr(a.lines[i], " SNR ") + 5, NULL);
	fx_audit_release(&a);
	print_message("# mean output SNR: svdq %.1f dB, rtn %.1f dB\n", svdq / n, rtn / n);
	assert_true(svdq / n > rtn / n + 3);
}

/* Per-precision bounds on the fx-synth model (hidden 256, outlier
 * channels; documented in fx-quant(1), NUMERICS). Relative weight error
 * ||W_eff - W|| / ||W|| of every module, worst and mean, and the output SNR
 * of the W4A4 modules on the calibration rows (worst):
 *                       worst   mean    worst SNR   (measured)
 *   INT4 SVDQuant r32   < 0.30  < 0.13  > 20 dB     (0.256, 0.109, 23.3)
 *   INT4 RTN            < 0.28  < 0.23  > 2 dB      (0.239, 0.207, 3.9)
 *   NVFP4 RTN           < 0.25  < 0.13  > 10 dB
 * and, on the same weights, NVFP4 < INT4 < a naive per-tensor INT4
 * (scale max|W|/7) in mean error. */
struct prec_stats {
	double worst, mean, worst_snr;
	size_t n, nsnr;
};

static struct prec_stats prec_stats(const char *file, const char *cal)
{
	struct prec_stats p = { .worst_snr = INFINITY };
	struct fx_audit a;

	numerics(&a, tpath(file), cal);
	for (size_t i = 0; i < a.lines_n; i++) {
		const char *w = strstr(a.lines[i], " weight "), *s = strstr(a.lines[i], " SNR ");

		if (strncmp(a.lines[i], "[NUM] ", 6))
			continue;
		if (w) {
			double e = strtod(w + 8, NULL);

			p.worst = e > p.worst ? e : p.worst;
			p.mean += e;
			p.n++;
		}
		if (s) {
			double v = strtod(s + 5, NULL);

			p.worst_snr = v < p.worst_snr ? v : p.worst_snr;
			p.nsnr++;
		}
	}
	fx_audit_release(&a);
	p.mean /= p.n ? (double)p.n : 1.0;
	print_message("# %s: worst weight error %.4f, mean %.4f, worst SNR %.1f dB (%zu modules)\n",
		      file, p.worst, p.mean, p.worst_snr, p.nsnr);
	return p;
}

/* Mean over the groups of the naive per-tensor INT4 error of the source. */
static double naive_int4_mean(void)
{
	struct fx_model *m = NULL;
	struct fx_err err = {0};
	double sum = 0.0;
	size_t n;

	assert_int_equal(fx_model_open(&m, tpath("m"), &err), 0);
	n = fx_model_ngroups(m);
	for (size_t i = 0; i < n; i++) {
		const struct fx_group *g = fx_model_group(m, i);
		size_t len = (size_t)(g->n * g->k);
		float *w = malloc(len * sizeof(float));
		double amax = 0.0, num = 0.0, den = 0.0, sc;

		assert_non_null(w);
		assert_int_equal(fx_model_group_f32(m, g, w, NULL, &err), 0);
		for (size_t j = 0; j < len; j++)
			amax = fabs(w[j]) > amax ? fabs(w[j]) : amax;
		sc = amax / 7.0;
		for (size_t j = 0; j < len; j++) {
			double q = sc > 0 ? nearbyint(w[j] / sc) : 0.0;

			q = q < -8 ? -8 : q > 7 ? 7 : q;
			num += (w[j] - q * sc) * (w[j] - q * sc);
			den += (double)w[j] * w[j];
		}
		sum += den > 0 ? sqrt(num / den) : 0.0;
		free(w);
	}
	fx_model_close(m);
	print_message("# naive per-tensor INT4: mean weight error %.4f\n", sum / (double)n);
	return sum / (double)n;
}

static void test_numerics_precision_bounds(void **state)
{
	struct prec_stats svdq, rtn, fp4;
	double naive;

	(void)state;
	svdq = prec_stats("svdq.safetensors", "calib.safetensors");
	rtn = prec_stats("rtn.safetensors", "calib.safetensors");
	fp4 = prec_stats("fp4.safetensors", "calib.safetensors");
	naive = naive_int4_mean();
	assert_int_equal(svdq.n, 30);
	assert_int_equal(svdq.nsnr, 24);
	assert_int_equal(rtn.nsnr, 24);
	assert_int_equal(fp4.nsnr, 24);
	assert_true(svdq.worst < 0.30 && svdq.mean < 0.13 && svdq.worst_snr > 20.0);
	assert_true(rtn.worst < 0.28 && rtn.mean < 0.23 && rtn.worst_snr > 2.0);
	assert_true(fp4.worst < 0.25 && fp4.mean < 0.13 && fp4.worst_snr > 10.0);
	assert_true(fp4.mean < rtn.mean);
	assert_true(rtn.mean < naive);
}

static void test_numerics_broken_layout(void **state)
{
	struct fx_audit a;

	(void)state;
	rewrite(tpath("svdq.safetensors"), tpath("swapped.safetensors"), NULL,
		"transformer_blocks.1.mlp_fc1.qweight");
	numerics(&a, tpath("swapped.safetensors"), NULL);
	assert_int_equal(found(&a, "numerics", "mlp_fc1 (block 1)"), 1);
	assert_int_equal(found(&a, "numerics", "does not reproduce the source layer"), 1);
	assert_int_equal(fx_audit_failures(&a, false), 1);
	fx_audit_release(&a);
	/* a missing module is left to the completeness audit */
	rewrite(tpath("svdq.safetensors"), tpath("nolora.safetensors"), "transformer_blocks.0.qkv_proj.lora",
		NULL);
	numerics(&a, tpath("nolora.safetensors"), NULL);
	assert_int_equal(a.nfind, 0);
	assert_int_equal(lines_with(&a, "numerics against"), 1);
	assert_int_equal(lines_with(&a, "29 layers"), 1);
	fx_audit_release(&a);
}

/* ---- provenance --------------------------------------------------------- */

static void audit(struct fx_audit *a, const char *file, const char *model, const char *cal,
		  const char *br)
{
	struct fx_audit_opts o = {
		.model = model ? tpath(model) : NULL,
		.calib = cal ? tpath(cal) : NULL,
		.branch = br ? tpath(br) : NULL,
	};
	struct fx_err err = {0};

	fx_audit_init(a);
	if (fx_audit_path(a, tpath(file), &o, &err) < 0)
		fail_msg("audit: %s", err.msg);
	dump(a);
}

static void test_prov_stale(void **state)
{
	struct fx_audit a;

	(void)state;
	audit(&a, "q.safetensors", "m", NULL, "branch.safetensors");
	assert_int_equal(fx_audit_failures(&a, false), 0);
	assert_int_equal(lines_with(&a, "[OK] provenance: model"), 1);
	assert_int_equal(lines_with(&a, "[OK] groups: 30 of 30 fused groups of blocks 0-3"), 1);
	fx_audit_release(&a);
	/* made from another model */
	audit(&a, "q.safetensors", "other", NULL, NULL);
	assert_int_equal(found(&a, "stale", "fx.quant was made from another model"), 1);
	assert_int_equal(found(&a, "stale", "rerun fx-quant"), 1);
	fx_audit_release(&a);
	audit(&a, "calib.safetensors", "other", NULL, NULL);
	assert_int_equal(found(&a, "stale", "rerun fx-calib"), 1);
	fx_audit_release(&a);
	/* the branch given was made from another calib than the one given */
	audit(&a, "svdq.safetensors", "m", "calib2.safetensors", "branch.safetensors");
	assert_int_equal(found(&a, "stale", "the branch file"), 1);
	assert_int_equal(found(&a, "stale", "was made from another calib"), 1);
	assert_int_equal(found(&a, "stale", "rerun fx-lowrank, then the stages after it"), 1);
	fx_audit_release(&a);
	audit(&a, "svdq.safetensors", "m", "calib.safetensors", "branch.safetensors");
	assert_int_equal(found(&a, "stale", ""), 0);
	assert_int_equal(lines_with(&a, "[OK] provenance: the branch file"), 1);
	assert_int_equal(lines_with(&a, "[OK] provenance: the calib file"), 1);
	fx_audit_release(&a);
	/* and a calib file made from another model, given beside the packed file */
	audit(&a, "rtn.safetensors", "other", "calib.safetensors", NULL);
	assert_int_equal(found(&a, "stale", "the calib file"), 1);
	assert_int_equal(found(&a, "stale", "rerun fx-calib"), 1);
	fx_audit_release(&a);
}

static void test_groups(void **state)
{
	struct fx_audit a;

	(void)state;
	audit(&a, "calib.safetensors", "m", NULL, NULL);
	assert_int_equal(lines_with(&a, "[OK] groups: 30 of 30"), 1);
	assert_int_equal(fx_audit_failures(&a, false), 0);
	fx_audit_release(&a);
	audit(&a, "branch.safetensors", "m", NULL, NULL);
	assert_int_equal(lines_with(&a, "[OK] groups: 24 of 24"), 1);
	assert_int_equal(fx_audit_failures(&a, false), 0);
	fx_audit_release(&a);
	/* a block shard: only its blocks are expected */
	audit(&a, "q01.safetensors", "m", NULL, NULL);
	assert_int_equal(lines_with(&a, "[OK] groups: 20 of 20 fused groups of blocks 0-1"), 1);
	assert_int_equal(fx_audit_failures(&a, false), 0);
	fx_audit_release(&a);
	/* a group missing (the CRC map still lists it: a crc32 finding too) */
	rewrite(tpath("q.safetensors"), tpath("q-miss.safetensors"), "single_transformer_blocks.1.mlp_fc2.", NULL);
	audit(&a, "q-miss.safetensors", "m", NULL, NULL);
	assert_int_equal(found(&a, "missing", "codes, scales of mlp_fc2 (single block 1) missing from the fx.quant file: rerun fx-quant"), 1);
	assert_int_equal(lines_with(&a, "[MISSING] groups: 29 of 30"), 1);
	fx_audit_release(&a);
	/* another model's shapes: listed up to the cap, then counted */
	audit(&a, "q.safetensors", "big", NULL, NULL);
	assert_int_equal(found(&a, "shape", "was made for another model or is damaged, rerun fx-quant"),
			 FX_AUDIT_PROV_MAX_LISTED);
	assert_int_equal(found(&a, "missing", "14 more groups"), 1);
	assert_int_equal(lines_with(&a, "[MISSING] groups: 0 of 30"), 1);
	fx_audit_release(&a);
}

/* ---- fx-eval ------------------------------------------------------------ */

static void test_eval(void **state)
{
	struct fx_eval_opts o = { .guidance = -1 };
	struct fx_eval_result r;
	struct fx_err err = {0};
	double w4a4[2] = { 0, 0 };
	int i, p, l, nw = 0;

	(void)state;
	o.model = tpath("m");
	o.cond = tpath("cond.safetensors");
	o.ckpt[o.nckpt++] = tpath("svdq.safetensors");
	o.ckpt[o.nckpt++] = tpath("rtn.safetensors");
	o.steps = 3;
	o.width = o.height = 128;
	if (fx_eval_run(&o, &r, &err) < 0)
		fail_msg("eval: %s", err.msg);
	assert_int_equal(r.nprompts, 2);
	assert_int_equal(r.nckpt, 2);
	assert_int_equal(r.nsteps, 3);
	assert_int_equal(r.nlayers, 30);
	assert_string_equal(r.layer[0], "norm1.linear (block 0)");
	for (i = 0; i < 2; i++) {
		for (p = 0; p < 2; p++) {
			double *sp = &r.step_psnr[(i * 2 + p) * 3];

			assert_true(isfinite(r.psnr[i * 2 + p]) && r.psnr[i * 2 + p] > 5);
			assert_true(r.cosine[i * 2 + p] > 0.3 && r.cosine[i * 2 + p] <= 1.0 + 1e-9);
			/* the last step is the final latents */
			assert_true(sp[2] == r.psnr[i * 2 + p]);
			assert_true(isfinite(sp[0]) && isfinite(sp[1]));
		}
		for (l = 0; l < r.nlayers; l++) {
			assert_true(isfinite(r.layer_snr[i * r.nlayers + l]));
			if (!strstr(r.layer[l], "norm")) {
				w4a4[i] += r.layer_snr[i * r.nlayers + l];
				nw += i == 0;
			}
		}
		print_message("# %s: PSNR %.2f dB, cosine %.4f, steps %.2f %.2f %.2f\n", o.ckpt[i],
			      r.mean_psnr[i], r.mean_cosine[i], r.mean_step_psnr[i * 3],
			      r.mean_step_psnr[i * 3 + 1], r.mean_step_psnr[i * 3 + 2]);
	}
	assert_int_equal(nw, 24);
	print_message("# mean W4A4 layer SNR: svdq %.1f dB, rtn %.1f dB\n", w4a4[0] / nw, w4a4[1] / nw);
	assert_true(w4a4[0] / nw > w4a4[1] / nw + 5);
	assert_true(r.mean_psnr[0] > r.mean_psnr[1]);
	/* the PNG: signature, IHDR, pixels of both colours */
	{
		FILE *f;
		uint8_t buf[1 << 16], *px;
		size_t n;
		uLongf pn = (uLongf)(960 * 3 + 1) * 600;
		uint32_t len;
		bool blue = false, orange = false;

		assert_int_equal(fx_eval_plot(tpath("p.png"), &r, &err), 0);
		f = fopen(tpath("p.png"), "rb");
		assert_non_null(f);
		n = fread(buf, 1, sizeof(buf), f);
		fclose(f);
		assert_memory_equal(buf, "\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR", 16);
		assert_int_equal((uint32_t)buf[16] << 24 | buf[17] << 16 | buf[18] << 8 | buf[19], 960);
		assert_int_equal((uint32_t)buf[20] << 24 | buf[21] << 16 | buf[22] << 8 | buf[23], 600);
		len = (uint32_t)buf[33] << 24 | buf[34] << 16 | buf[35] << 8 | buf[36];
		assert_memory_equal(buf + 37, "IDAT", 4);
		assert_true(41 + len <= n);
		px = malloc(pn);
		assert_int_equal(uncompress(px, &pn, buf + 41, len), Z_OK);
		assert_int_equal(pn, (uLongf)(960 * 3 + 1) * 600);
		for (n = 0; n + 2 < pn; n += 3) {
			blue |= px[n] == 31 && px[n + 1] == 119 && px[n + 2] == 180;
			orange |= px[n] == 255 && px[n + 1] == 127 && px[n + 2] == 14;
		}
		free(px);
		assert_true(blue && orange);
	}
	fx_eval_result_release(&r);
}

static void test_eval_refuses(void **state)
{
	struct fx_eval_opts o = { .guidance = -1 };
	struct fx_eval_result r;
	struct fx_err err = {0};

	(void)state;
	o.model = tpath("m");
	o.cond = tpath("cond.safetensors");
	o.steps = 1;
	o.width = o.height = 128;
	assert_int_equal(fx_eval_run(&o, &r, &err), FX_E_ARG);
	o.ckpt[o.nckpt++] = tpath("q.safetensors");
	assert_int_equal(fx_eval_run(&o, &r, &err), FX_E_FORMAT);
	assert_non_null(strstr(err.msg, "missing or misshapen"));
	assert_null(r.psnr);
	o.ckpt[0] = tpath("svdq.safetensors");
	o.model = tpath("big");
	assert_int_equal(fx_eval_run(&o, &r, &err), FX_E_FORMAT);
}

int main(void)
{
	fx_log_set_level(FX_LOG_WARN);
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_numerics_good),
		cmocka_unit_test(test_numerics_snr),
		cmocka_unit_test(test_numerics_precision_bounds),
		cmocka_unit_test(test_numerics_broken_layout),
		cmocka_unit_test(test_prov_stale),
		cmocka_unit_test(test_groups),
		cmocka_unit_test(test_eval),
		cmocka_unit_test(test_eval_refuses),
	};

	return cmocka_run_group_tests_name("audit-num", tests, setup, teardown);
}
