/* Scalar reference quantizers: the oracle for kernels/cpu/quant.c.
 * Written for clarity: table searches, one element at a time, no threads. */
#include "fx-quant.h"
#include "fx-quant-impl.h"
#include "../../common/fx-tensor.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static const float e2m1_table[16] = {
	0.0f, 0.5f, 1.0f, 1.5f, 2.0f, 3.0f, 4.0f, 6.0f,
	-0.0f, -0.5f, -1.0f, -1.5f, -2.0f, -3.0f, -4.0f, -6.0f,
};

float fx_e2m1_value(unsigned code)
{
	return e2m1_table[code & 15u];
}

uint8_t fx_e2m1_code_lowtie(float v)
{
	double a = fabs((double)v), best = INFINITY;
	unsigned code = 0;

	for (unsigned c = 0; c < 8; c++) {
		double d = fabs(a - (double)e2m1_table[c]);
		if (d < best) {     /* strict: a tie keeps the lower index */
			best = d;
			code = c;
		}
	}
	if (isinf(a))
		code = 7;
	if (v < 0.0f && code != 0)
		code |= 8u;
	return (uint8_t)code;
}

float fx_e2m1_round_even(float v)
{
	double a = fabs((double)v), best = INFINITY;
	unsigned code = 0;

	if (isnan(v))
		return 0.0f;
	for (unsigned c = 0; c < 8; c++) {
		double d = fabs(a - (double)e2m1_table[c]);
		if (d < best || (d == best && (c & 1u) == 0)) {
			best = d;
			code = c;
		}
	}
	if (isinf(a))
		code = 7;           /* satfinite */
	return v < 0.0f ? -e2m1_table[code] : e2m1_table[code];
}

size_t fx_quant_codes_size(int64_t n, int64_t k)
{
	return (size_t)n * (size_t)(k / 2);
}

size_t fx_quant_scales_size(enum fx_qprec p, int64_t n, int64_t k)
{
	switch (p) {
	case FX_QPREC_NVFP4: return (size_t)n * (size_t)(k / FX_QUANT_FP4_GROUP);
	case FX_QPREC_INT4: return (size_t)n * (size_t)(k / FX_QUANT_INT4_GROUP) * 2;
	case FX_QPREC_W4A16: return (size_t)n * (size_t)(k / FX_QUANT_W4A16_GROUP) * 2;
	case FX_QPREC_COUNT: break;
	}
	return 0;
}

static void put_code(uint8_t *row, int64_t kk, unsigned code)
{
	uint8_t *b = row + kk / 2;
	if (kk & 1)
		*b = (uint8_t)((*b & 0x0fu) | (code << 4));
	else
		*b = (uint8_t)((*b & 0xf0u) | (code & 0x0fu));
}

static unsigned get_code(const uint8_t *row, int64_t kk)
{
	return (row[kk / 2] >> ((kk & 1) * 4)) & 0x0fu;
}

static float absmax(const float *v, int64_t count)
{
	float m = 0.0f;
	for (int64_t i = 0; i < count; i++)
		if (fabsf(v[i]) > m)
			m = fabsf(v[i]);
	return m;
}

static double *build_gram(const struct fx_qsearch *s, int64_t k, int64_t group)
{
	double *h = fxq_gram_alloc(k, group);
	if (!h)
		return NULL;
	for (int64_t g = 0; g < k / group; g++)
		fxq_gram_block(h, s->x, s->m, k, group, g);
	return h;
}

static int check_finite(const char *what, const float *w, int64_t n, int64_t k, struct fx_err *err)
{
	int64_t bad = fxq_find_nonfinite(w, (size_t)n * (size_t)k);
	if (bad >= 0)
		return fx_error(err, FX_E_VALUE, "%s: non-finite weight at [%lld,%lld]", what,
				(long long)(bad / k), (long long)(bad % k));
	return 0;
}

/* ---- INT4 ------------------------------------------------------------ */

/* Symmetric integer group: scale bf16(a·amax/qmax), q = clamp(rne(w/S)). */
static void int_group(const float *w, int64_t group, float amax, float a, float qmax,
		      float qlo, float qhi, uint16_t *sbits, float *q, float *deq)
{
	uint16_t sb = fx_f32_to_bf16((a * amax) / qmax);
	float s = fx_bf16_to_f32(sb);

	if (!(s > 0.0f)) {       /* underflow of a tiny group: codes round to 0 */
		sb = 0x3f80;
		s = 1.0f;
	}
	for (int64_t i = 0; i < group; i++) {
		float v = rintf(w[i] / s);
		if (v < qlo)
			v = qlo;
		if (v > qhi)
			v = qhi;
		q[i] = v;
		deq[i] = v * s;
	}
	*sbits = sb;
}

