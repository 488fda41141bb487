#include "fx-cond.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fx-hash.h"
#include "fx-io.h"
#include "fx-log.h"
#include "fx-file.h"
#include "fx-stage.h"
#include "fx-textenc.h"
#include "fx-tok-clip.h"
#include "fx-tok-t5.h"
#include "fx-tok-unicode.h"

#define MAX_PROMPTS_FILE (64u << 20)
#define TOOL "fx-encode"

/* ---- locating the encoders and tokenizers --------------------------------- */

static bool is_dir(const char *p)
{
	struct stat sb;

	return p && stat(p, &sb) == 0 && S_ISDIR(sb.st_mode);
}

static bool is_file(const char *p)
{
	struct stat sb;

	return p && stat(p, &sb) == 0 && S_ISREG(sb.st_mode);
}

/* The encoder folder of `given`: given/sub when that exists, else given;
 * *sib: the tokenizer folder to try after the encoder folder itself. */
static int encoder_dir(char **dir, char **sib, const char *given, const char *sub, const char *toksub,
		       struct fx_err *err)
{
	char *inner = fx_path_join(given, sub), *up;

	*dir = *sib = NULL;
	if (!inner)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	if (!is_dir(given)) {
		free(inner);
		return fx_error(err, FX_E_IO, "cannot open '%s': not a folder", given);
	}
	if (is_dir(inner)) {
		*dir = inner;
		*sib = fx_path_join(given, toksub);
	} else {
		free(inner);
		*dir = strdup(given);
		up = fx_path_join(given, "..");
		*sib = up ? fx_path_join(up, toksub) : NULL;
		free(up);
	}
	if (!*dir || !*sib) {
		free(*dir);
		free(*sib);
		*dir = *sib = NULL;
		return fx_error(err, FX_E_NOMEM, "out of memory");
	}
	return 0;
}

int fx_cond_locate(struct fx_cond_paths *p, const char *t5, const char *clip, const char *t5_tok,
		   const char *clip_tok, struct fx_err *err)
{
	char *sib = NULL;
	int ret;

	memset(p, 0, sizeof(*p));
	if ((ret = encoder_dir(&p->t5_dir, &sib, t5, "text_encoder_2", "tokenizer_2", err)) < 0)
		goto out;
	if (t5_tok && is_file(t5_tok)) {
		if (!(p->t5_tok = strdup(t5_tok))) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
	} else if (t5_tok && !is_dir(t5_tok)) {
		ret = fx_error(err, FX_E_IO, "cannot open T5 tokenizer '%s': no such file or folder", t5_tok);
		goto out;
	} else {
		const char *where[2] = { t5_tok ? t5_tok : p->t5_dir, t5_tok ? NULL : sib };
		static const char *const names[] = { "tokenizer.json", "spiece.model" };

		for (int w = 0; w < 2 && where[w] && !p->t5_tok; w++)
			for (size_t k = 0; k < FX_ARRAY_SIZE(names) && !p->t5_tok; k++) {
				char *f = fx_path_join(where[w], names[k]);

				if (is_file(f))
					p->t5_tok = f;
				else
					free(f);
			}
		if (!p->t5_tok && t5_tok) {
			ret = fx_error(err, FX_E_IO, "no T5 tokenizer: no tokenizer.json or spiece.model in '%s'",
				       t5_tok);
			goto out;
		}
		if (!p->t5_tok) {
			ret = fx_error(err, FX_E_IO, "no T5 tokenizer: no tokenizer.json or spiece.model in '%s' "
				       "or '%s'", p->t5_dir, sib);
			goto out;
		}
	}
	free(sib);
	sib = NULL;
	if ((ret = encoder_dir(&p->clip_dir, &sib, clip, "text_encoder", "tokenizer", err)) < 0)
		goto out;
	{
		const char *where[2] = { clip_tok ? clip_tok : p->clip_dir, clip_tok ? NULL : sib };

		for (int w = 0; w < 2 && where[w] && !p->clip_tok; w++) {
			char *v = fx_path_join(where[w], "vocab.json"), *m = fx_path_join(where[w], "merges.txt");

			if (is_file(v) && is_file(m))
				p->clip_tok = strdup(where[w]);
			free(v);
			free(m);
		}
		if (!p->clip_tok && clip_tok) {
			ret = fx_error(err, FX_E_IO, "no CLIP tokenizer: no vocab.json and merges.txt in '%s'",
				       clip_tok);
			goto out;
		}
		if (!p->clip_tok) {
			ret = fx_error(err, FX_E_IO, "no CLIP tokenizer: no vocab.json and merges.txt in '%s' "
				       "or '%s'", p->clip_dir, sib);
			goto out;
		}
	}
	ret = 0;
out:
	free(sib);
	if (ret < 0)
		fx_cond_paths_release(p);
	return ret;
}

