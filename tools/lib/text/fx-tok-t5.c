#include "fx-tok-t5.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fx-io.h"
#include "fx-tok-added.h"
#include "fx-tok-unicode.h"

#define MAX_FILE (512u << 20)
#define UNK_PENALTY 10.0

/* SentencePiece piece types (sentencepiece_model.proto). */
enum { T_NORMAL = 1, T_UNKNOWN = 2, T_CONTROL = 3, T_USER = 4, T_UNUSED = 5, T_BYTE = 6 };

struct piece {
	const char *s;      /* into the arena, set when the vocabulary is complete */
	size_t off;         /* offset in the arena */
	uint32_t len;
	float score;
	int type;
};

struct fx_tok_t5 {
	char *path;
	struct piece *pieces;
	int n;
	char *arena;
	size_t arena_len, arena_cap;
	int32_t *hash;           /* open addressing, -1 empty */
	size_t hmask;
	int unk, eos, pad;
	double min_score, max_score;
	uint32_t max_bytes;      /* longest matchable piece */
	/* precompiled character map (darts-clone double array + strings) */
	uint32_t *trie;
	size_t ntrie;
	char *norm;
	size_t norm_len;
	bool add_prefix;
	bool graphemes;          /* tokenizer.json: the tokenizers library's per-grapheme mapping */
	char repl[8];            /* "▁" */
	int repl_len;
	struct fx_tok_added added;
	struct fx_tok_config cfg;
	const char *files[3];    /* the tokenizer file, then cfg's files */
	int nfiles;
};

/* ---- small helpers ------------------------------------------------- */

static uint32_t fnv_step(uint32_t h, unsigned char c)
{
	return (h ^ c) * 16777619u;
}

static uint32_t fnv(const char *s, size_t n)
{
	uint32_t h = 2166136261u;

	while (n--)
		h = fnv_step(h, (unsigned char)*s++);
	return h;
}

static int arena_add(struct fx_tok_t5 *t, const char *s, size_t n, size_t *off,
		     struct fx_err *err)
{
	if (t->arena_len + n + 1 > t->arena_cap) {
		size_t cap = t->arena_cap ? t->arena_cap : 1 << 16;
		char *p;

		while (cap < t->arena_len + n + 1)
			cap *= 2;
		if (!(p = realloc(t->arena, cap)))
			return fx_error(err, FX_E_NOMEM, "out of memory");
		t->arena = p;
		t->arena_cap = cap;
	}
	memcpy(t->arena + t->arena_len, s, n);
	t->arena[t->arena_len + n] = '\0';
	*off = t->arena_len;
	t->arena_len += n + 1;
	return 0;
}

static int add_piece(struct fx_tok_t5 *t, int *cap, const char *s, size_t n, float score,
		     int type, struct fx_err *err)
{
	struct piece *p;
	int ret;

	if (n == 0 || n > 1024)
		return fx_error(err, FX_E_FORMAT, "'%s': piece %d has length %zu", t->path, t->n, n);
	if (t->n == *cap) {
		int nc = *cap ? *cap * 2 : 1024;

		if (!(p = realloc(t->pieces, (size_t)nc * sizeof(*p))))
			return fx_error(err, FX_E_NOMEM, "out of memory");
		t->pieces = p;
		*cap = nc;
	}
	p = &t->pieces[t->n];
	if ((ret = arena_add(t, s, n, &p->off, err)) < 0)
		return ret;
	p->s = NULL;
	p->len = (uint32_t)n;
	p->score = score;
	p->type = type;
	t->n++;
	return 0;
}

static int lookup(const struct fx_tok_t5 *t, const char *s, size_t n, uint32_t h)
{
	size_t i = h & t->hmask;

	for (;; i = (i + 1) & t->hmask) {
		int32_t id = t->hash[i];

		if (id < 0)
			return -1;
		if (t->pieces[id].len == n && !memcmp(t->pieces[id].s, s, n))
			return id;
	}
}

static int lookup_str(const struct fx_tok_t5 *t, const char *s)
{
	return lookup(t, s, strlen(s), fnv(s, strlen(s)));
}

/* Arena offsets -> pointers (the arena moves while it grows), the hash
 * table, score range. */