int fx_quant_int4_ref(uint8_t *codes, uint16_t *scales, const float *w, int64_t n, int64_t k,
		      const struct fx_qsearch *search, struct fx_err *err)
{
	const int64_t G = FX_QUANT_INT4_GROUP, ng = k / G;
	double *h = NULL;
	int nsh, ret;
	const float *sh;

	if ((ret = fxq_check("int4", n, k, G, search, err)) < 0 ||
	    (ret = check_finite("int4", w, n, k, err)) < 0)
		return ret;
	sh = fxq_shrink(search, &nsh);
	if (search && !(h = build_gram(search, k, G)))
		return fx_error(err, FX_E_NOMEM, "int4: no memory for the search");
	memset(codes, 0, fx_quant_codes_size(n, k));
	for (int64_t r = 0; r < n; r++) {
		for (int64_t g = 0; g < ng; g++) {
			const float *wg = w + r * k + g * G;
			float amax = absmax(wg, G), q[64], deq[64], bq[64];
			uint16_t sb = 0x3f80, bsb = 0x3f80;
			double best = INFINITY;

			memset(bq, 0, sizeof(bq));
			if (amax > 0.0f) {
				for (int c = 0; c < nsh; c++) {
					double e = 0.0;
					int_group(wg, G, amax, sh[c], 7.0f, -8.0f, 7.0f, &sb, q, deq);
					if (h)
						e = fxq_group_err(h + g * G * G, wg, deq, G);
					if (c == 0 || e < best) {
						best = e;
						bsb = sb;
						memcpy(bq, q, sizeof(bq));
					}
				}
			}
			scales[r * ng + g] = bsb;
			for (int64_t i = 0; i < G; i++)
				put_code(codes + r * (k / 2), g * G + i, (unsigned)(int)bq[i] & 15u);
		}
	}
	free(h);
	return 0;
}

int fx_dequant_int4_ref(float *w, const uint8_t *codes, const uint16_t *scales,
			int64_t n, int64_t k, struct fx_err *err)
{
	int ret = fxq_check("int4 dequant", n, k, FX_QUANT_INT4_GROUP, NULL, err);
	if (ret < 0)
		return ret;
	for (int64_t r = 0; r < n; r++)
		for (int64_t kk = 0; kk < k; kk++) {
			int q = (int)get_code(codes + r * (k / 2), kk);
			if (q >= 8)
				q -= 16;
			w[r * k + kk] = (float)q *
				fx_bf16_to_f32(scales[r * (k / FX_QUANT_INT4_GROUP) + kk / FX_QUANT_INT4_GROUP]);
		}
	return 0;
}

/* ---- NVFP4 ----------------------------------------------------------- */

static int check_members(const int64_t *rows, int nmember, int64_t n, struct fx_err *err)
{
	int64_t sum = 0;
	if (!rows || nmember <= 1)
		return 0;
	for (int i = 0; i < nmember; i++) {
		if (rows[i] <= 0)
			return fx_error(err, FX_E_ARG, "nvfp4: member %d has %lld rows", i, (long long)rows[i]);
		sum += rows[i];
	}
	if (sum != n)
		return fx_error(err, FX_E_ARG, "nvfp4: member rows sum to %lld, expected %lld",
				(long long)sum, (long long)n);
	return 0;
}

/* One group: Sf from the shrunk group max, codes of (w/T)/Sf. */
static uint8_t fp4_group(const float *w, float gmax, float a, float t, uint8_t *code, float *deq)
{
	uint8_t sf = fx_f32_to_e4m3(fx_bf16_to_f32(fx_f32_to_bf16(((a * gmax) / 6.0f) / t)));
	float s;

	if (sf == 0)
		sf = 0x01;      /* underflow: smallest subnormal, never a zero scale */
	s = fx_e4m3_to_f32(sf);
	for (int i = 0; i < FX_QUANT_FP4_GROUP; i++) {
		code[i] = fx_e2m1_code_lowtie((w[i] / t) / s);
		deq[i] = (fx_e2m1_value(code[i]) * s) * t;
	}
	return sf;
}

