#include "fx-packed-module.h"

#include "fx-family.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-pack.h"

static const struct fx_tensor *get(const struct fx_st *st, const char *p, const char *suf)
{
	char name[200];

	snprintf(name, sizeof(name), "%s.%s", p, suf);
	return fx_st_find(st, name);
}

static void vec_f32(float *dst, const struct fx_tensor *t, int64_t n, bool packed)
{
	uint16_t *tmp = malloc(n * 2);
	int64_t i;

	if (!tmp)
		return;
	if (packed)
		fx_unpack_vector(tmp, t->data, n, NULL);
	else
		memcpy(tmp, t->data, n * 2);
	for (i = 0; i < n; i++)
		dst[i] = fx_bf16_to_f32(tmp[i]);
	free(tmp);
}

bool fx_packed_is_fp4(const struct fx_st *st)
{
	size_t i;

	for (i = 0; i < fx_st_count(st); i++)
		if (fx_st_at(st, i)->dtype == FX_F8_E4M3)
			return true;
	return false;
}

void fx_packed_module_release(struct fx_packed_module *pm)
{
	free(pm->scales16);
	free(pm->zeros16);
	free(pm->bias);
	free(pm->codes);
	free(pm->wscales);
	free(pm->smooth);
	free(pm->ld);
	free(pm->lu);
	free(pm->wc);
	memset(pm, 0, sizeof(*pm));
}

static int load_adaln(struct fx_packed_module *pm, const struct fx_st *st, const struct fx_group *g,
		      struct fx_err *err)
{
	int64_t n = g->n, k = g->k;
	const struct fx_tensor *tq = get(st, g->name, "qweight"), *ts = get(st, g->name, "wscales"),
			       *tz = get(st, g->name, "wzeros"), *tb = get(st, g->name, "bias");
	int ret;

	if (!tq || !ts || !tz || !tb || tb->nbytes != (size_t)n * 2)
		return 1;
	pm->codes = malloc(n * k / 2);
	pm->scales16 = malloc(n * k / 64 * 2);
	pm->zeros16 = malloc(n * k / 64 * 2);
	pm->bias = malloc(n * 4);
	if (!pm->codes || !pm->scales16 || !pm->zeros16 || !pm->bias)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	if ((ret = fx_unpack_w4a16_weight(pm->codes, tq->data, n, k, err)) < 0 ||
	    (ret = fx_unpack_w4a16_scales(pm->scales16, ts->data, n, k, err)) < 0 ||
	    (ret = fx_unpack_w4a16_scales(pm->zeros16, tz->data, n, k, err)) < 0)
		return ret;
	vec_f32(pm->bias, tb, n, false);
	return 0;
}