static int finish_vocab(struct fx_tok_t5 *t, struct fx_err *err)
{
	size_t cap = 16;
	int i;

	if (t->n <= 0)
		return fx_error(err, FX_E_FORMAT, "'%s': empty vocabulary", t->path);
	while (cap < (size_t)t->n * 2)
		cap *= 2;
	t->hash = malloc(cap * sizeof(*t->hash));
	if (!t->hash)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	memset(t->hash, 0xff, cap * sizeof(*t->hash));
	t->hmask = cap - 1;
	t->min_score = 1e300;
	t->max_score = -1e300;
	for (i = 0; i < t->n; i++) {
		struct piece *p = &t->pieces[i];
		size_t h;

		p->s = t->arena + p->off;
		if (p->type == T_NORMAL) {
			if (p->score < t->min_score)
				t->min_score = p->score;
			if (p->score > t->max_score)
				t->max_score = p->score;
		}
		if ((p->type == T_NORMAL || p->type == T_USER) && p->len > t->max_bytes)
			t->max_bytes = p->len;
		/* the first of duplicate pieces wins (as in SentencePiece) */
		if (lookup(t, p->s, p->len, fnv(p->s, p->len)) >= 0)
			continue;
		for (h = fnv(p->s, p->len) & t->hmask; t->hash[h] >= 0; h = (h + 1) & t->hmask)
			;
		t->hash[h] = i;
	}
	if (t->min_score > t->max_score)
		t->min_score = t->max_score = 0;
	return 0;
}

/* The precompiled character map: uint32 LE trie size, darts-clone units,
 * then NUL-terminated replacement strings. */
static int set_charsmap(struct fx_tok_t5 *t, const unsigned char *b, size_t n, struct fx_err *err)
{
	size_t tsz, i;

	if (n == 0)
		return 0;
	if (n < 4)
		return fx_error(err, FX_E_FORMAT, "'%s': precompiled charsmap too short", t->path);
	tsz = (size_t)b[0] | (size_t)b[1] << 8 | (size_t)b[2] << 16 | (size_t)b[3] << 24;
	if (tsz % 4 || tsz > n - 4 || tsz == 0)
		return fx_error(err, FX_E_FORMAT, "'%s': precompiled charsmap trie size %zu does not fit %zu bytes",
				t->path, tsz, n);
	t->ntrie = tsz / 4;
	t->trie = malloc(tsz);
	t->norm_len = n - 4 - tsz;
	t->norm = malloc(t->norm_len + 1);
	if (!t->trie || !t->norm)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	for (i = 0; i < t->ntrie; i++) {
		const unsigned char *u = b + 4 + 4 * i;

		t->trie[i] = (uint32_t)u[0] | (uint32_t)u[1] << 8 | (uint32_t)u[2] << 16 | (uint32_t)u[3] << 24;
	}
	memcpy(t->norm, b + 4 + tsz, t->norm_len);
	t->norm[t->norm_len] = '\0';
	return 0;
}

/* ---- tokenizer.json --------------------------------------------------- */

static int b64val(int c)
{
	if (c >= 'A' && c <= 'Z')
		return c - 'A';
	if (c >= 'a' && c <= 'z')
		return c - 'a' + 26;
	if (c >= '0' && c <= '9')
		return c - '0' + 52;
	if (c == '+' || c == '-')
		return 62;
	if (c == '/' || c == '_')
		return 63;
	return -1;
}

/* Decodes base64 (padding optional) into a malloc'ed buffer. */
static int b64decode(unsigned char **out, size_t *outlen, const char *s, size_t n)
{
	unsigned char *o = malloc(n / 4 * 3 + 3);
	uint32_t acc = 0;
	size_t i, k = 0;
	int bits = 0;

	if (!o)
		return FX_E_NOMEM;
	for (i = 0; i < n; i++) {
		int v;

		if (s[i] == '=' || s[i] == '\n' || s[i] == '\r')
			continue;
		if ((v = b64val((unsigned char)s[i])) < 0) {
			free(o);
			return FX_E_FORMAT;
		}
		acc = (acc << 6) | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			o[k++] = (unsigned char)(acc >> bits);
		}
	}
	*out = o;
	*outlen = k;
	return 0;
}

/* Finds the first object of type `type` in a normalizer/pre-tokenizer tree
 * (Sequence nodes hold "normalizers" or "pretokenizers"). Checks every
 * node's type against the allowed list; returns FX_E_UNSUPPORTED naming an
 * unknown one. */
static int walk(const struct fx_tok_t5 *t, json_t *node, const char *what, const char *const *allowed,
		const char *type, json_t **found, struct fx_err *err)
{
	const char *ty;
	size_t i;

	if (!node || json_is_null(node))
		return 0;
	ty = json_string_value(json_object_get(node, "type"));
	if (!ty)
		return fx_error(err, FX_E_FORMAT, "'%s': %s without a type", t->path, what);
	if (!strcmp(ty, "Sequence")) {
		json_t *arr = json_object_get(node, "normalizers");
		json_t *el;
		int ret;

		if (!arr)
			arr = json_object_get(node, "pretokenizers");
		json_array_foreach(arr, i, el)
			if ((ret = walk(t, el, what, allowed, type, found, err)) < 0)
				return ret;
		return 0;
	}
	for (i = 0; allowed[i]; i++)
		if (!strcmp(allowed[i], ty))
			break;
	if (!allowed[i])
		return fx_error(err, FX_E_UNSUPPORTED, "'%s': %s '%s' is not supported by the T5 tokenizer",
				t->path, what, ty);
	if (!strcmp(ty, type) && !*found)
		*found = node;
	return 0;
}

