#include "fx-audit-packed.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-meta.h"
#include "fx-io.h"
#include <jansson.h>
#include <unistd.h>

struct mod {
	const char *name;
	int nmul, kmul;      /* N = nmul·D, K = kmul·D */
	bool adaln, qkv;
};

static const struct mod double_mods[] = {
	{ "norm1.linear", 6, 1, true, false }, { "norm1_context.linear", 6, 1, true, false },
	{ "qkv_proj", 3, 1, false, true }, { "qkv_proj_context", 3, 1, false, true },
	{ "out_proj", 1, 1, false, false }, { "out_proj_context", 1, 1, false, false },
	{ "mlp_fc1", 4, 1, false, false }, { "mlp_fc2", 1, 4, false, false },
	{ "mlp_context_fc1", 4, 1, false, false }, { "mlp_context_fc2", 1, 4, false, false },
};
static const struct mod single_mods[] = {
	{ "norm.linear", 3, 1, true, false }, { "qkv_proj", 3, 1, false, true },
	{ "mlp_fc1", 4, 1, false, false }, { "out_proj", 1, 1, false, false },
	{ "mlp_fc2", 1, 4, false, false },
};
static const char *const double_norms[] = { "norm_q.weight", "norm_k.weight",
					    "norm_added_q.weight", "norm_added_k.weight" };
static const char *const top_plain[] = {
	"x_embedder.weight", "x_embedder.bias", "context_embedder.weight", "context_embedder.bias",
	"time_text_embed.timestep_embedder.linear_1.weight", "time_text_embed.timestep_embedder.linear_2.weight",
	"time_text_embed.text_embedder.linear_1.weight", "time_text_embed.text_embedder.linear_2.weight",
	"norm_out.linear.weight", "norm_out.linear.bias", "proj_out.weight", "proj_out.bias",
};
/* diffusers names that must not appear inside a block of a packed file */
static const char *const bf16_leftovers[] = {
	"attn.to_q.weight", "attn.to_k.weight", "attn.to_v.weight", "attn.add_q_proj.weight",
	"attn.add_k_proj.weight", "attn.add_v_proj.weight", "attn.to_out.0.weight",
	"attn.to_add_out.weight", "ff.net.0.proj.weight", "ff.net.2.weight",
	"ff_context.net.0.proj.weight", "ff_context.net.2.weight", "proj_mlp.weight",
	"proj_out.weight", "norm1.linear.weight", "norm1_context.linear.weight", "norm.linear.weight",
};

bool fx_audit_is_packed(const struct fx_st *st)
{
	size_t i;

	for (i = 0; i < fx_st_count(st); i++) {
		const char *n = fx_st_at(st, i)->name;

		if ((!strncmp(n, "transformer_blocks.", 19) || !strncmp(n, "single_transformer_blocks.", 26)) &&
		    strstr(n, ".qweight"))
			return true;
	}
	return false;
}

static int max_block(const struct fx_st *st, const char *prefix)
{
	size_t i, pl = strlen(prefix);
	int mx = -1;

	for (i = 0; i < fx_st_count(st); i++) {
		const char *n = fx_st_at(st, i)->name;
		char *end;
		long v;

		if (strncmp(n, prefix, pl))
			continue;
		v = strtol(n + pl, &end, 10);
		if (end != n + pl && *end == '.' && v > mx && v < 100000)
			mx = (int)v;
	}
	return mx;
}

static void where(char *buf, size_t cap, const char *mod, bool single, int b)
{
	snprintf(buf, cap, "%s (%sblock %d)", mod, single ? "single " : "", b);
}

/* Values that make the runtime produce noise or NaN. */
static const char *bad_values(const struct fx_tensor *t, bool scale)
{
	size_t i, n = t->nbytes;
	bool allzero = true;

	if (t->dtype == FX_BF16) {
		const uint16_t *h = t->data;

		for (i = 0; i < n / 2; i++) {
			float v = fx_bf16_to_f32(h[i]);

			if (!isfinite(v))
				return "NaN or Inf";
			if (v != 0)
				allzero = false;
			if (scale && v < 0)
				return "negative scale";
		}
	} else if (t->dtype == FX_F8_E4M3) {
		const uint8_t *c = t->data;

		for (i = 0; i < n; i++) {
			if ((c[i] & 0x7f) == 0x7f)
				return "NaN e4m3 scale";
			if (c[i] & 0x80)
				return "e4m3 scale with the sign bit set";
			if (c[i])
				allzero = false;
		}
	} else {
		return NULL;
	}
	return scale && allzero && n ? "all scales zero" : NULL;
}