void fx_cond_paths_release(struct fx_cond_paths *p)
{
	free(p->t5_dir);
	free(p->t5_tok);
	free(p->clip_dir);
	free(p->clip_tok);
	memset(p, 0, sizeof(*p));
}

/* ---- prompts -------------------------------------------------------------- */

void fx_cond_prompts_free(char **prompts, int n)
{
	for (int i = 0; prompts && i < n; i++)
		free(prompts[i]);
	free(prompts);
}

int fx_cond_read_prompts(char ***prompts, int *n, const char *path, struct fx_err *err)
{
	char *data = NULL, *p, **v = NULL;
	size_t len = 0, line = 0;
	int cnt = 0, cap = 0, ret;

	*prompts = NULL;
	*n = 0;
	if ((ret = fx_read_file(&data, &len, path, MAX_PROMPTS_FILE, err)) < 0)
		return ret;
	if (memchr(data, '\0', len)) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': holds a NUL byte: not a text file", path);
		goto out;
	}
	for (p = data; p < data + len; ) {
		char *nl = memchr(p, '\n', (size_t)(data + len - p)), *s = p;
		size_t l = nl ? (size_t)(nl - p) : (size_t)(data + len - p);

		p = nl ? nl + 1 : data + len;
		line++;
		if (l && s[l - 1] == '\r')
			l--;
		/* a line of spaces is a prompt, as FluxPipeline would encode it
		 * (the tokens of the empty prompt); an empty line separates */
		if (l == 0 || s[0] == '#')
			continue;
		if (!fx_utf8_valid(s, l)) {
			ret = fx_error(err, FX_E_FORMAT, "'%s' line %zu: not valid UTF-8", path, line);
			goto out;
		}
		if (cnt == cap) {
			int nc = cap ? cap * 2 : 64;
			char **nv = realloc(v, (size_t)nc * sizeof(*nv));

			if (!nv) {
				ret = fx_error(err, FX_E_NOMEM, "out of memory");
				goto out;
			}
			v = nv;
			cap = nc;
		}
		if (!(v[cnt] = strndup(s, l))) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		cnt++;
	}
	if (cnt == 0) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': no prompts (empty lines and '#' lines are skipped)", path);
		goto out;
	}
	*prompts = v;
	*n = cnt;
	v = NULL;
	ret = 0;
out:
	fx_cond_prompts_free(v, cnt);
	free(data);
	return ret;
}

/* ---- the stage -------------------------------------------------------------- */

/* The previous output, when its rows can be reused. */
struct old {
	struct fx_st *st;
	const struct fx_tensor *pe, *pp;
	json_t *layers;
};

static void old_open(struct old *o, const char *path, int64_t L, int64_t dt, int64_t dc)
{
	const struct fx_tensor *pe, *pp;
	const char *ls;

	memset(o, 0, sizeof(*o));
	if (fx_st_open(&o->st, path, NULL) < 0)
		return;
	pe = fx_st_find(o->st, "prompt_embeds");
	pp = fx_st_find(o->st, "pooled_prompt_embeds");
	ls = fx_st_meta(o->st, "fx.layers");
	if (fx_file_expect(o->st, FX_FMT_COND, TOOL, NULL) < 0 || fx_file_check_crc(o->st, NULL) < 0 ||
	    !pe || !pp || !ls || pe->dtype != FX_BF16 || pp->dtype != FX_BF16 || pe->ndim != 3 ||
	    pp->ndim != 2 || pe->shape[1] != L || pe->shape[2] != dt || pp->shape[1] != dc ||
	    pp->shape[0] != pe->shape[0] || !(o->layers = json_loads(ls, 0, NULL)) ||
	    !json_is_object(o->layers)) {
		json_decref(o->layers);
		fx_st_close(o->st);
		memset(o, 0, sizeof(*o));
		return;
	}
	o->pe = pe;
	o->pp = pp;
}