static int load_json(struct fx_tok_t5 *t, const char *text, size_t len, struct fx_err *err)
{
	static const char *const norms[] = { "Precompiled", "Replace", "Strip", NULL };
	static const char *const pres[] = { "WhitespaceSplit", "Metaspace", NULL };
	json_error_t je;
	json_t *root = json_loadb(text, len, 0, &je), *model, *vocab, *el, *pre = NULL, *prec = NULL;
	const char *ty;
	int cap = 0, ret = 0, unk;
	size_t i;

	if (!root)
		return fx_error(err, FX_E_FORMAT, "'%s': not valid JSON: %s (line %d)", t->path, je.text,
				je.line);
	model = json_object_get(root, "model");
	ty = json_string_value(json_object_get(model, "type"));
	if (!ty || strcmp(ty, "Unigram")) {
		ret = fx_error(err, FX_E_UNSUPPORTED, "'%s': model type '%s', the T5 tokenizer needs Unigram",
			       t->path, ty ? ty : "(none)");
		goto out;
	}
	if (json_is_true(json_object_get(model, "byte_fallback"))) {
		ret = fx_error(err, FX_E_UNSUPPORTED, "'%s': byte_fallback is not supported", t->path);
		goto out;
	}
	vocab = json_object_get(model, "vocab");
	if (!json_is_array(vocab) || json_array_size(vocab) == 0 || json_array_size(vocab) > (1u << 24)) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': model.vocab is not a non-empty array", t->path);
		goto out;
	}
	unk = json_is_integer(json_object_get(model, "unk_id")) ?
	      (int)json_integer_value(json_object_get(model, "unk_id")) : -1;
	/* the added tokens are cut out before the model runs; the model itself
	 * matches every piece, those and <unk> included (the tokenizers
	 * library's Unigram does: "＜/s＞" normalizes to "</s>", the piece </s>) */
	if ((ret = fx_tok_added_from_json(&t->added, json_object_get(root, "added_tokens"), t->path, err)) < 0)
		goto out;
	json_array_foreach(vocab, i, el) {
		json_t *p = json_array_get(el, 0), *s = json_array_get(el, 1);
		int type = T_NORMAL;

		if (!json_is_string(p) || !json_is_number(s)) {
			ret = fx_error(err, FX_E_FORMAT, "'%s': model.vocab[%zu] is not [piece, score]", t->path, i);
			goto out;
		}
		if ((ret = add_piece(t, &cap, json_string_value(p), json_string_length(p),
				     (float)json_number_value(s), type, err)) < 0)
			goto out;
	}
	if (unk < 0 || unk >= t->n) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': model.unk_id missing or out of range", t->path);
		goto out;
	}
	t->unk = unk;
	if ((ret = walk(t, json_object_get(root, "normalizer"), "normalizer", norms, "Precompiled", &prec,
			err)) < 0 ||
	    (ret = walk(t, json_object_get(root, "pre_tokenizer"), "pre-tokenizer", pres, "Metaspace", &pre,
			err)) < 0)
		goto out;
	if (prec) {
		const char *b = json_string_value(json_object_get(prec, "precompiled_charsmap"));
		unsigned char *bin = NULL;
		size_t blen = 0;

		if (b && (ret = b64decode(&bin, &blen, b, strlen(b))) < 0) {
			ret = fx_error(err, ret, "'%s': precompiled_charsmap is not valid base64", t->path);
			goto out;
		}
		ret = set_charsmap(t, bin, blen, err);
		free(bin);
		if (ret < 0)
			goto out;
	}
	t->add_prefix = true;
	if (pre) {
		const char *r = json_string_value(json_object_get(pre, "replacement"));
		const char *scheme = json_string_value(json_object_get(pre, "prepend_scheme"));
		json_t *aps = json_object_get(pre, "add_prefix_space");

		if (r) {
			if (strlen(r) == 0 || strlen(r) >= sizeof(t->repl)) {
				ret = fx_error(err, FX_E_FORMAT, "'%s': bad Metaspace replacement", t->path);
				goto out;
			}
			memcpy(t->repl, r, strlen(r) + 1);
			t->repl_len = (int)strlen(r);
		}
		if (scheme)
			t->add_prefix = strcmp(scheme, "never") != 0;
		else if (json_is_boolean(aps))
			t->add_prefix = json_is_true(aps);
	}
	/* EOS: the special token the post-processor appends, else "</s>" */
	t->eos = -1;
	{
		json_t *pp = json_object_get(root, "post_processor");
		json_t *single = json_object_get(pp, "single"), *st;

		json_array_foreach(single, i, el) {
			const char *name = json_string_value(json_object_get(json_object_get(el, "SpecialToken"), "id"));
			json_t *ids;

			if (!name)
				continue;
			st = json_object_get(json_object_get(pp, "special_tokens"), name);
			ids = json_object_get(st, "ids");
			if (json_is_integer(json_array_get(ids, 0)))
				t->eos = (int)json_integer_value(json_array_get(ids, 0));
		}
	}