struct req {
	const char *suffix;
	enum fx_dtype dt;
	int ndim;
	int64_t d0, d1;    /* -1: any (rank) */
	bool scale;        /* value checks of a scale */
};

static void check_module(struct fx_audit *a, const struct fx_st *st, const char *prefix, bool single,
			 int b, const struct mod *m, int64_t D, bool fp4, int *rank, size_t *nbad)
{
	int64_t N = m->nmul * D, K = m->kmul * D;
	struct req reqs[10];
	char name[200], w[96], missing[256] = "", detail[160] = "", sa[48], sb[48];
	int nr = 0, i;
	bool ok = true, have_tscale;
	const struct fx_tensor *t;
	int r = -1;

	if (m->adaln) {
		reqs[nr++] = (struct req){ "qweight", FX_I32, 2, N / 4, K / 2, false };
		reqs[nr++] = (struct req){ "wscales", FX_BF16, 2, K / 64, N, true };
		reqs[nr++] = (struct req){ "wzeros", FX_BF16, 2, K / 64, N, false };
		reqs[nr++] = (struct req){ "bias", FX_BF16, 1, N, 0, false };
	} else {
		reqs[nr++] = (struct req){ "qweight", FX_I8, 2, N, K / 2, false };
		reqs[nr++] = fp4 ? (struct req){ "wscales", FX_F8_E4M3, 2, K / 16, N, true }
				 : (struct req){ "wscales", FX_BF16, 2, K / 64, N, true };
		reqs[nr++] = (struct req){ "bias", FX_BF16, 1, N, 0, false };
		reqs[nr++] = (struct req){ "smooth", FX_BF16, 1, K, 0, true };
		reqs[nr++] = (struct req){ "smooth_orig", FX_BF16, 1, K, 0, true };
		reqs[nr++] = (struct req){ "lora_down", FX_BF16, 2, K, -1, false };
		reqs[nr++] = (struct req){ "lora_up", FX_BF16, 2, N, -1, false };
	}
	where(w, sizeof(w), m->name, single, b);
	for (i = 0; i < nr; i++) {
		const char *bad;

		snprintf(name, sizeof(name), "%s.%s.%s", prefix, m->name, reqs[i].suffix);
		t = fx_st_find(st, name);
		if (!t) {
			size_t l = strlen(missing);

			snprintf(missing + l, sizeof(missing) - l, "%s%s", l ? ", " : "", reqs[i].suffix);
			ok = false;
			continue;
		}
		if (t->dtype != reqs[i].dt || t->ndim != reqs[i].ndim || t->shape[0] != reqs[i].d0 ||
		    (reqs[i].ndim == 2 && reqs[i].d1 >= 0 && t->shape[1] != reqs[i].d1)) {
			int64_t shp[2] = { reqs[i].d0, reqs[i].d1 };

			fx_audit_add(a, FX_SEV_ERROR, "shape", name, "is %s %s, expected %s %s",
				     fx_dtype_name(t->dtype), fx_shape_str(sa, sizeof(sa), t->ndim, t->shape),
				     fx_dtype_name(reqs[i].dt), fx_shape_str(sb, sizeof(sb), reqs[i].ndim, shp));
			ok = false;
			continue;
		}
		if (reqs[i].ndim == 2 && reqs[i].d1 < 0) {
			int tr = (int)t->shape[1];

			if (r >= 0 && tr != r) {
				fx_audit_add(a, FX_SEV_ERROR, "rank", w, "lora_down has rank %d, lora_up %d", r, tr);
				ok = false;
			}
			r = tr;
		}
		if ((bad = bad_values(t, reqs[i].scale))) {
			fx_audit_add(a, FX_SEV_ERROR, "values", name, "%s", bad);
			ok = false;
		}
		if (!strcmp(reqs[i].suffix, "smooth") && t->dtype == FX_BF16) {
			const uint16_t *h = t->data;
			int64_t k;

			for (k = 0; k < t->shape[0]; k++)
				if (!(fx_bf16_to_f32(h[k]) > 0)) {
					fx_audit_add(a, FX_SEV_ERROR, "values", name, "smooth %g <= 0 at %lld",
						     fx_bf16_to_f32(h[k]), (long long)k);
					ok = false;
					break;
				}
		}
	}
	if (!m->adaln && fp4) {
		const struct fx_tensor *tc, *tt;

		snprintf(name, sizeof(name), "%s.%s.wcscales", prefix, m->name);
		tc = fx_st_find(st, name);
		snprintf(name, sizeof(name), "%s.%s.wtscale", prefix, m->name);
		tt = fx_st_find(st, name);
		have_tscale = tc || tt;
		if (!have_tscale) {
			size_t l = strlen(missing);

			snprintf(missing + l, sizeof(missing) - l, "%swtscale or wcscales", l ? ", " : "");
			ok = false;
		}
		if (tc && (tc->dtype != FX_BF16 || tc->ndim != 1 || tc->shape[0] != N)) {
			fx_audit_add(a, FX_SEV_ERROR, "shape", w, "wcscales must be BF16 [%lld]", (long long)N);
			ok = false;
		}
		if (tt && (tt->ndim != 1 || tt->shape[0] != 1)) {
			fx_audit_add(a, FX_SEV_ERROR, "shape", w, "wtscale must have one element");
			ok = false;
		}
		if (tc && bad_values(tc, true)) {
			fx_audit_add(a, FX_SEV_ERROR, "values", w, "wcscales: %s", bad_values(tc, true));
			ok = false;
		}
	}
	if (!m->adaln && r >= 0) {
		if (r % 16) {
			fx_audit_add(a, FX_SEV_ERROR, "rank", w, "rank %d is not a multiple of 16", r);
			ok = false;
		}
		if (*rank < 0)
			*rank = r;
		else if (r != *rank) {
			fx_audit_add(a, FX_SEV_ERROR, "rank", w, "rank %d differs from the other modules (%d)", r, *rank);
			ok = false;
		}
		if (r > 0) {
			snprintf(name, sizeof(name), "%s.%s.lora_up", prefix, m->name);
			t = fx_st_find(st, name);
			if (t && t->dtype == FX_BF16) {
				const uint16_t *h = t->data;
				size_t k;
				bool z = true;

				for (k = 0; k < t->nbytes / 2 && z; k++)
					z = (h[k] & 0x7fff) == 0;
				if (z) {
					fx_audit_add(a, FX_SEV_ERROR, "values", w,
						     "lora_up is all zero while rank is %d: the low-rank branch is lost", r);
					ok = false;
				}
			}
		}
		snprintf(detail, sizeof(detail), ": lora_down=[%lld,%d] lora_up=[%lld,%d]",
			 (long long)K, r, (long long)N, r);
	}
	if (missing[0]) {
		fx_audit_line(a, "[MISSING] %s: %s", w, missing);
		fx_audit_add(a, FX_SEV_ERROR, "missing", w, "%s missing", missing);
	} else if (!ok) {
		fx_audit_line(a, "[BAD] %s", w);
	} else {
		fx_audit_line(a, "[OK] %s%s", w, detail);
	}
	if (!ok)
		(*nbad)++;
}

