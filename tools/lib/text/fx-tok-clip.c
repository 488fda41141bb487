#include "fx-tok-clip.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-io.h"
#include "fx-tok-added.h"
#include "fx-tok-unicode.h"

#define MAX_FILE (256u << 20)

static const char BOS_TEXT[] = "<|startoftext|>";
static const char EOS_TEXT[] = "<|endoftext|>";

/* A string -> int map (open addressing) over strings kept in an arena. */
struct smap {
	char *arena;
	size_t alen, acap;
	size_t *off;      /* string offsets, (size_t)-1 empty */
	uint32_t *len;
	int32_t *val;
	size_t mask, count;
};

struct fx_tok_clip {
	char *dir;
	struct smap vocab;     /* token -> id */
	struct smap merges;    /* "a b" -> rank */
	int nvocab;
	int bos, eos, pad, unk;
	char byte_enc[256][3]; /* byte -> UTF-8 of its GPT-2 alphabet character */
	uint8_t byte_len[256];
	struct fx_tok_added added;
	struct fx_tok_config cfg;
	char *vocab_path, *merges_path;
	const char *files[4];  /* vocab.json, merges.txt, then cfg's files */
	int nfiles;
};

static uint32_t fnv(const char *s, size_t n)
{
	uint32_t h = 2166136261u;

	while (n--)
		h = (h ^ (unsigned char)*s++) * 16777619u;
	return h;
}

static int smap_init(struct smap *m, size_t n)
{
	size_t cap = 16;

	while (cap < n * 2)
		cap *= 2;
	m->off = malloc(cap * sizeof(*m->off));
	m->len = malloc(cap * sizeof(*m->len));
	m->val = malloc(cap * sizeof(*m->val));
	if (!m->off || !m->len || !m->val)
		return FX_E_NOMEM;
	memset(m->off, 0xff, cap * sizeof(*m->off));
	m->mask = cap - 1;
	return 0;
}

static void smap_release(struct smap *m)
{
	free(m->arena);
	free(m->off);
	free(m->len);
	free(m->val);
}

static int32_t smap_get(const struct smap *m, const char *s, size_t n)
{
	size_t i;

	if (!m->off)
		return -1;
	for (i = fnv(s, n) & m->mask; m->off[i] != (size_t)-1; i = (i + 1) & m->mask)
		if (m->len[i] == n && !memcmp(m->arena + m->off[i], s, n))
			return m->val[i];
	return -1;
}

/* Adds s -> v unless s is there already (the first one wins). */
static int smap_put(struct smap *m, const char *s, size_t n, int32_t v)
{
	size_t i;

	if (m->count * 2 >= m->mask)
		return FX_E_ARG;   /* sized by smap_init */
	for (i = fnv(s, n) & m->mask; m->off[i] != (size_t)-1; i = (i + 1) & m->mask)
		if (m->len[i] == n && !memcmp(m->arena + m->off[i], s, n))
			return 0;
	if (m->alen + n + 1 > m->acap) {
		size_t cap = m->acap ? m->acap : 1 << 16;
		char *p;

		while (cap < m->alen + n + 1)
			cap *= 2;
		if (!(p = realloc(m->arena, cap)))
			return FX_E_NOMEM;
		m->arena = p;
		m->acap = cap;
	}
	memcpy(m->arena + m->alen, s, n);
	m->arena[m->alen + n] = '\0';
	m->off[i] = m->alen;
	m->len[i] = (uint32_t)n;
	m->val[i] = v;
	m->alen += n + 1;
	m->count++;
	return 0;
}

/* GPT-2's bytes_to_unicode: printable bytes map to themselves, the others
 * to U+0100 and up, in byte order. */
static void byte_alphabet(struct fx_tok_clip *t)
{
	int b, n = 0;

	for (b = 0; b < 256; b++) {
		bool keep = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
		uint32_t cp = keep ? (uint32_t)b : 256u + (uint32_t)n++;
		char u[4];

		t->byte_len[b] = (uint8_t)fx_utf8_encode(cp, u);
		memcpy(t->byte_enc[b], u, t->byte_len[b]);
	}
}