static void old_close(struct old *o)
{
	json_decref(o->layers);
	fx_st_close(o->st);
}

/* Row of the previous output holding this recipe, or -1. */
static int64_t old_find(const struct old *o, const char *recipe)
{
	const char *k;
	json_t *v;

	if (!o->layers)
		return -1;
	json_object_foreach(o->layers, k, v) {
		long long row;
		char *end;

		if (!json_is_string(v) || strcmp(json_string_value(v), recipe) || strncmp(k, "prompt.", 7))
			continue;
		row = strtoll(k + 7, &end, 10);
		if (*end == '\0' && row >= 0 && row < o->pe->shape[0])
			return (int64_t)row;
	}
	return -1;
}

/* Identity of a tokenizer: its files' content and the ids it adds. */
static int tokenizer_id(char out[65], const char *const *files, int nfiles, const char *extra,
			struct fx_err *err)
{
	struct fx_sha256 *h = fx_sha256_new();
	int ret = 0;

	for (int i = 0; i < nfiles; i++) {
		char one[65];

		if ((ret = fx_file_sha256(one, files[i], err)) < 0)
			break;
		fx_sha256_update(h, one, 64);
	}
	fx_sha256_update(h, extra, strlen(extra));
	fx_sha256_final(h, out);
	return ret;
}

struct prog_ctx {
	struct fx_progress *p;
};

static void on_layer(void *ctx, int done, int total)
{
	struct prog_ctx *c = ctx;

	(void)done;
	(void)total;
	fx_progress_step(c->p, 1, 0);
}

struct job {
	struct fx_stage *s;
	const struct old *old;
	char **names, **recipes;
	const int64_t *src;       /* old row or -1 */
	size_t pe_row, pp_row;    /* bytes per row */
	int64_t next;             /* next row to write */
};

/* Writes the reused rows [j->next, upto). */
static int flush_reused(struct job *j, int64_t upto, struct fx_err *err)
{
	int ret;

	for (; j->next < upto; j->next++) {
		int64_t r = j->src[j->next];

		FX_ASSERT(r >= 0);
		if ((ret = fx_stage_write(j->s, "prompt_embeds",
					  (const char *)j->old->pe->data + (size_t)r * j->pe_row, j->pe_row, err)) < 0 ||
		    (ret = fx_stage_write(j->s, "pooled_prompt_embeds",
					  (const char *)j->old->pp->data + (size_t)r * j->pp_row, j->pp_row, err)) < 0)
			return ret;
		fx_stage_layer(j->s, j->names[j->next], j->recipes[j->next], true);
	}
	return 0;
}

static void to_bf16(uint16_t *dst, const float *src, size_t n)
{
	#pragma omp parallel for schedule(static) if (n > 65536)
	for (size_t i = 0; i < n; i++)
		dst[i] = fx_f32_to_bf16(src[i]);
}

