#include "fx-audit-model.h"

#include <cblas.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-quant.h"
#include "fx-runtime.h"
#include "fx-file.h"
#include "fx-model.h"
#include "fx-pack.h"
#include "fx-packed-module.h"

/* ---- numerics -------------------------------------------------------- */

struct num_row {
	char where[96];
	double werr, berr, snr, rerr;   /* rerr: weight error re-quantized from its own smoothing and branch */
	bool has_snr;
};

static double snr_db(const float *y, const float *yr, const float *b, int64_t m, int64_t n)
{
	double num = 0, den = 0;

	for (int64_t i = 0; i < m; i++)
		for (int64_t j = 0; j < n; j++) {
			double r = (double)yr[i * n + j] + b[j], d = (double)y[i * n + j] - r;

			num += d * d;
			den += r * r;
		}
	return num > 0 ? 10 * log10(den / num) : 999;
}

static double rel_err(const float *a, const float *b, size_t n)
{
	double num = 0, den = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		double d = (double)a[i] - b[i];

		num += d * d;
		den += (double)b[i] * b[i];
	}
	return den > 0 ? sqrt(num / den) : sqrt(num);
}

/* The weight error of the module re-quantized (round-to-nearest, the
 * precision it has) from its own smoothing and branch: R = (W − Lu·Ldᵀ)·s.
 * What fx-quant without --search would have packed; a module far worse
 * than that has codes or scales that do not belong to its smoothing. */
static int requant_err(double *out, const struct fx_group *g, const struct fx_rt_w4a4 *pmod,
		       const float *w, struct fx_err *err)
{
	const int64_t n = g->n, k = g->k, r = pmod->r;
	float *res = malloc((size_t)(n * k) * 4), *weff = malloc((size_t)(n * k) * 4);
	float *rs = malloc((size_t)n * 4), *ct = malloc((size_t)n * 4);
	uint8_t *codes = malloc((size_t)(n * k / 2));
	void *sc = malloc((size_t)(n * k / 16));   /* >= INT4's n*k/64 bf16 */
	struct fx_rt_w4a4 mod = *pmod;
	int64_t rows[FX_GROUP_MAX_MEMBERS];
	int ret;

	if (!res || !weff || !rs || !ct || !codes || !sc) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	memcpy(res, w, (size_t)(n * k) * 4);
	if (r > 0)   /* Ld is stored (k, r), already divided by s */
		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)n, (int)k, (int)r, -1.0f,
			    pmod->lora_up, (int)r, pmod->lora_down, (int)r, 1.0f, res, (int)k);
	for (int64_t i = 0; i < n; i++)
		for (int64_t c = 0; c < k; c++)
			res[i * k + c] *= pmod->smooth[c];
	for (int i = 0; i < g->nmembers; i++)
		rows[i] = g->members[i].nrows;
	ret = pmod->prec == FX_QPREC_NVFP4
		      ? fx_quant_nvfp4_cpu(codes, sc, rs, res, n, k, rows, g->nmembers, NULL, err)
		      : fx_quant_int4_cpu(codes, sc, res, n, k, NULL, err);
	if (ret < 0)
		goto out;
	mod.codes = codes;
	mod.wscales = sc;
	mod.wtscale = 0.0f;
	mod.wcscales = pmod->prec == FX_QPREC_NVFP4 ? rs : NULL;
	if ((ret = fx_rt_w4a4_effective(weff, ct, &mod, err)) < 0)
		goto out;
	*out = rel_err(weff, w, (size_t)(n * k));
out:
	free(res); free(weff); free(rs); free(ct); free(codes); free(sc);
	return ret;
}

/* W4A4: W_eff and constant term against W and b, and with calibration rows
 * the emulated runtime output against X·Wᵀ + b. adaLN: the dequantized
 * weights against the source rows. Returns 1 when the module is incomplete. */