static int load_vocab(struct fx_tok_clip *t, const char *path, struct fx_err *err)
{
	json_error_t je;
	json_t *root = json_load_file(path, 0, &je), *v;
	const char *k;
	int ret = 0;

	if (!root)
		return fx_error(err, je.line < 0 ? FX_E_IO : FX_E_FORMAT, "'%s': %s", path, je.text);
	if (!json_is_object(root) || json_object_size(root) == 0 || json_object_size(root) > (1u << 24)) {
		ret = fx_error(err, FX_E_FORMAT, "'%s': not a token -> id object", path);
		goto out;
	}
	if (smap_init(&t->vocab, json_object_size(root)) < 0) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	json_object_foreach(root, k, v) {
		json_int_t id = json_integer_value(v);

		if (!json_is_integer(v) || id < 0 || id >= (1 << 24)) {
			ret = fx_error(err, FX_E_FORMAT, "'%s': token '%s' has no valid id", path, k);
			goto out;
		}
		if (smap_put(&t->vocab, k, strlen(k), (int32_t)id) < 0) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
		if (id + 1 > t->nvocab)
			t->nvocab = (int)id + 1;
	}
out:
	json_decref(root);
	return ret;
}

static int load_merges(struct fx_tok_clip *t, const char *path, struct fx_err *err)
{
	char *data = NULL, *p, *line;
	size_t len, nlines = 0, i;
	int32_t rank = 0;
	int ret;

	if ((ret = fx_read_file(&data, &len, path, MAX_FILE, err)) < 0)
		return ret;
	for (i = 0; i < len; i++)
		nlines += data[i] == '\n';
	if (smap_init(&t->merges, nlines + 1) < 0) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	for (p = data, i = 1; p && *p; i++) {
		char *nl = strchr(p, '\n'), *sp;
		size_t n;

		line = p;
		p = nl ? nl + 1 : NULL;
		n = nl ? (size_t)(nl - line) : strlen(line);
		if (n && line[n - 1] == '\r')
			n--;
		if (n == 0 || (i == 1 && !strncmp(line, "#version", 8)))
			continue;
		sp = memchr(line, ' ', n);
		if (!sp || sp == line || sp == line + n - 1 || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - line))) {
			ret = fx_error(err, FX_E_FORMAT, "'%s': line %zu is not a merge 'A B'", path, i);
			goto out;
		}
		if (smap_put(&t->merges, line, n, rank++) < 0) {
			ret = fx_error(err, FX_E_NOMEM, "out of memory");
			goto out;
		}
	}
out:
	free(data);
	return ret;
}

static int32_t vocab_cb(const void *model, const char *s, size_t n)
{
	return smap_get(&((const struct fx_tok_clip *)model)->vocab, s, n);
}

static int norm_cb(const void *model, const char *s, size_t n, char **out, size_t *out_len);

/* The added tokens of transformers' CLIPTokenizer: the configuration's
 * added_tokens_decoder, then the special tokens it names (bos
 * <|startoftext|>, eos, unk and pad <|endoftext|> when it names none) and
 * its additional_special_tokens; a pad token "!" makes "!" special text. */
static int add_specials(struct fx_tok_clip *t, struct fx_err *err)
{
	static const char *const keys[] = { "bos_token", "eos_token", "unk_token", "sep_token", "pad_token",
					    "cls_token", "mask_token" };
	static const char *const dflt[] = { BOS_TEXT, EOS_TEXT, EOS_TEXT, NULL, EOS_TEXT, NULL, NULL };
	static const char *const lists[] = { "additional_special_tokens", "extra_special_tokens" };
	int32_t ids[FX_ARRAY_SIZE(keys)], id;
	int ret;

	if ((ret = fx_tok_config_load(&t->cfg, t->dir, err)) < 0 ||
	    (ret = fx_tok_added_from_config(&t->added, &t->cfg, err)) < 0)
		return ret;
	for (size_t k = 0; k < FX_ARRAY_SIZE(keys); k++)
		if ((ret = fx_tok_added_special(&t->added, fx_tok_config_get(&t->cfg, keys[k]), dflt[k], vocab_cb, t,
						t->nvocab, &ids[k], err)) < 0)
			return ret;
	for (size_t k = 0; k < FX_ARRAY_SIZE(lists); k++) {
		json_t *el;
		size_t i;

		json_array_foreach(fx_tok_config_get(&t->cfg, lists[k]), i, el)
			if ((ret = fx_tok_added_special(&t->added, el, NULL, vocab_cb, t, t->nvocab, &id, err)) < 0)
				return ret;
	}
	if (ids[0] < 0 || ids[1] < 0)
		return fx_error(err, FX_E_FORMAT, "'%s': no start- or end-of-text token (%s, %s)", t->vocab_path,
				BOS_TEXT, EOS_TEXT);
	t->bos = ids[0];
	t->eos = ids[1];
	t->unk = ids[2] >= 0 ? ids[2] : t->eos;
	t->pad = ids[4] >= 0 ? ids[4] : t->eos;
	t->files[0] = t->vocab_path;
	t->files[1] = t->merges_path;
	t->nfiles = 2;
	for (int i = 0; i < t->cfg.nfiles; i++)
		t->files[t->nfiles++] = t->cfg.files[i];
	return fx_tok_added_prepare(&t->added, norm_cb, t, err);
}