int fx_quant_nvfp4_ref(uint8_t *codes, uint8_t *scales, float *rscale, const float *w,
		       int64_t n, int64_t k, const int64_t *member_rows, int nmember,
		       const struct fx_qsearch *search, struct fx_err *err)
{
	const int64_t G = FX_QUANT_FP4_GROUP, ng = k / G;
	double *h = NULL;
	int nsh, ret;
	const float *sh;
	int64_t one = n, row0 = 0;

	if ((ret = fxq_check("nvfp4", n, k, G, search, err)) < 0 ||
	    (ret = check_members(member_rows, nmember, n, err)) < 0 ||
	    (ret = check_finite("nvfp4", w, n, k, err)) < 0)
		return ret;
	if (!member_rows || nmember <= 1) {
		member_rows = &one;
		nmember = 1;
	}
	sh = fxq_shrink(search, &nsh);
	if (search && !(h = build_gram(search, k, G)))
		return fx_error(err, FX_E_NOMEM, "nvfp4: no memory for the search");
	memset(codes, 0, fx_quant_codes_size(n, k));
	for (int mi = 0; mi < nmember; mi++) {
		int64_t r1 = row0 + member_rows[mi];
		float t = fxq_nvfp4_tscale(absmax(w + row0 * k, (r1 - row0) * k));

		for (int64_t r = row0; r < r1; r++) {
			rscale[r] = t;
			for (int64_t g = 0; g < ng; g++) {
				const float *wg = w + r * k + g * G;
				float gmax = absmax(wg, G), deq[16];
				uint8_t c[16], bc[16], sf, bsf = 0x38;
				double best = INFINITY;

				memset(bc, 0, sizeof(bc));
				if (gmax > 0.0f) {
					for (int ci = 0; ci < nsh; ci++) {
						double e = 0.0;
						sf = fp4_group(wg, gmax, sh[ci], t, c, deq);
						if (h)
							e = fxq_group_err(h + g * G * G, wg, deq, G);
						if (ci == 0 || e < best) {
							best = e;
							bsf = sf;
							memcpy(bc, c, sizeof(bc));
						}
					}
				}
				scales[r * ng + g] = bsf;
				for (int64_t i = 0; i < G; i++)
					put_code(codes + r * (k / 2), g * G + i, bc[i]);
			}
		}
		row0 = r1;
	}
	free(h);
	return 0;
}

int fx_dequant_nvfp4_ref(float *w, const uint8_t *codes, const uint8_t *scales,
			 const float *rscale, int64_t n, int64_t k, struct fx_err *err)
{
	int ret = fxq_check("nvfp4 dequant", n, k, FX_QUANT_FP4_GROUP, NULL, err);
	if (ret < 0)
		return ret;
	for (int64_t r = 0; r < n; r++) {
		float t = rscale ? rscale[r] : 1.0f;
		for (int64_t kk = 0; kk < k; kk++) {
			float s = fx_e4m3_to_f32(scales[r * (k / FX_QUANT_FP4_GROUP) + kk / FX_QUANT_FP4_GROUP]);
			w[r * k + kk] = (fx_e2m1_value(get_code(codes + r * (k / 2), kk)) * s) * t;
		}
	}
	return 0;
}

/* ---- W4A16 ----------------------------------------------------------- */

int64_t fx_quant_adaln_src_row(int64_t r, int64_t n, int nchunk)
{
	int64_t d;
	if (nchunk <= 1)
		return r;
	d = n / nchunk;
	return (r % nchunk) * d + r / nchunk;
}

static int check_chunks(const char *what, int64_t n, int nchunk, struct fx_err *err)
{
	if (nchunk < 1 || n % nchunk)
		return fx_error(err, FX_E_ARG, "%s: %lld rows do not split into %d chunks", what,
				(long long)n, nchunk);
	return 0;
}

int fx_quant_w4a16_ref(uint8_t *codes, uint16_t *scales, uint16_t *zeros, const float *w,
		       int64_t n, int64_t k, int nchunk, const struct fx_qsearch *search,
		       struct fx_err *err)
{
	const int64_t G = FX_QUANT_W4A16_GROUP, ng = k / G;
	double *h = NULL;
	int nsh, ret;
	const float *sh;