static int num_module(const struct fx_st *st, const struct fx_model *m, const struct fx_group *g,
		      const struct fx_st *calib, bool fp4, struct num_row *row, struct fx_err *err)
{
	int64_t n = g->n, k = g->k, i;
	struct fx_packed_module pm;
	float *w = NULL, *b = NULL, *weff = NULL, *cterm = NULL, *x = NULL, *y = NULL, *yr = NULL;
	int ret = fx_packed_module_load(&pm, st, g, fp4, err);

	if (ret != 0)
		return ret;
	w = malloc(n * k * 4);
	b = malloc(n * 4);
	weff = malloc(n * k * 4);
	cterm = malloc(n * 4);
	if (!w || !b || !weff || !cterm) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = fx_model_group_f32(m, g, w, b, err)) < 0)
		goto out;
	if (pm.adaln) {
		float *perm = cterm = realloc(cterm, n * k * 4);

		if (!perm || (ret = fx_dequant_w4a16_cpu(weff, pm.codes, pm.scales16, pm.zeros16, n, k, err)) < 0) {
			ret = ret < 0 ? ret : fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		for (i = 0; i < n; i++)
			memcpy(perm + i * k, w + fx_quant_adaln_src_row(i, n, g->adaln_chunks) * k, k * 4);
		row->werr = rel_err(weff, perm, n * k);
		goto out;
	}
	if ((ret = fx_rt_w4a4_effective(weff, cterm, &pm.mod, err)) < 0)
		goto out;
	row->werr = rel_err(weff, w, n * k);
	row->berr = rel_err(cterm, b, n);
	if ((ret = requant_err(&row->rerr, g, &pm.mod, w, err)) < 0)
		goto out;
	if (calib) {
		char name[200];
		const struct fx_tensor *tx;

		snprintf(name, sizeof(name), "%s.samples", g->name);
		tx = fx_st_find(calib, name);
		if (tx && tx->ndim == 2 && tx->shape[1] == k && tx->shape[0] > 0) {
			int64_t mr = tx->shape[0] > 256 ? 256 : tx->shape[0];

			x = malloc(mr * k * 4);
			y = malloc(mr * n * 4);
			yr = malloc(mr * n * 4);
			if (!x || !y || !yr) {
				ret = fx_error(err, FX_E_NOMEM, "out of memory");
				goto out;
			}
			fx_to_f32(x, tx->data, tx->dtype, mr * k);
			if ((ret = fx_rt_w4a4_forward_ref(y, &pm.mod, x, mr, 0, err)) < 0)
				goto out;
			cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)mr, (int)n, (int)k, 1.0f,
				    x, (int)k, w, (int)k, 0.0f, yr, (int)n);
			row->snr = snr_db(y, yr, b, mr, n);
			row->has_snr = true;
		}
	}
out:
	fx_packed_module_release(&pm);
	free(w); free(b); free(weff); free(cterm); free(x); free(y); free(yr);
	return ret;
}

static int by_err(const void *a, const void *b)
{
	const struct num_row *x = a, *y = b;

	return (x->werr < y->werr) - (x->werr > y->werr);
}

int fx_audit_numerics(struct fx_audit *a, const struct fx_st *st, const struct fx_audit_opts *o,
		      struct fx_err *err)
{
	struct fx_model *m = NULL;
	struct fx_st *calib = NULL;
	struct num_row *rows = NULL;
	size_t i, nr = 0;
	bool fp4 = false, ours, gptq;
	double sum = 0;
	int ret;