int fx_tok_clip_open(struct fx_tok_clip **out, const char *dir, struct fx_err *err)
{
	struct fx_tok_clip *t = calloc(1, sizeof(*t));
	int ret;

	*out = NULL;
	if (!t)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	t->dir = strdup(dir);
	t->vocab_path = fx_path_join(dir, "vocab.json");
	t->merges_path = fx_path_join(dir, "merges.txt");
	if (!t->dir || !t->vocab_path || !t->merges_path) {
		ret = fx_error(err, FX_E_NOMEM, "out of memory");
		goto out;
	}
	byte_alphabet(t);
	if ((ret = load_vocab(t, t->vocab_path, err)) < 0 || (ret = load_merges(t, t->merges_path, err)) < 0 ||
	    (ret = add_specials(t, err)) < 0)
		goto out;
	*out = t;
	t = NULL;
out:
	fx_tok_clip_free(t);
	return ret;
}

void fx_tok_clip_free(struct fx_tok_clip *t)
{
	if (!t)
		return;
	smap_release(&t->vocab);
	smap_release(&t->merges);
	fx_tok_added_release(&t->added);
	fx_tok_config_release(&t->cfg);
	free(t->vocab_path);
	free(t->merges_path);
	free(t->dir);
	free(t);
}

const char *fx_tok_clip_dir(const struct fx_tok_clip *t)
{
	return t->dir;
}

int fx_tok_clip_vocab_size(const struct fx_tok_clip *t)
{
	return t->nvocab;
}

int fx_tok_clip_bos(const struct fx_tok_clip *t)
{
	return t->bos;
}

int fx_tok_clip_eos(const struct fx_tok_clip *t)
{
	return t->eos;
}

int fx_tok_clip_pad(const struct fx_tok_clip *t)
{
	return t->pad;
}

const char *const *fx_tok_clip_files(const struct fx_tok_clip *t, int *n)
{
	*n = t->nfiles;
	return t->files;
}

/* ---- encoding ------------------------------------------------------------ */

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

/* One BPE symbol: a span of the word's byte-alphabet string, plus "</w>"
 * on the last one. */
struct sym {
	uint32_t off, len;
	bool end;
};

#define EOW "</w>"

/* Symbol text (with "</w>" when it ends the word) into buf; returns length. */
static size_t sym_text(char *buf, const char *w, const struct sym *s)
{
	memcpy(buf, w + s->off, s->len);
	if (s->end)
		memcpy(buf + s->len, EOW, 4);
	return s->len + (s->end ? 4 : 0);
}

/* Merges the word's symbols by rank (lowest first, every occurrence left
 * to right) and appends their ids. w: the piece in the byte alphabet;
 * starts[]: where each byte's character starts; nb: bytes of the piece. */