out:
	json_decref(root);
	return ret;
}

/* ---- spiece.model (protobuf) ------------------------------------------ */

struct pb {
	const unsigned char *p, *end;
};

static bool pb_varint(struct pb *b, uint64_t *v)
{
	int shift = 0;

	*v = 0;
	while (b->p < b->end && shift < 64) {
		unsigned char c = *b->p++;

		*v |= (uint64_t)(c & 0x7F) << shift;
		if (!(c & 0x80))
			return true;
		shift += 7;
	}
	return false;
}

/* Next field: number, wire type, and for length-delimited the sub-buffer,
 * for varint/fixed the value. */
static bool pb_field(struct pb *b, uint32_t *field, int *wt, uint64_t *val, struct pb *sub)
{
	uint64_t key, len;

	if (!pb_varint(b, &key))
		return false;
	*field = (uint32_t)(key >> 3);
	*wt = (int)(key & 7);
	switch (*wt) {
	case 0:
		return pb_varint(b, val);
	case 1:
		if (b->end - b->p < 8)
			return false;
		memcpy(val, b->p, 8);
		b->p += 8;
		return true;
	case 5: {
		uint32_t v32;

		if (b->end - b->p < 4)
			return false;
		v32 = (uint32_t)b->p[0] | (uint32_t)b->p[1] << 8 | (uint32_t)b->p[2] << 16 |
		      (uint32_t)b->p[3] << 24;
		b->p += 4;
		*val = v32;
		return true;
	}
	case 2:
		if (!pb_varint(b, &len) || len > (uint64_t)(b->end - b->p))
			return false;
		sub->p = b->p;
		sub->end = b->p + len;
		b->p += len;
		return true;
	default:
		return false;
	}
}

static int load_spiece(struct fx_tok_t5 *t, const unsigned char *data, size_t len, struct fx_err *err)
{
	struct pb b = { data, data + len }, sub;
	uint64_t val;
	uint32_t f;
	int wt, cap = 0, ret, pad_id = -2, eos_id = -2, unk_id = -2;
	bool add_dummy = true;

	t->unk = -1;
	while (b.p < b.end) {
		if (!pb_field(&b, &f, &wt, &val, &sub))
			goto bad;
		if (f == 1 && wt == 2) {                 /* SentencePiece */
			struct pb q = sub, s2;
			const char *piece = NULL;
			size_t plen = 0;
			float score = 0;
			int type = T_NORMAL;

			while (q.p < q.end) {
				if (!pb_field(&q, &f, &wt, &val, &s2))
					goto bad;
				if (f == 1 && wt == 2) {
					piece = (const char *)s2.p;
					plen = (size_t)(s2.end - s2.p);
				} else if (f == 2 && wt == 5) {
					uint32_t u = (uint32_t)val;

					memcpy(&score, &u, 4);
				} else if (f == 3 && wt == 0) {
					type = (int)val;
				}
			}
			if (!piece)
				goto bad;
			if (type == T_UNKNOWN && t->unk < 0)
				t->unk = t->n;
			if ((ret = add_piece(t, &cap, piece, plen, score, type, err)) < 0)
				return ret;
		} else if (f == 2 && wt == 2) {          /* TrainerSpec */
			struct pb q = sub, s2;

			while (q.p < q.end) {
				if (!pb_field(&q, &f, &wt, &val, &s2))
					goto bad;
				if (wt == 0 && f == 40)
					unk_id = (int32_t)(uint32_t)val;
				else if (wt == 0 && f == 42)
					eos_id = (int32_t)(uint32_t)val;
				else if (wt == 0 && f == 43)
					pad_id = (int32_t)(uint32_t)val;
			}
		} else if (f == 3 && wt == 2) {          /* NormalizerSpec */
			struct pb q = sub, s2;

			while (q.p < q.end) {
				if (!pb_field(&q, &f, &wt, &val, &s2))
					goto bad;
				if (f == 2 && wt == 2) {
					if ((ret = set_charsmap(t, s2.p, (size_t)(s2.end - s2.p), err)) < 0)
						return ret;
				} else if (f == 3 && wt == 0) {
					add_dummy = val != 0;
				} else if (f == 6 && wt == 2 && s2.end > s2.p && !t->trie) {
					return fx_error(err, FX_E_UNSUPPORTED, "'%s': a normalization rule TSV "
							"without precompiled charsmap is not supported", t->path);
				}
			}
		}
	}
	t->add_prefix = add_dummy;
	if (t->unk < 0 && unk_id >= 0 && unk_id < t->n)
		t->unk = unk_id;
	if (t->unk < 0)
		return fx_error(err, FX_E_FORMAT, "'%s': no <unk> piece", t->path);
	t->eos = eos_id >= 0 && eos_id < t->n ? eos_id : -1;
	t->pad = pad_id >= 0 && pad_id < t->n ? pad_id : -2;
	return 0;
bad:
	return fx_error(err, FX_E_FORMAT, "'%s': malformed SentencePiece model (protobuf)", t->path);
}