	if (!o || !o->model)
		return 0;
	if ((ret = fx_model_open_loras(&m, o->model, o->loras, err)) < 0)
		return ret;
	if (o->calib && (ret = fx_st_open(&calib, o->calib, err)) < 0)
		goto out;
	fp4 = fx_packed_is_fp4(st);
	ours = fx_st_meta(st, "fx.format") != NULL;
	/* GPTQ (fx-quant --gptq, recorded by fx-pack) lowers the output error
	 * at the cost of the weight error: the requant ratio only informs */
	gptq = ours && fx_st_meta(st, "fx.params") && strstr(fx_st_meta(st, "fx.params"), "\"gptq\":1");
	rows = calloc(fx_model_ngroups(m), sizeof(*rows));
	if (!rows) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (i = 0; i < fx_model_ngroups(m); i++) {
		const struct fx_group *g = fx_model_group(m, i);
		struct num_row *row = &rows[nr];

		snprintf(row->where, sizeof(row->where), "%s (%sblock %d)", g->fused,
			 g->single ? "single " : "", g->block);
		ret = num_module(st, m, g, calib, fp4, row, err);
		fx_model_group_release(m, g);
		if (ret < 0)
			goto out;
		if (ret > 0)
			continue;   /* module incomplete: reported by the completeness audit */
		if (!(row->werr <= FX_AUDIT_MAX_WEIGHT_ERR) && gptq && row->has_snr &&
		    row->snr >= FX_AUDIT_MIN_GPTQ_SNR)
			/* GPTQ pushes error into inputs that are rarely active (INT4
			 * fc2 channels GELU never opens): the output decides */
			fx_audit_add(a, FX_SEV_NOTE, "numerics", row->where,
				     "relative weight error %.3g, but output SNR %.1f dB on the calibration "
				     "rows: GPTQ trades weight error for output error", row->werr, row->snr);
		else if (!(row->werr <= FX_AUDIT_MAX_WEIGHT_ERR) && gptq && !row->has_snr)
			fx_audit_add(a, FX_SEV_WARN, "numerics", row->where,
				     "relative weight error %.3g: a wrong layout, or GPTQ's error on rarely "
				     "active inputs (give --calib to measure the output)", row->werr);
		else if (!(row->werr <= FX_AUDIT_MAX_WEIGHT_ERR))
			fx_audit_add(a, FX_SEV_ERROR, "numerics", row->where,
				     "does not reproduce the source layer: relative weight error %.3g "
				     "(a wrong layout, fusion order, smoothing or low-rank branch)", row->werr);
		else if (row->rerr > 0 && row->werr > FX_AUDIT_MAX_REQUANT_RATIO * row->rerr)
			/* another tool's quantizer (GPTQ-like) may trade weight error
			 * for output error: a warning there */
			fx_audit_add(a, gptq ? FX_SEV_NOTE : ours ? FX_SEV_ERROR : FX_SEV_WARN, "numerics",
				     row->where, "relative weight error %.3g, %.1fx the %.3g of the same module "
				     "re-quantized from its own smoothing and branch (%s)", row->werr,
				     row->werr / row->rerr, row->rerr,
				     gptq ? "GPTQ trades weight error for output error: --calib measures that"
				     : ours ? "codes, scales or smoothing scrambled"
				     : "codes, scales or smoothing scrambled, or another tool's quantizer");
		sum += row->werr;
		nr++;
	}
	ret = 0;
	qsort(rows, nr, sizeof(*rows), by_err);
	fx_audit_line(a, "numerics against '%s': %zu layers, mean relative weight error %.4f%s",
		      o->model, nr, nr ? sum / nr : 0.0, calib ? ", output SNR on calibration rows" : "");
	for (i = 0; i < nr; i++) {
		if (rows[i].has_snr)
			fx_audit_line(a, "[NUM] %-40s weight %.4f (requant %.4f)  bias %.4f  SNR %.1f dB",
				      rows[i].where, rows[i].werr, rows[i].rerr, rows[i].berr, rows[i].snr);
		else if (rows[i].rerr > 0)
			fx_audit_line(a, "[NUM] %-40s weight %.4f (requant %.4f)  bias %.4f", rows[i].where,
				      rows[i].werr, rows[i].rerr, rows[i].berr);
		else
			fx_audit_line(a, "[NUM] %-40s weight %.4f  bias %.4f", rows[i].where, rows[i].werr,
				      rows[i].berr);
	}
out:
	free(rows);
	fx_st_close(calib);
	fx_model_close(m);
	return ret;
}