	if ((ret = fxq_check("w4a16", n, k, G, search, err)) < 0 ||
	    (ret = check_chunks("w4a16", n, nchunk, err)) < 0 ||
	    (ret = check_finite("w4a16", w, n, k, err)) < 0)
		return ret;
	sh = fxq_shrink(search, &nsh);
	if (search && !(h = build_gram(search, k, G)))
		return fx_error(err, FX_E_NOMEM, "w4a16: no memory for the search");
	memset(codes, 0, fx_quant_codes_size(n, k));
	for (int64_t r = 0; r < n; r++) {
		const float *wr = w + fx_quant_adaln_src_row(r, n, nchunk) * k;
		for (int64_t g = 0; g < ng; g++) {
			const float *wg = wr + g * G;
			float amax = absmax(wg, G), q[64], deq[64], bq[64];
			uint16_t sb = 0x3f80, bsb = 0x3f80;
			double best = INFINITY;

			for (int64_t i = 0; i < G; i++)
				bq[i] = 0.0f;
			if (amax > 0.0f) {
				for (int c = 0; c < nsh; c++) {
					double e = 0.0;
					int_group(wg, G, amax, sh[c], 7.0f, -7.0f, 8.0f, &sb, q, deq);
					/* the stored zero is bf16(-7·S): measure what the kernel computes */
					{
						float s = fx_bf16_to_f32(sb);
						float z = fx_bf16_to_f32(fx_f32_to_bf16(-7.0f * s));
						for (int64_t i = 0; i < G; i++)
							deq[i] = (q[i] + 7.0f) * s + z;
					}
					if (h)
						e = fxq_group_err(h + g * G * G, wg, deq, G);
					if (c == 0 || e < best) {
						best = e;
						bsb = sb;
						memcpy(bq, q, sizeof(bq));
					}
				}
			}
			scales[r * ng + g] = bsb;
			zeros[r * ng + g] = fx_f32_to_bf16(-7.0f * fx_bf16_to_f32(bsb));
			for (int64_t i = 0; i < G; i++)
				put_code(codes + r * (k / 2), g * G + i, (unsigned)((int)bq[i] + 7));
		}
	}
	free(h);
	return 0;
}

int fx_dequant_w4a16_ref(float *w, const uint8_t *codes, const uint16_t *scales,
			 const uint16_t *zeros, int64_t n, int64_t k, struct fx_err *err)
{
	const int64_t ng = k / FX_QUANT_W4A16_GROUP;
	int ret = fxq_check("w4a16 dequant", n, k, FX_QUANT_W4A16_GROUP, NULL, err);
	if (ret < 0)
		return ret;
	for (int64_t r = 0; r < n; r++)
		for (int64_t kk = 0; kk < k; kk++) {
			int64_t gi = r * ng + kk / FX_QUANT_W4A16_GROUP;
			w[r * k + kk] = (float)get_code(codes + r * (k / 2), kk) * fx_bf16_to_f32(scales[gi]) +
					fx_bf16_to_f32(zeros[gi]);
		}
	return 0;
}

int fx_quant_adaln_bias(uint16_t *out, const float *b, int64_t n, int nchunk, struct fx_err *err)
{
	int ret = check_chunks("adaln bias", n, nchunk, err);
	if (ret < 0)
		return ret;
	for (int64_t r = 0; r < n; r++) {
		int j = (int)(r % nchunk);
		float d = (nchunk > 1 && (j == 1 || j == nchunk - 2)) ? 1.0f : 0.0f;
		out[r] = fx_f32_to_bf16(b[fx_quant_adaln_src_row(r, n, nchunk)] + d);
	}
	return 0;
}

/* ---- activations (what the runtime computes) ------------------------- */

int fx_actq_nvfp4_ref(float *qa, float *sa, const float *x, int64_t k, struct fx_err *err)
{
	const int64_t G = FX_QUANT_FP4_GROUP;
	if (k <= 0 || k % G)
		return fx_error(err, FX_E_ARG, "nvfp4 activations: k %lld is not a multiple of %lld",
				(long long)k, (long long)G);
	for (int64_t g = 0; g < k / G; g++) {
		float m = absmax(x + g * G, G);
		float s = m * (1.0f / 6.0f);
		if (s > 448.0f)
			s = 448.0f;
		sa[g] = fx_e4m3_to_f32(fx_f32_to_e4m3(s));
		for (int64_t i = 0; i < G; i++)
			qa[g * G + i] = s > 0.0f ? fx_e2m1_round_even(x[g * G + i] * (1.0f / s)) : 0.0f;
	}
	return 0;
}

int fx_actq_int4_ref(float *qa, float *sa, const float *x, int64_t k, bool is_unsigned,
		     struct fx_err *err)
{
	const int64_t G = FX_QUANT_INT4_GROUP;
	const float qmax = is_unsigned ? 15.0f : 7.0f, lo = is_unsigned ? 0.0f : -8.0f;
	if (k <= 0 || k % G)
		return fx_error(err, FX_E_ARG, "int4 activations: k %lld is not a multiple of %lld",
				(long long)k, (long long)G);
	for (int64_t g = 0; g < k / G; g++) {
		float m = absmax(x + g * G, G);
		float s = m * (1.0f / qmax);
		sa[g] = fx_bf16_to_f32(fx_f32_to_bf16(s));
		for (int64_t i = 0; i < G; i++) {
			float v = s > 0.0f ? rintf(x[g * G + i] * (1.0f / s)) : 0.0f;
			qa[g * G + i] = v < lo ? lo : (v > qmax ? qmax : v);
		}
	}
	return 0;
}