/* ---- added tokens ---------------------------------------------------------- */

static int norm_cb(const void *model, const char *s, size_t n, char **out, size_t *out_len);

static int32_t vocab_cb(const void *model, const char *s, size_t n)
{
	return lookup(model, s, n, fnv(s, n));
}

/* The special tokens transformers' T5 tokenizer adds when it loads: those
 * the configuration next to the tokenizer file names (eos </s>, unk <unk>
 * and pad <pad> when it names none), its additional_special_tokens, and
 * <extra_id_0> .. <extra_id_N-1> for "extra_ids": N (100 when not given)
 * unless that list holds some already. The pad id follows the
 * configuration's pad_token; EOS is the post-processor's. */
static int add_specials(struct fx_tok_t5 *t, struct fx_err *err)
{
	static const char *const keys[] = { "bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
					    "cls_token", "mask_token" };
	static const char *const dflt[] = { NULL, "</s>", "<unk>", NULL, "<pad>", NULL, NULL };
	static const char *const lists[] = { "additional_special_tokens", "extra_special_tokens" };
	char *dir = strdup(t->path), *slash;
	bool have_extra = false;
	json_t *v, *el;
	int32_t id;
	int ret;

	if (!dir)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	slash = strrchr(dir, '/');
	if (slash)
		*slash = '\0';
	ret = fx_tok_config_load(&t->cfg, slash ? (slash == dir ? "/" : dir) : ".", err);
	free(dir);
	if (ret < 0 || (ret = fx_tok_added_from_config(&t->added, &t->cfg, err)) < 0)
		return ret;
	for (size_t k = 0; k < FX_ARRAY_SIZE(keys); k++) {
		v = fx_tok_config_get(&t->cfg, keys[k]);
		if ((ret = fx_tok_added_special(&t->added, v, dflt[k], vocab_cb, t, t->n, &id, err)) < 0)
			return ret;
		if (!strcmp(keys[k], "pad_token") && v && id >= 0)
			t->pad = id;
		if (!strcmp(keys[k], "eos_token") && t->eos < 0)
			t->eos = id;
	}
	for (size_t k = 0; k < FX_ARRAY_SIZE(lists); k++) {
		size_t i;

		v = fx_tok_config_get(&t->cfg, lists[k]);
		json_array_foreach(v, i, el) {
			json_t *c = json_is_object(el) ? json_object_get(el, "content") : el;

			if (json_is_string(c) && strstr(json_string_value(c), "<extra_id_"))
				have_extra = true;
			if ((ret = fx_tok_added_special(&t->added, el, NULL, vocab_cb, t, t->n, &id, err)) < 0)
				return ret;
		}
	}
	v = t->cfg.config ? json_object_get(t->cfg.config, "extra_ids") : NULL;
	if (!have_extra) {
		json_int_t ne = json_is_integer(v) ? json_integer_value(v) : 100;

		if (ne > 4096)
			return fx_error(err, FX_E_UNSUPPORTED, "'%s': extra_ids %lld, fx reads at most 4096",
					t->cfg.files[0], (long long)ne);
		for (json_int_t i = 0; i < ne; i++) {
			char name[40];
			json_t *s;

			snprintf(name, sizeof(name), "<extra_id_%lld>", (long long)i);
			if (!(s = json_string(name)))
				return fx_error(err, FX_E_NOMEM, "out of memory");
			ret = fx_tok_added_special(&t->added, s, NULL, vocab_cb, t, t->n, &id, err);
			json_decref(s);
			if (ret < 0)
				return ret;
		}
	}
	t->files[0] = t->path;
	t->nfiles = 1;
	for (int i = 0; i < t->cfg.nfiles; i++)
		t->files[t->nfiles++] = t->cfg.files[i];
	return fx_tok_added_prepare(&t->added, norm_cb, t, err);
}

/* ---- open ---------------------------------------------------------------- */

