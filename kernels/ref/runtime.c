/* Reference of the Nunchaku runtime's module math (spec §3.2, §3.3). */
#include "fx-runtime.h"
#include "../../common/fx-tensor.h"

#include <stdlib.h>
#include <string.h>

static float r16(float v, bool f32)
{
	return f32 ? v : fx_bf16_to_f32(fx_f32_to_bf16(v));
}

static int check_mod(const struct fx_rt_w4a4 *mod, struct fx_err *err)
{
	int64_t group;

	if (mod->prec != FX_QPREC_INT4 && mod->prec != FX_QPREC_NVFP4)
		return fx_error(err, FX_E_ARG, "runtime: precision must be int4 or nvfp4");
	group = mod->prec == FX_QPREC_INT4 ? FX_QUANT_INT4_GROUP : FX_QUANT_FP4_GROUP;
	if (mod->n <= 0 || mod->k <= 0 || mod->k % group || mod->r < 0)
		return fx_error(err, FX_E_ARG, "runtime: bad module shape n %lld k %lld r %lld",
				(long long)mod->n, (long long)mod->k, (long long)mod->r);
	if (!mod->codes || !mod->wscales)
		return fx_error(err, FX_E_ARG, "runtime: module has no codes or scales");
	if (mod->r > 0 && (!mod->lora_down || !mod->lora_up))
		return fx_error(err, FX_E_ARG, "runtime: rank %lld without low-rank matrices",
				(long long)mod->r);
	if (mod->fc2_shift && mod->prec != FX_QPREC_INT4)
		return fx_error(err, FX_E_ARG, "runtime: the fc2 shift exists only for int4");
	return 0;
}

/* Integer (INT4) or E2M1 value of each weight, and the group scales as f32. */
static int decode_weights(float **qw_out, float **sw_out, const struct fx_rt_w4a4 *mod,
			  struct fx_err *err)
{
	const int64_t n = mod->n, k = mod->k;
	const bool int4 = mod->prec == FX_QPREC_INT4;
	const int64_t ng = k / (int4 ? FX_QUANT_INT4_GROUP : FX_QUANT_FP4_GROUP);
	float *qw = malloc((size_t)n * (size_t)k * sizeof(float));
	float *sw = malloc((size_t)n * (size_t)ng * sizeof(float));

	if (!qw || !sw) {
		free(qw);
		free(sw);
		return fx_error(err, FX_E_NOMEM, "runtime: no memory for %lldx%lld weights",
				(long long)n, (long long)k);
	}
	for (int64_t r = 0; r < n; r++) {
		for (int64_t kk = 0; kk < k; kk++) {
			unsigned c = (mod->codes[r * (k / 2) + kk / 2] >> ((kk & 1) * 4)) & 15u;
			qw[r * k + kk] = int4 ? (float)((int)(c ^ 8u) - 8) : fx_e2m1_value(c);
		}
		for (int64_t g = 0; g < ng; g++)
			sw[r * ng + g] = int4 ? fx_bf16_to_f32(((const uint16_t *)mod->wscales)[r * ng + g])
					      : fx_e4m3_to_f32(((const uint8_t *)mod->wscales)[r * ng + g]);
	}
	*qw_out = qw;
	*sw_out = sw;
	return 0;
}

int fx_rt_w4a4_forward_ref(float *y, const struct fx_rt_w4a4 *mod, const float *x, int64_t m,
			   unsigned flags, struct fx_err *err)
{
	const bool f32 = flags & FX_RT_F32, noq = flags & FX_RT_NO_ACTQ;
	const bool int4 = mod->prec == FX_QPREC_INT4;
	int64_t n, k, r, group, ng;
	float *qw = NULL, *sw = NULL, tscale, lam;
	int ret, nomem = 0;

	if ((ret = check_mod(mod, err)) < 0)
		return ret;
	if (m < 0)
		return fx_error(err, FX_E_ARG, "runtime: %lld rows", (long long)m);
	n = mod->n;
	k = mod->k;
	r = mod->r;
	group = int4 ? FX_QUANT_INT4_GROUP : FX_QUANT_FP4_GROUP;
	ng = k / group;
	tscale = (!int4 && mod->wtscale != 0.0f) ? mod->wtscale : 1.0f;
	lam = mod->lora_scale != 0.0f ? mod->lora_scale : 1.0f;
	if ((ret = decode_weights(&qw, &sw, mod, err)) < 0)
		return ret;

#pragma omp parallel
	{
		float *xb = malloc((size_t)k * sizeof(float));
		float *qa = malloc((size_t)k * sizeof(float));
		float *sa = malloc((size_t)ng * sizeof(float));
		float *la = malloc((size_t)(r > 0 ? r : 1) * sizeof(float));
		bool ok = xb && qa && sa && la;

		if (!ok) {
#pragma omp atomic write
			nomem = 1;
		}
#pragma omp for schedule(static)
		for (int64_t i = 0; i < m; i++) {
			const float *xi = x + i * k;
			float *yi = y + i * n;

			if (!ok)
				continue;
			/* 1. low-rank on the unsmoothed (16-bit) input */
			for (int64_t kk = 0; kk < k; kk++)
				xb[kk] = r16(xi[kk], f32);
			for (int64_t j = 0; j < r; j++) {
				float acc = 0.0f;
				for (int64_t kk = 0; kk < k; kk++)
					acc += xb[kk] * mod->lora_down[kk * r + j];
				la[j] = acc;
			}
			/* 2. shift and smooth in the model's 16-bit type */
			for (int64_t kk = 0; kk < k; kk++) {
				float v = xb[kk];
				if (mod->fc2_shift)
					v = r16(v + FX_RT_FC2_SHIFT, f32);
				if (mod->smooth)
					v = r16(v / mod->smooth[kk], f32);
				xb[kk] = v;
			}
			/* 3. activation quantization */
			if (noq) {
				memcpy(qa, xb, (size_t)k * sizeof(float));
				for (int64_t g = 0; g < ng; g++)
					sa[g] = 1.0f;
			} else if (int4) {
				fx_actq_int4_ref(qa, sa, xb, k, mod->fc2_shift, NULL);
			} else {
				fx_actq_nvfp4_ref(qa, sa, xb, k, NULL);
			}
			/* 4. quantized GEMM, 5. epilogue */
			for (int64_t o = 0; o < n; o++) {
				const float *wq = qw + o * k;
				float acc = 0.0f, lo = 0.0f, v;
				for (int64_t g = 0; g < ng; g++) {
					float dot = 0.0f;
					for (int64_t kk = g * group; kk < (g + 1) * group; kk++)
						dot += qa[kk] * wq[kk];
					acc += (sa[g] * sw[o * ng + g]) * dot;
				}
				v = r16(acc * tscale, f32);
				if (mod->wcscales)
					v *= mod->wcscales[o];
				if (mod->bias)
					v += mod->bias[o];
				for (int64_t j = 0; j < r; j++)
					lo += la[j] * mod->lora_up[o * r + j];
				yi[o] = r16(v + lam * lo, f32);
			}
		}
		free(xb);
		free(qa);
		free(sa);
		free(la);
	}
	free(qw);
	free(sw);
	if (nomem)
		return fx_error(err, FX_E_NOMEM, "runtime: no memory for row buffers");
	return 0;
}