static int bpe(const struct fx_tok_clip *t, const char *w, size_t wlen, struct sym *sy, size_t ns,
	       char *tmp, struct ids *d)
{
	size_t i;
	int ret = 0;

	for (;;) {
		int32_t best = -1;
		size_t bi = 0;

		for (i = 0; i + 1 < ns; i++) {
			size_t a = sym_text(tmp, w, &sy[i]);
			size_t b;
			int32_t r;

			tmp[a] = ' ';
			b = sym_text(tmp + a + 1, w, &sy[i + 1]);
			r = smap_get(&t->merges, tmp, a + 1 + b);
			if (r >= 0 && (best < 0 || r < best)) {
				best = r;
				bi = i;
			}
		}
		if (best < 0)
			break;
		/* merge every occurrence of that pair, left to right */
		{
			struct sym first = sy[bi], second = sy[bi + 1];
			size_t o = 0;

			for (i = 0; i < ns; ) {
				if (i + 1 < ns && sy[i].len == first.len && sy[i].end == first.end &&
				    sy[i + 1].len == second.len && sy[i + 1].end == second.end &&
				    !memcmp(w + sy[i].off, w + first.off, first.len) &&
				    !memcmp(w + sy[i + 1].off, w + second.off, second.len)) {
					sy[o].off = sy[i].off;
					sy[o].len = sy[i].len + sy[i + 1].len;
					sy[o].end = sy[i + 1].end;
					o++;
					i += 2;
				} else {
					sy[o++] = sy[i++];
				}
			}
			ns = o;
		}
	}
	(void)wlen;
	for (i = 0; i < ns && ret == 0; i++) {
		size_t n = sym_text(tmp, w, &sy[i]);
		int32_t id = smap_get(&t->vocab, tmp, n);

		ret = ids_put(d, id >= 0 ? id : t->unk);
	}
	return ret;
}

/* One piece (code points) -> byte alphabet -> BPE. */
static int piece(const struct fx_tok_clip *t, const uint32_t *cp, size_t n, struct ids *d)
{
	char *w = NULL, *tmp = NULL;
	struct sym *sy = NULL;
	size_t nb = 0, wl = 0, i, k;
	int ret;

	for (i = 0; i < n; i++) {
		char u[4];

		nb += (size_t)fx_utf8_encode(cp[i], u);
	}
	w = malloc(nb * 2 + 1);
	sy = malloc(nb * sizeof(*sy));
	tmp = malloc(nb * 4 + 16);
	if (!w || !sy || !tmp) {
		ret = FX_E_NOMEM;
		goto out;
	}
	for (i = 0, k = 0; i < n; i++) {
		char u[4];
		int l = fx_utf8_encode(cp[i], u), j;

		for (j = 0; j < l; j++, k++) {
			unsigned char b = (unsigned char)u[j];

			sy[k].off = (uint32_t)wl;
			sy[k].len = t->byte_len[b];
			sy[k].end = false;
			memcpy(w + wl, t->byte_enc[b], t->byte_len[b]);
			wl += t->byte_len[b];
		}
	}
	sy[nb - 1].end = true;
	ret = bpe(t, w, wl, sy, nb, tmp, d);
out:
	free(w);
	free(sy);
	free(tmp);
	return ret;
}

static bool is_contraction(const uint32_t *c, size_t n, size_t i, size_t *len)
{
	if (c[i] != '\'' || i + 1 >= n)
		return false;
	switch (c[i + 1]) {
	case 's': case 't': case 'm': case 'd':
		*len = 2;
		return true;
	case 'r': case 'v':
		if (i + 2 < n && c[i + 2] == 'e') {
			*len = 3;
			return true;
		}
		return false;
	case 'l':
		if (i + 2 < n && c[i + 2] == 'l') {
			*len = 3;
			return true;
		}
		return false;
	default:
		return false;
	}
}

/* CLIP's normalizer: NFC, whitespace runs -> " ", lowercase; appends the
 * UTF-8 to out (invalid bytes become U+FFFD). */
static int normalize(const char *s, size_t n, struct fx_tok_buf *out)
{
	uint32_t *cp = malloc((n + 1) * sizeof(*cp)), *nf = malloc((4 * n + 1) * sizeof(*nf));
	size_t nc = 0, nn, i;
	int ret = 0;

	if (!cp || !nf) {
		ret = FX_E_NOMEM;
		goto out;
	}
	for (i = 0; i < n; ) {
		int l = fx_utf8_decode(s + i, n - i, &cp[nc]);

		nc++;
		i += l > 0 ? (size_t)l : 1;
	}
	nn = fx_uni_nfc(nf, cp, nc);
	for (i = 0; i < nn && ret == 0; i++) {
		uint32_t lo[2];
		char u[8];
		int k, l = 0;

		if (fx_uni_is_space(nf[i])) {
			if (i == 0 || !fx_uni_is_space(nf[i - 1]))
				ret = fx_tok_buf_put(out, " ", 1);
			continue;
		}
		k = fx_uni_lower(nf[i], lo);
		for (int j = 0; j < k; j++)
			l += fx_utf8_encode(lo[j], u + l);
		ret = fx_tok_buf_put(out, u, (size_t)l);
	}
out:
	free(cp);
	free(nf);
	return ret;
}