int fx_tok_t5_open(struct fx_tok_t5 **out, const char *path, struct fx_err *err)
{
	struct fx_tok_t5 *t = calloc(1, sizeof(*t));
	struct stat sb;
	char *data = NULL;
	size_t len = 0;
	int ret;

	*out = NULL;
	if (!t)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	memcpy(t->repl, "\xe2\x96\x81", 4);
	t->repl_len = 3;
	t->pad = -2;
	if (stat(path, &sb) == 0 && S_ISDIR(sb.st_mode)) {
		static const char *const names[] = { "tokenizer.json", "spiece.model" };
		size_t i;

		for (i = 0; i < FX_ARRAY_SIZE(names) && !t->path; i++) {
			char *p = fx_path_join(path, names[i]);

			if (p && stat(p, &sb) == 0 && S_ISREG(sb.st_mode))
				t->path = p;
			else
				free(p);
		}
		if (!t->path) {
			ret = fx_error(err, FX_E_IO, "'%s': no tokenizer.json or spiece.model in this folder", path);
			goto out;
		}
	} else {
		t->path = strdup(path);
	}
	if (!t->path) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	if ((ret = fx_read_file(&data, &len, t->path, MAX_FILE, err)) < 0)
		goto out;
	{
		size_t i = 0;

		while (i < len && (data[i] == ' ' || data[i] == '\n' || data[i] == '\r' || data[i] == '\t'))
			i++;
		t->graphemes = i < len && data[i] == '{';
		if (t->graphemes)
			ret = load_json(t, data, len, err);
		else
			ret = load_spiece(t, (const unsigned char *)data, len, err);
	}
	if (ret < 0 || (ret = finish_vocab(t, err)) < 0 || (ret = add_specials(t, err)) < 0)
		goto out;
	if (t->eos < 0)
		t->eos = lookup_str(t, "</s>");
	if (t->eos < 0) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': no end-of-sequence token </s>", t->path);
		goto out;
	}
	if (t->pad < 0) {
		t->pad = lookup_str(t, "<pad>");
		if (t->pad < 0)
			t->pad = 0;
	}
	*out = t;
	t = NULL;
out:
	free(data);
	fx_tok_t5_free(t);
	return ret;
}

void fx_tok_t5_free(struct fx_tok_t5 *t)
{
	if (!t)
		return;
	free(t->path);
	free(t->pieces);
	free(t->arena);
	free(t->hash);
	free(t->trie);
	free(t->norm);
	fx_tok_added_release(&t->added);
	fx_tok_config_release(&t->cfg);
	free(t);
}

const char *fx_tok_t5_path(const struct fx_tok_t5 *t)
{
	return t->path;
}

int fx_tok_t5_vocab_size(const struct fx_tok_t5 *t)
{
	return t->n;
}

int fx_tok_t5_eos(const struct fx_tok_t5 *t)
{
	return t->eos;
}

int fx_tok_t5_pad(const struct fx_tok_t5 *t)
{
	return t->pad;
}

const char *const *fx_tok_t5_files(const struct fx_tok_t5 *t, int *n)
{
	*n = t->nfiles;
	return t->files;
}

/* ---- encoding ------------------------------------------------------------ */

/* Longest (or shortest) charsmap match at s[0..n): its length and
 * replacement, or 0. */
static size_t charsmap_match(const struct fx_tok_t5 *t, const unsigned char *s, size_t n,
			     bool shortest, const char **repl)
{
	size_t best = 0, i;
	uint32_t id, unit;

	if (!t->trie)
		return 0;
	unit = t->trie[0];
	id = (unit >> 10) << ((unit & (1u << 9)) >> 6);
	for (i = 0; i < n; i++) {
		id ^= s[i];
		if (id >= t->ntrie)
			break;
		unit = t->trie[id];
		if ((unit & ((1u << 31) | 0xFF)) != s[i])
			break;
		id ^= (unit >> 10) << ((unit & (1u << 9)) >> 6);
		if (id >= t->ntrie)
			break;
		if ((unit >> 8) & 1) {
			uint32_t v = t->trie[id] & ((1u << 31) - 1);

			if (v < t->norm_len) {
				best = i + 1;
				*repl = t->norm + v;
				if (shortest)
					break;
			}
		}
	}
	return best;
}

/* SentencePiece's normalization: at each position the longest match of
 * the character map, else one character; invalid UTF-8 -> U+FFFD. */
static int normalize_spm(const struct fx_tok_t5 *t, const char *text, size_t n, struct fx_tok_buf *out)
{
	const unsigned char *s = (const unsigned char *)text;
	size_t i = 0;
	int ret;

	while (i < n) {
		const char *repl = NULL;
		size_t m = charsmap_match(t, s + i, n - i, false, &repl);
		uint32_t cp;
		int l;

		if (m) {
			ret = fx_tok_buf_put(out, repl, strlen(repl));
			i += m;
		} else if ((l = fx_utf8_decode(text + i, n - i, &cp)) == 0) {
			ret = fx_tok_buf_put(out, "\xef\xbf\xbd", 3);
			i++;
		} else {
			ret = fx_tok_buf_put(out, text + i, (size_t)l);
			i += (size_t)l;
		}
		if (ret < 0)
			return ret;
	}
	return 0;
}

/* One character (bytes s[0..n), or an invalid byte when bad) through the
 * map as the tokenizers library does it. */
static int map_char(const struct fx_tok_t5 *t, const char *s, size_t n, bool bad, struct fx_tok_buf *out)
{
	const char *repl = NULL;

	if (bad)
		return fx_tok_buf_put(out, "\xef\xbf\xbd", 3);
	if (charsmap_match(t, (const unsigned char *)s, n, true, &repl))
		return fx_tok_buf_put(out, repl, strlen(repl));
	return fx_tok_buf_put(out, s, n);
}