int fx_rt_w4a4_effective(float *weff, float *cterm, const struct fx_rt_w4a4 *mod,
			 struct fx_err *err)
{
	const bool int4 = mod->prec == FX_QPREC_INT4;
	int64_t n, k, r, ng;
	float *qw = NULL, *sw = NULL;
	double tscale, c;
	int ret;

	if ((ret = check_mod(mod, err)) < 0 || (ret = decode_weights(&qw, &sw, mod, err)) < 0)
		return ret;
	n = mod->n;
	k = mod->k;
	r = mod->r;
	ng = k / (int4 ? FX_QUANT_INT4_GROUP : FX_QUANT_FP4_GROUP);
	tscale = (!int4 && mod->wtscale != 0.0f) ? mod->wtscale : 1.0;
	c = mod->fc2_shift ? FX_RT_FC2_SHIFT : 0.0;
#pragma omp parallel for schedule(static)
	for (int64_t o = 0; o < n; o++) {
		double csum = 0.0, cs = mod->wcscales ? mod->wcscales[o] : 1.0;
		for (int64_t kk = 0; kk < k; kk++) {
			double rdq = (double)qw[o * k + kk] * sw[o * ng + kk / (k / ng)] * tscale * cs;
			double w = rdq / (mod->smooth ? mod->smooth[kk] : 1.0), lo = 0.0;
			csum += w;
			for (int64_t j = 0; j < r; j++)
				lo += (double)mod->lora_up[o * r + j] * mod->lora_down[kk * r + j];
			weff[o * k + kk] = (float)(w + lo);
		}
		if (cterm)
			cterm[o] = (float)((mod->bias ? mod->bias[o] : 0.0) + c * csum);
	}
	free(qw);
	free(sw);
	return 0;
}

int fx_rt_fc2_bias(float *out, const float *b, const float *res, const float *smooth,
		   int64_t n, int64_t k, float c, struct fx_err *err)
{
	if (n <= 0 || k <= 0 || !res)
		return fx_error(err, FX_E_ARG, "fc2 bias: bad arguments");
	for (int64_t o = 0; o < n; o++) {
		double acc = 0.0;
		for (int64_t kk = 0; kk < k; kk++)
			acc += (double)res[o * k + kk] * ((double)c / (smooth ? smooth[kk] : 1.0f));
		out[o] = (float)((b ? b[o] : 0.0) - acc);
	}
	return 0;
}

int fx_rt_w4a16_forward_ref(float *y, const uint8_t *codes, const uint16_t *scales,
			    const uint16_t *zeros, const float *bias, int64_t n, int64_t k,
			    const float *x, int64_t m, struct fx_err *err)
{
	float *w;
	int ret;

	if (n <= 0 || k <= 0 || m < 0)
		return fx_error(err, FX_E_ARG, "w4a16 runtime: bad shape");
	w = malloc((size_t)n * (size_t)k * sizeof(float));
	if (!w)
		return fx_error(err, FX_E_NOMEM, "w4a16 runtime: no memory");
	if ((ret = fx_dequant_w4a16_ref(w, codes, scales, zeros, n, k, err)) < 0) {
		free(w);
		return ret;
	}
#pragma omp parallel for schedule(static)
	for (int64_t i = 0; i < m; i++)
		for (int64_t o = 0; o < n; o++) {
			float acc = 0.0f;
			for (int64_t kk = 0; kk < k; kk++)
				acc += x[i * k + kk] * w[o * k + kk];
			y[i * n + o] = acc + (bias ? bias[o] : 0.0f);
		}
	free(w);
	return 0;
}