static int norm_cb(const void *model, const char *s, size_t n, char **out, size_t *out_len)
{
	struct fx_tok_buf b = {0};
	int ret;

	(void)model;
	ret = normalize(s, n, &b);
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

/* Normalized text between added tokens: CLIP's pattern, then BPE. */
static int words(const struct fx_tok_clip *t, const char *s, size_t n, struct ids *d)
{
	uint32_t *lo = malloc((n + 1) * sizeof(*lo));
	size_t nl = 0, i;
	int ret = 0;

	if (!lo)
		return FX_E_NOMEM;
	for (i = 0; i < n; ) {
		int l = fx_utf8_decode(s + i, n - i, &lo[nl]);

		nl++;
		i += l > 0 ? (size_t)l : 1;
	}
	/* CLIP's pattern, leftmost first. Its alternatives <\|startoftext\|>
	 * and <\|endoftext\|> are left out: such a piece (text that was not an
	 * added token, "<|ENDOFTEXT|>" lowercased) is split again by the
	 * byte-level pre-tokenizer's GPT-2 pattern into "<|", the word, "|>",
	 * which the rules below give directly */
	for (i = 0; i < nl && ret == 0; ) {
		size_t j = i, len;

		if (fx_uni_is_space(lo[i])) {
			i++;
			continue;
		}
		if (is_contraction(lo, nl, i, &len)) {
			j = i + len;
		} else if (fx_uni_is_letter(lo[i])) {
			while (j < nl && fx_uni_is_letter(lo[j]))
				j++;
		} else if (fx_uni_is_number(lo[i])) {
			j = i + 1;
		} else {
			while (j < nl && !fx_uni_is_space(lo[j]) && !fx_uni_is_letter(lo[j]) &&
			       !fx_uni_is_number(lo[j]))
				j++;
		}
		ret = piece(t, lo + i, j - i, d);
		i = j;
	}
	free(lo);
	return ret;
}

/* The state of one fx_tok_clip_tokenize call. */
struct run {
	const struct fx_tok_clip *t;
	struct ids d;
	struct fx_tok_buf norm;
};

static int normalized_piece(void *ctx, const char *s, size_t n, int32_t id)
{
	struct run *r = ctx;

	return id >= 0 ? ids_put(&r->d, id) : words(r->t, s, n, &r->d);
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
	if ((ret = normalize(s, n, &r->norm)) < 0)
		return ret;
	return fx_tok_added_split(&r->t->added, r->norm.p, r->norm.n, true, normalized_piece, r);
}

int fx_tok_clip_tokenize(const struct fx_tok_clip *t, const char *text, int32_t **ids, size_t *n,
			 struct fx_err *err)
{
	struct run r = { .t = t };
	int ret;

	*ids = NULL;
	*n = 0;
	ret = fx_tok_added_split(&t->added, text, strlen(text), false, raw_piece, &r);
	free(r.norm.p);
	if (ret < 0) {
		free(r.d.v);
		return fx_error(err, ret, "out of memory while tokenizing");
	}
	*ids = r.d.v;
	*n = r.d.n;
	return 0;
}

int fx_tok_clip_encode(const struct fx_tok_clip *t, const char *text, int32_t *ids, int len,
		       int *ntok, struct fx_err *err)
{
	int32_t *v = NULL;
	size_t n = 0, i, keep;
	int ret;

	if (len < 2)
		return fx_error(err, FX_E_ARG, "CLIP sequence length %d, need at least 2", len);
	if ((ret = fx_tok_clip_tokenize(t, text, &v, &n, err)) < 0)
		return ret;
	keep = n < (size_t)len - 2 ? n : (size_t)len - 2;
	ids[0] = t->bos;
	for (i = 0; i < keep; i++)
		ids[1 + i] = v[i];
	ids[keep + 1] = t->eos;
	for (i = keep + 2; i < (size_t)len; i++)
		ids[i] = t->pad;
	if (ntok)
		*ntok = (int)keep + 2;
	free(v);
	return 0;
}