static void audit_packed(struct fx_audit *a, const struct fx_st *st, const struct fx_st *pl)
{
	const struct fx_tensor *x = fx_st_find(pl, "x_embedder.weight");
	int nd = max_block(st, "transformer_blocks.") + 1, ns = max_block(st, "single_transformer_blocks.") + 1;
	int b, rank = -1;
	size_t i, j, nbad = 0, nmod = 0;
	bool fp4 = false;
	int64_t D;
	char prefix[64], name[200];

	for (i = 0; i < fx_st_count(st); i++)
		if (fx_st_at(st, i)->dtype == FX_F8_E4M3)
			fp4 = true;
	if (!x || x->ndim != 2) {
		fx_audit_add(a, FX_SEV_ERROR, "missing", "x_embedder.weight",
			     "unquantized layers missing (x_embedder.weight): cannot size the model");
		return;
	}
	D = x->shape[0];
	for (i = 0; i < sizeof(top_plain) / sizeof(top_plain[0]); i++) {
		const struct fx_tensor *t = fx_st_find(pl, top_plain[i]);

		if (!t)
			fx_audit_add(a, FX_SEV_ERROR, "missing", top_plain[i], "unquantized tensor missing");
		else if (t->dtype != FX_BF16)
			fx_audit_add(a, FX_SEV_ERROR, "dtype", top_plain[i], "is %s, expected BF16",
				     fx_dtype_name(t->dtype));
	}
	for (b = 0; b < nd + ns; b++) {
		bool single = b >= nd;
		int bi = single ? b - nd : b;
		const struct mod *mods = single ? single_mods : double_mods;
		size_t nm = single ? FX_ARRAY_SIZE(single_mods) : FX_ARRAY_SIZE(double_mods);

		snprintf(prefix, sizeof(prefix), "%s.%d", single ? "single_transformer_blocks" : "transformer_blocks", bi);
		for (j = 0; j < nm; j++, nmod++)
			check_module(a, st, prefix, single, bi, &mods[j], D, fp4, &rank, &nbad);
		for (j = 0; j < (single ? 2u : 4u); j++) {
			const struct fx_tensor *t;

			snprintf(name, sizeof(name), "%s.%s", prefix, double_norms[j]);
			t = fx_st_find(st, name);
			if (!t)
				fx_audit_add(a, FX_SEV_ERROR, "missing", name, "QK-norm weight missing (noise images)");
			else if (t->dtype != FX_BF16 || t->ndim != 1 || t->shape[0] != 128)
				fx_audit_add(a, FX_SEV_ERROR, "shape", name, "must be BF16 [128]");
		}
		for (j = 0; j < FX_ARRAY_SIZE(bf16_leftovers); j++) {
			snprintf(name, sizeof(name), "%s.%s", prefix, bf16_leftovers[j]);
			if (fx_st_find(st, name))
				fx_audit_add(a, FX_SEV_ERROR, "bf16", name,
					     "left in BF16 where a 4-bit module belongs (loaders report 'qweight has no src')");
		}
	}
	fx_audit_line(a, "%zu of %zu modules complete, %s, rank %d, %d double + %d single blocks",
		      nmod - nbad, nmod, fp4 ? "NVFP4" : "INT4", rank < 0 ? 0 : rank, nd, ns);
}