int fx_cond_run(const struct fx_cond_opts *o, bool *up_to_date, struct fx_stage **stage_out,
		struct fx_err *err)
{
	const int L = o->max_len > 0 ? o->max_len : FX_COND_MAX_LEN_DEFAULT;
	int N = o->blocks_of > 0 ? o->blocks_of : FX_COND_BLOCKS_OF_DEFAULT;
	struct fx_cond_paths paths = {0};
	struct fx_tok_t5 *tok5 = NULL;
	struct fx_tok_clip *tokc = NULL;
	struct fx_t5 *t5 = NULL;
	struct fx_clip *clip = NULL;
	struct fx_stage *s = NULL;
	struct fx_device dev;
	char note[256] = "";
	struct old old = {0};
	struct job job = {0};
	struct fx_progress prog;
	struct prog_ctx pc = { &prog };
	char **prompts = NULL, **names = NULL, **recipes = NULL, *inputs_js = NULL;
	int32_t *ids5 = NULL, *idsc = NULL, *bids5 = NULL, *bidsc = NULL;
	int64_t *src = NULL, *batch = NULL, dt, dc, ncompute = 0;
	float *out5 = NULL, *outc = NULL;
	uint16_t *row16 = NULL;
	json_t *pj = NULL, *inputs = NULL;
	int P = 0, ret, trunc5 = 0, truncc = 0, first5 = -1, firstc = -1;
	double t_t5 = 0, t_clip = 0, t0;