/* The tokenizers library's Precompiled normalizer: per extended grapheme
 * cluster, a cluster of fewer than 6 bytes that starts with a key of the
 * map becomes the replacement of its shortest such key (the rest of the
 * cluster is dropped); otherwise each character is mapped on its own. */
static int normalize_graphemes(const struct fx_tok_t5 *t, const char *text, size_t n, struct fx_tok_buf *out)
{
	size_t nc = 0, i;
	uint32_t *cps = malloc((n + 1) * sizeof(*cps));
	size_t *off = malloc((n + 1) * sizeof(*off));
	bool *bad = malloc(n + 1);
	int ret = 0;

	if (!cps || !off || !bad) {
		ret = FX_E_NOMEM;
		goto out;
	}
	for (i = 0; i < n; nc++) {
		int l = fx_utf8_decode(text + i, n - i, &cps[nc]);

		off[nc] = i;
		bad[nc] = l == 0;
		i += l ? (size_t)l : 1;
	}
	off[nc] = n;
	for (i = 0; i < nc && ret == 0; ) {
		size_t e = fx_uni_grapheme_end(cps, nc, i), k, len = off[e] - off[i];
		const char *repl = NULL;
		bool any_bad = false;

		for (k = i; k < e; k++)
			any_bad |= bad[k];
		if (!any_bad && len < 6 &&
		    charsmap_match(t, (const unsigned char *)text + off[i], len, true, &repl)) {
			ret = fx_tok_buf_put(out, repl, strlen(repl));
		} else {
			for (k = i; k < e && ret == 0; k++)
				ret = map_char(t, text + off[k], off[k + 1] - off[k], bad[k], out);
		}
		i = e;
	}
out:
	free(cps);
	free(off);
	free(bad);
	return ret;
}

static int normalize(const struct fx_tok_t5 *t, const char *text, size_t n, struct fx_tok_buf *out)
{
	if (t->graphemes && t->trie)
		return normalize_graphemes(t, text, n, out);
	return normalize_spm(t, text, n, out);
}

static int norm_cb(const void *model, const char *s, size_t n, char **out, size_t *out_len)
{
	struct fx_tok_buf b = {0};
	int ret = normalize(model, s, n, &b);

	if (ret == 0 && !b.p)
		ret = fx_tok_buf_put(&b, "", 0);
	if (ret < 0) {
		free(b.p);
		return ret;
	}
	*out = b.p;
	*out_len = b.n;
	return 0;
}

struct node {
	double score;
	int start;   /* -1: unreached */
	int id;
};

struct ids {
	int32_t *v;
	size_t n, cap;
};

static int ids_put(struct ids *d, int32_t id)
{
	if (d->n == d->cap) {
		size_t cap = d->cap ? d->cap * 2 : 64;
		int32_t *p = realloc(d->v, cap * sizeof(*p));

		if (!p)
			return FX_E_NOMEM;
		d->v = p;
		d->cap = cap;
	}
	d->v[d->n++] = id;
	return 0;
}

/* Best segmentation of one word w[0..n) (SentencePiece's optimized
 * Viterbi); appends ids, consecutive <unk> fused. */
static int viterbi(const struct fx_tok_t5 *t, const char *w, size_t n, struct node *nodes,
		   struct ids *d)
{
	const double unk_score = t->min_score - UNK_PENALTY;
	size_t i, k, cnt;
	int32_t *rev;
	int ret = 0;

	for (i = 0; i <= n; i++) {
		nodes[i].start = -1;
		nodes[i].score = 0;
		nodes[i].id = -1;
	}
	for (i = 0; i < n; ) {
		uint32_t cp, h = 2166136261u;
		int ml = fx_utf8_decode(w + i, n - i, &cp);
		size_t j;
		bool single = false;
		double base = nodes[i].score;

		if (ml == 0)
			ml = 1;
		for (j = i; j < n && j - i < t->max_bytes; j++) {
			int id;

			h = fnv_step(h, (unsigned char)w[j]);
			id = lookup(t, w + i, j + 1 - i, h);
			if (id >= 0 && (t->pieces[id].type == T_NORMAL || t->pieces[id].type == T_USER)) {
				size_t e = j + 1;
				double sc = t->pieces[id].type == T_USER ?
					    (double)(e - i) * t->max_score - 0.1 : t->pieces[id].score;

				if (nodes[e].start < 0 || base + sc > nodes[e].score) {
					nodes[e].score = base + sc;
					nodes[e].start = (int)i;
					nodes[e].id = id;
				}
				if (e - i == (size_t)ml)
					single = true;
			}
		}
		if (!single) {
			size_t e = i + (size_t)ml;

			if (nodes[e].start < 0 || base + unk_score > nodes[e].score) {
				nodes[e].score = base + unk_score;
				nodes[e].start = (int)i;
				nodes[e].id = t->unk;
			}
		}
		i += (size_t)ml;
	}
	/* backtrack */
	for (cnt = 0, i = n; i > 0; i = (size_t)nodes[i].start)
		cnt++;
	rev = malloc((cnt ? cnt : 1) * sizeof(*rev));
	if (!rev)
		return FX_E_NOMEM;
	for (k = cnt, i = n; i > 0; i = (size_t)nodes[i].start)
		rev[--k] = nodes[i].id;
	for (k = 0; k < cnt && ret == 0; k++) {
		if (rev[k] == t->unk && d->n > 0 && d->v[d->n - 1] == t->unk && k > 0)
			continue;
		ret = ids_put(d, rev[k]);
	}
	free(rev);
	return ret;
}