int fx_packed_module_load(struct fx_packed_module *pm, const struct fx_st *st,
			  const struct fx_group *g, bool fp4, struct fx_err *err)
{
	int64_t n = g->n, k = g->k, r, i, j;
	const struct fx_tensor *tq, *ts, *tb, *tsm, *td, *tu, *twt, *twc;
	uint16_t *tmp = NULL;
	int ret;

	memset(pm, 0, sizeof(*pm));
	pm->g = g;
	if (g->kind == FX_GROUP_ADALN) {
		pm->adaln = true;
		ret = load_adaln(pm, st, g, err);
		goto out;
	}
	tq = get(st, g->name, "qweight");
	ts = get(st, g->name, "wscales");
	tb = get(st, g->name, "bias");
	tsm = get(st, g->name, g->family->packed->smooth);
	td = get(st, g->name, g->family->packed->down);
	tu = get(st, g->name, g->family->packed->up);
	twt = get(st, g->name, "wtscale");
	twc = get(st, g->name, "wcscales");
	if (!tq || !ts || !tb || !tsm || !td || !tu || td->ndim != 2 || tu->ndim != 2 ||
	    tq->nbytes != (size_t)n * k / 2 || tb->nbytes != (size_t)n * 2 || tsm->nbytes != (size_t)k * 2 ||
	    ts->nbytes != (size_t)n * (k / (fp4 ? 16 : 64)) * (fp4 ? 1 : 2) || td->shape[0] != k ||
	    tu->shape[0] != n || td->shape[1] != tu->shape[1])
		return 1;   /* incomplete or misshapen: the completeness audit says which */
	r = td->shape[1];
	pm->codes = malloc(n * k / 2);
	pm->wscales = malloc(n * k / 16 * 2);
	pm->smooth = malloc(k * 4);
	pm->bias = malloc(n * 4);
	pm->ld = malloc((k * r + 1) * 4);
	pm->lu = malloc((n * r + 1) * 4);
	pm->wc = malloc(n * 4);
	tmp = malloc(((n > k ? n : k) * (r + 1)) * 2);
	if (!pm->codes || !pm->wscales || !pm->smooth || !pm->bias || !pm->ld || !pm->lu || !pm->wc || !tmp) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = fx_unpack_w4a4_weight(pm->codes, tq->data, n, k, err)) < 0)
		goto out;
	ret = fp4 ? fx_unpack_fp4_wscales(pm->wscales, ts->data, n, k, err)
		  : fx_unpack_int4_wscales(pm->wscales, ts->data, n, k, err);
	if (ret < 0)
		goto out;
	vec_f32(pm->smooth, tsm, k, true);
	vec_f32(pm->bias, tb, n, true);
	if (r > 0) {
		fx_unpack_lora_down(tmp, td->data, k, r, NULL);   /* (r, k) */
		for (j = 0; j < r; j++)
			for (i = 0; i < k; i++)
				pm->ld[i * r + j] = fx_bf16_to_f32(tmp[j * k + i]);
		fx_unpack_lora_up(tmp, tu->data, n, r, NULL);
		for (i = 0; i < n * r; i++)
			pm->lu[i] = fx_bf16_to_f32(tmp[i]);
	}
	pm->mod.prec = fp4 ? FX_QPREC_NVFP4 : FX_QPREC_INT4;
	pm->mod.n = n;
	pm->mod.k = k;
	pm->mod.r = r;
	pm->mod.codes = pm->codes;
	pm->mod.wscales = pm->wscales;
	pm->mod.smooth = pm->smooth;
	pm->mod.bias = pm->bias;
	pm->mod.lora_down = r ? pm->ld : NULL;
	pm->mod.lora_up = r ? pm->lu : NULL;
	pm->mod.fc2_shift = !fp4 && g->gelu_input;
	if (twt && twt->nbytes >= 2)
		pm->mod.wtscale = twt->dtype == FX_F32 ? *(const float *)twt->data
						       : fx_bf16_to_f32(*(const uint16_t *)twt->data);
	if (twc && twc->nbytes == (size_t)n * 2) {
		vec_f32(pm->wc, twc, n, true);
		pm->mod.wcscales = pm->wc;
	}
	ret = 0;
out:
	free(tmp);
	if (ret != 0)
		fx_packed_module_release(pm);
	return ret;
}

int fx_packed_module_forward(const struct fx_packed_module *pm, const float *x, int64_t m,
			     float *y, struct fx_err *err)
{
	const struct fx_group *g = pm->g;
	int64_t n = g->n, i, r;
	float *t;
	int ret, S;

	if (!pm->adaln)
		return fx_rt_w4a4_forward_ref(y, &pm->mod, x, m, 0, err);
	t = malloc(m * n * sizeof(float));
	if (!t)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	ret = fx_rt_w4a16_forward_ref(t, pm->codes, pm->scales16, pm->zeros16, pm->bias, n, g->k, x, m, err);
	S = g->adaln_chunks;
	for (r = 0; ret == 0 && r < m; r++)
		for (i = 0; i < n; i++) {
			int64_t src = fx_quant_adaln_src_row(i, n, S);   /* diffusers row of runtime row i */
			int j = (int)(src / (n / S));
			float v = t[r * n + i];

			/* the runtime computes norm·scale; the model norm·(1 + scale) */
			if (j == 1 || j == S - 2)
				v -= 1.0f;
			y[r * n + src] = v;
		}
	free(t);
	return ret;
}