	*up_to_date = false;
	if (stage_out)
		*stage_out = NULL;
	if ((ret = fx_cond_read_prompts(&prompts, &P, o->prompts, err)) < 0 ||
	    (ret = fx_cond_locate(&paths, o->t5, o->clip, o->t5_tok, o->clip_tok, err)) < 0 ||
	    (ret = fx_tok_t5_open(&tok5, paths.t5_tok, err)) < 0 ||
	    (ret = fx_tok_clip_open(&tokc, paths.clip_tok, err)) < 0 ||
	    (ret = fx_t5_open(&t5, paths.t5_dir, err)) < 0 || (ret = fx_clip_open(&clip, paths.clip_dir, err)) < 0 ||
	    (ret = fx_device_select(&dev, o->device, note, sizeof(note), err)) < 0)
		goto out;
	if (note[0])
		fx_log_info("%s", note);
	if ((ret = fx_t5_set_device(t5, &dev, err)) < 0 || (ret = fx_clip_set_device(clip, &dev, err)) < 0)
		goto out;
	/* the GPU is fast enough that the layer uploads dominate: more prompts a pass */
	if (o->blocks_of <= 0 && dev.kind == FX_DEV_CUDA)
		N = FX_COND_BLOCKS_OF_CUDA;
	fx_log_debug("encoding on %s", dev.desc);
	dt = fx_t5_config(t5)->d_model;
	dc = fx_clip_config(clip)->hidden;
	if (fx_clip_config(clip)->max_pos < FX_CLIP_LEN) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': the CLIP text model takes %d positions, fewer than %d",
			       paths.clip_dir, fx_clip_config(clip)->max_pos, FX_CLIP_LEN);
		goto out;
	}
	fx_log_debug("T5 tokenizer '%s', CLIP tokenizer '%s'", fx_tok_t5_path(tok5), paths.clip_tok);

	/* token ids of every prompt */
	ids5 = malloc((size_t)P * (size_t)L * sizeof(*ids5));
	idsc = malloc((size_t)P * FX_CLIP_LEN * sizeof(*idsc));
	names = calloc((size_t)P, sizeof(*names));
	recipes = calloc((size_t)P, sizeof(*recipes));
	src = malloc((size_t)P * sizeof(*src));
	if (!ids5 || !idsc || !names || !recipes || !src) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory for %d prompts", P);
		goto out;
	}
	for (int i = 0; i < P; i++) {
		int32_t *raw = NULL;
		size_t n5 = 0, nc = 0;

		if ((ret = fx_tok_t5_tokenize(tok5, prompts[i], &raw, &n5, err)) < 0)
			goto out;
		free(raw);
		raw = NULL;
		if ((ret = fx_tok_clip_tokenize(tokc, prompts[i], &raw, &nc, err)) < 0)
			goto out;
		free(raw);
		if ((ret = fx_tok_t5_encode(tok5, prompts[i], ids5 + (size_t)i * L, L, NULL, err)) < 0 ||
		    (ret = fx_tok_clip_encode(tokc, prompts[i], idsc + (size_t)i * FX_CLIP_LEN, FX_CLIP_LEN, NULL,
					      err)) < 0)
			goto out;
		for (int k = 0; k < L || k < FX_CLIP_LEN; k++) {
			int32_t a = k < L ? ids5[(size_t)i * L + k] : 0;
			int32_t b = k < FX_CLIP_LEN ? idsc[(size_t)i * FX_CLIP_LEN + k] : 0;

			if (a >= fx_t5_config(t5)->vocab || b >= fx_clip_config(clip)->vocab) {
				bool t5side = a >= fx_t5_config(t5)->vocab;

				ret = fx_error(err, FX_E_FORMAT, "the %s tokenizer '%s' gives token id %d (prompt %d) "
					       "but the encoder in '%s' has a vocabulary of %d: they do not belong "
					       "together", t5side ? "T5" : "CLIP", t5side ? paths.t5_tok : paths.clip_tok,
					       t5side ? a : b, i, t5side ? paths.t5_dir : paths.clip_dir,
					       t5side ? fx_t5_config(t5)->vocab : fx_clip_config(clip)->vocab);
				goto out;
			}
		}
		if (n5 + 1 > (size_t)L && trunc5++ == 0)
			first5 = i;
		if (nc + 2 > FX_CLIP_LEN && truncc++ == 0)
			firstc = i;
		fx_log_debug("prompt %d: %zu T5 tokens, %zu CLIP tokens", i, n5 + 1, nc + 2);
	}
	{
		int nblank = 0, first = -1;

		for (int i = 0; i < P; i++)
			if (prompts[i][strspn(prompts[i], " \t")] == '\0' && nblank++ == 0)
				first = i;
		if (nblank)
			fx_log_info("%d prompt(s) of only spaces or tabs (the first: prompt %d): encoded as the "
				    "empty prompt", nblank, first);
	}
	if (trunc5)
		fx_log_warn("%d prompt(s) longer than %d T5 tokens were truncated (the first: prompt %d)", trunc5,
			    L, first5);
	if (truncc)
		fx_log_warn("%d prompt(s) longer than %d CLIP tokens were truncated (the first: prompt %d)",
			    truncc, FX_CLIP_LEN, firstc);

	/* the stage: inputs, params, recipe */
	if ((ret = fx_stage_new(&s, TOOL, FX_FMT_COND, o->output, err)) < 0)
		goto out;
	inputs = json_object();
	{
		char cfg5[8200], cfgc[8200], extra[64];
		int nf5, nfc;
		/* the tokenizer files and the configurations next to them, whose
		 * special and added tokens change the ids */
		const char *const *tf5 = fx_tok_t5_files(tok5, &nf5), *const *tfc = fx_tok_clip_files(tokc, &nfc);
		static const char *const roles[] = { "t5", "t5_config", "t5_tokenizer", "clip", "clip_config",
						     "clip_tokenizer" };
		char ids[6][65];

		snprintf(cfg5, sizeof(cfg5), "%s/config.json", paths.t5_dir);
		snprintf(cfgc, sizeof(cfgc), "%s/config.json", paths.clip_dir);
		ret = !inputs ? fx_error(err, FX_E_NOMEM, "out of memory") : 0;
		if (ret == 0)
			ret = fx_input_id(ids[0], paths.t5_dir, err);
		if (ret == 0)
			ret = fx_file_sha256(ids[1], cfg5, err);
		snprintf(extra, sizeof(extra), "eos %d pad %d", fx_tok_t5_eos(tok5), fx_tok_t5_pad(tok5));
		if (ret == 0)
			ret = tokenizer_id(ids[2], tf5, nf5, extra, err);
		if (ret == 0)
			ret = fx_input_id(ids[3], paths.clip_dir, err);
		if (ret == 0)
			ret = fx_file_sha256(ids[4], cfgc, err);
		snprintf(extra, sizeof(extra), "bos %d eos %d pad %d", fx_tok_clip_bos(tokc), fx_tok_clip_eos(tokc),
			 fx_tok_clip_pad(tokc));
		if (ret == 0)
			ret = tokenizer_id(ids[5], tfc, nfc, extra, err);
		if (ret < 0)
			goto out;
		for (size_t k = 0; k < FX_ARRAY_SIZE(roles); k++) {
			fx_stage_input_id(s, roles[k], ids[k]);
			json_object_set_new(inputs, roles[k], json_string(ids[k]));
		}
	}
	if ((ret = fx_stage_input(s, "prompts", o->prompts, err)) < 0)
		goto out;
	fx_stage_param_int(s, "max_len", L);
	fx_stage_param_int(s, "clip_len", FX_CLIP_LEN);
	fx_stage_param_str(s, "dtype", "bf16");
	ret = fx_stage_check(s, o->force, err);
	if (ret < 0)
		goto out;
	if (ret == 1) {
		*up_to_date = true;
		ret = 0;
		goto out;
	}

	/* per-prompt recipes: the prompt, the encoders and tokenizers, the params */
	inputs_js = json_dumps(inputs, JSON_SORT_KEYS | JSON_COMPACT);
	if (!inputs_js) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if (!o->force)
		old_open(&old, o->output, L, dt, dc);
	for (int i = 0; i < P; i++) {
		struct fx_layer_hash *h = fx_layer_hash_new();
		char r[65], nm[32];
		json_t *pr = json_string(prompts[i]);
		char *prs = pr ? json_dumps(pr, JSON_ENCODE_ANY) : NULL;

		if (!h || !prs) {
			if (h)
				fx_layer_hash_final(h, r);
			json_decref(pr);
			free(prs);
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		fx_layer_hash_str(h, "{\"inputs\":");
		fx_layer_hash_str(h, inputs_js);
		fx_layer_hash_str(h, ",\"params\":");
		fx_layer_hash_str(h, fx_stage_params_json(s));
		fx_layer_hash_str(h, ",\"prompt\":");
		fx_layer_hash_str(h, prs);
		fx_layer_hash_str(h, "}");
		fx_layer_hash_final(h, r);
		json_decref(pr);
		free(prs);
		snprintf(nm, sizeof(nm), "prompt.%d", i);
		names[i] = strdup(nm);
		recipes[i] = strdup(r);
		if (!names[i] || !recipes[i]) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		src[i] = old_find(&old, r);
		ncompute += src[i] < 0;
	}
	fx_log_info("%d prompts: %lld to encode, %lld reused (T5 %d tokens, CLIP %d)", P,
		    (long long)ncompute, (long long)(P - ncompute), L, FX_CLIP_LEN);

	/* the output */
	{
		int64_t s3[3] = { P, L, dt }, s2[2] = { P, dc }, si5[2] = { P, L }, sic[2] = { P, FX_CLIP_LEN };
		char *pjs;

		if ((ret = fx_stage_add(s, "prompt_embeds", FX_BF16, 3, s3, err)) < 0 ||
		    (ret = fx_stage_add(s, "pooled_prompt_embeds", FX_BF16, 2, s2, err)) < 0 ||
		    (ret = fx_stage_add(s, "t5_input_ids", FX_I32, 2, si5, err)) < 0 ||
		    (ret = fx_stage_add(s, "clip_input_ids", FX_I32, 2, sic, err)) < 0)
			goto out;
		pj = json_array();
		for (int i = 0; pj && i < P; i++)
			json_array_append_new(pj, json_string(prompts[i]));
		pjs = pj ? json_dumps(pj, JSON_COMPACT) : NULL;
		if (!pjs) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		fx_stage_meta(s, "fx.prompts", pjs);
		/* fx.layers: one entry of ~90 bytes per prompt; the prompts above */
		fx_stage_reserve(s, 4096 + (size_t)P * 96 + strlen(pjs));
		free(pjs);
	}
	if ((ret = fx_stage_begin(s, err)) < 0 ||
	    (ret = fx_stage_write(s, "t5_input_ids", ids5, (size_t)P * L * sizeof(*ids5), err)) < 0 ||
	    (ret = fx_stage_write(s, "clip_input_ids", idsc, (size_t)P * FX_CLIP_LEN * sizeof(*idsc), err)) < 0)
		goto out;
	job.s = s;
	job.old = &old;
	job.names = names;
	job.recipes = recipes;
	job.src = src;
	job.pe_row = (size_t)L * (size_t)dt * 2;
	job.pp_row = (size_t)dc * 2;
	if (ncompute > 0) {
		const int64_t nb = ncompute < N ? ncompute : N;
		const int64_t passes = (ncompute + N - 1) / N;
		int64_t next = 0;

		batch = malloc((size_t)nb * sizeof(*batch));
		bids5 = malloc((size_t)nb * L * sizeof(*bids5));
		bidsc = malloc((size_t)nb * FX_CLIP_LEN * sizeof(*bidsc));
		out5 = malloc((size_t)nb * L * (size_t)dt * sizeof(*out5));
		outc = malloc((size_t)nb * (size_t)dc * sizeof(*outc));
		row16 = malloc(job.pe_row > job.pp_row ? job.pe_row : job.pp_row);
		if (!batch || !bids5 || !bidsc || !out5 || !outc || !row16) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory for a block of %lld prompts", (long long)nb);
			goto out;
		}
		fx_progress_start(&prog, TOOL, (uint64_t)(passes * (fx_t5_config(t5)->layers +
								     fx_clip_config(clip)->layers)), 0);
		while (next < P) {
			int64_t k = 0;

			for (; next < P && k < nb; next++)
				if (src[next] < 0) {
					batch[k] = next;
					memcpy(bids5 + k * L, ids5 + next * L, (size_t)L * sizeof(*bids5));
					memcpy(bidsc + k * FX_CLIP_LEN, idsc + next * FX_CLIP_LEN,
					       FX_CLIP_LEN * sizeof(*bidsc));
					k++;
				}
			if (k == 0)
				break;
			t0 = fx_now();
			if ((ret = fx_t5_encode(t5, bids5, (int)k, L, out5, on_layer, &pc, err)) < 0)
				goto out_prog;
			t_t5 += fx_now() - t0;
			t0 = fx_now();
			if ((ret = fx_clip_encode(clip, bidsc, (int)k, FX_CLIP_LEN, outc, NULL, on_layer, &pc, err)) < 0)
				goto out_prog;
			t_clip += fx_now() - t0;
			for (int64_t b = 0; b < k; b++) {
				if ((ret = flush_reused(&job, batch[b], err)) < 0)
					goto out_prog;
				to_bf16(row16, out5 + (size_t)b * L * dt, (size_t)L * dt);
				if ((ret = fx_stage_write(s, "prompt_embeds", row16, job.pe_row, err)) < 0)
					goto out_prog;
				to_bf16(row16, outc + (size_t)b * dc, (size_t)dc);
				if ((ret = fx_stage_write(s, "pooled_prompt_embeds", row16, job.pp_row, err)) < 0)
					goto out_prog;
				fx_stage_layer(s, names[batch[b]], recipes[batch[b]], false);
				job.next = batch[b] + 1;
			}
		}
		fx_progress_end(&prog);
		fx_log_info("T5 encoder: %lld prompts x %d tokens, %d layers in %.2f s = %.1f tokens/s; "
			    "CLIP: %.2f s", (long long)ncompute, L, fx_t5_config(t5)->layers, t_t5,
			    (double)ncompute * L / (t_t5 > 0 ? t_t5 : 1e-9), t_clip);
	}
	if ((ret = flush_reused(&job, P, err)) < 0)
		goto out;
	ret = fx_stage_commit(s, err);
	goto out;
out_prog:
	fx_progress_end(&prog);
out:
	for (int i = 0; i < P; i++) {
		if (names)
			free(names[i]);
		if (recipes)
			free(recipes[i]);
	}
	free(names);
	free(recipes);
	free(src);
	free(ids5);
	free(idsc);
	free(bids5);
	free(bidsc);
	free(batch);
	free(out5);
	free(outc);
	free(row16);
	free(inputs_js);
	json_decref(pj);
	json_decref(inputs);
	old_close(&old);
	fx_t5_close(t5);
	fx_clip_close(clip);
	fx_tok_t5_free(tok5);
	fx_tok_clip_free(tokc);
	fx_cond_paths_release(&paths);
	fx_cond_prompts_free(prompts, P);
	if (stage_out && ret >= 0)
		*stage_out = s;
	else
		fx_stage_free(s);
	return ret;
}