void fx_audit_packed(struct fx_audit *a, const struct fx_st *st)
{
	audit_packed(a, st, st);
	fx_meta_audit(st, a);
}

void fx_audit_packed_two(struct fx_audit *a, const struct fx_st *blocks, const struct fx_st *plain,
			 const char *dir)
{
	char path[4096], *txt = NULL;
	json_t *cfg;

	audit_packed(a, blocks, plain);
	snprintf(path, sizeof(path), "%s/config.json", dir);
	if (fx_read_file(&txt, NULL, path, 1 << 20, NULL) < 0) {
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "config.json",
			     "no config.json: the folder form needs the diffusers config beside the two files "
			     "(or merge it into one file with fx-meta's metadata)");
	} else if (!(cfg = json_loads(txt, 0, NULL)) || !json_is_object(cfg)) {
		fx_audit_add(a, FX_SEV_ERROR, "metadata", "config.json", "config.json is not a JSON object");
	} else {
		json_decref(cfg);
	}
	free(txt);
	snprintf(path, sizeof(path), "%s/comfy_config.json", dir);
	if (access(path, R_OK) != 0)
		fx_audit_add(a, FX_SEV_WARN, "metadata", "comfy_config.json",
			     "no comfy_config.json: ComfyUI-nunchaku then guesses the config from the folder name");
	fx_audit_line(a, "legacy two-file form (transformer_blocks.safetensors + unquantized_layers.safetensors)");
}