/* The state of one fx_tok_t5_tokenize call. */
struct run {
	const struct fx_tok_t5 *t;
	struct ids d;
	struct fx_tok_buf norm, word;
	struct node *nodes;
	size_t nodes_cap;
	bool first;              /* no word yet: the one word without "▁" when add_prefix is off */
};

/* Normalized text between added tokens: whitespace separates words, each
 * gets the "▁" prefix and goes through Viterbi. */
static int words(struct run *r, const char *s, size_t n)
{
	const struct fx_tok_t5 *t = r->t;
	size_t i = 0;
	int ret;

	while (i < n) {
		size_t start, end;
		uint32_t cp;
		int l;

		/* skip whitespace */
		while (i < n && (l = fx_utf8_decode(s + i, n - i, &cp)) > 0 && fx_uni_is_space(cp))
			i += (size_t)l;
		if (i >= n)
			break;
		start = i;
		while (i < n) {
			l = fx_utf8_decode(s + i, n - i, &cp);
			if (l > 0 && fx_uni_is_space(cp))
				break;
			i += l > 0 ? (size_t)l : 1;
		}
		end = i;
		r->word.n = 0;
		if ((t->add_prefix || !r->first) && (ret = fx_tok_buf_put(&r->word, t->repl, (size_t)t->repl_len)) < 0)
			return ret;
		r->first = false;
		if ((ret = fx_tok_buf_put(&r->word, s + start, end - start)) < 0)
			return ret;
		if (r->word.n + 1 > r->nodes_cap) {
			free(r->nodes);
			r->nodes_cap = r->word.n + 1;
			if (!(r->nodes = malloc(r->nodes_cap * sizeof(*r->nodes))))
				return FX_E_NOMEM;
		}
		if ((ret = viterbi(t, r->word.p, r->word.n, r->nodes, &r->d)) < 0)
			return ret;
	}
	return 0;
}

static int normalized_piece(void *ctx, const char *s, size_t n, int32_t id)
{
	struct run *r = ctx;

	return id >= 0 ? ids_put(&r->d, id) : words(r, s, n);
}

/* Raw text between the added tokens matched on the raw text: normalize it,
 * then cut out the tokens matched on normalized text. */
static int raw_piece(void *ctx, const char *s, size_t n, int32_t id)
{
	struct run *r = ctx;
	int ret;

	if (id >= 0)
		return ids_put(&r->d, id);
	r->norm.n = 0;
	if ((ret = normalize(r->t, s, n, &r->norm)) < 0)
		return ret;
	return fx_tok_added_split(&r->t->added, r->norm.p, r->norm.n, true, normalized_piece, r);
}

int fx_tok_t5_tokenize(const struct fx_tok_t5 *t, const char *text, int32_t **ids, size_t *n,
		       struct fx_err *err)
{
	struct run r = { .t = t, .first = true };
	int ret;

	*ids = NULL;
	*n = 0;
	ret = fx_tok_added_split(&t->added, text, strlen(text), false, raw_piece, &r);
	if (ret == 0) {
		*ids = r.d.v;
		*n = r.d.n;
		r.d.v = NULL;
	}
	free(r.d.v);
	free(r.nodes);
	free(r.norm.p);
	free(r.word.p);
	if (ret == FX_E_NOMEM)
		return fx_error(err, FX_E_NOMEM, "out of memory while tokenizing");
	return ret;
}

int fx_tok_t5_encode(const struct fx_tok_t5 *t, const char *text, int32_t *ids, int len, int *ntok,
		     struct fx_err *err)
{
	int32_t *v = NULL;
	size_t n = 0, i, keep;
	int ret;

	if (len < 1)
		return fx_error(err, FX_E_ARG, "T5 sequence length %d, need at least 1", len);
	if ((ret = fx_tok_t5_tokenize(t, text, &v, &n, err)) < 0)
		return ret;
	keep = n < (size_t)len - 1 ? n : (size_t)len - 1;
	for (i = 0; i < keep; i++)
		ids[i] = v[i];
	ids[keep] = t->eos;
	for (i = keep + 1; i < (size_t)len; i++)
		ids[i] = t->pad;
	if (ntok)
		*ntok = (int)keep + 1;
	free(v);
	return 0;
}
