#include "fx-tok-added.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fx-io.h"
#include "fx-tok-unicode.h"

#define MAX_CONTENT 4096

/* ---- configuration files ---------------------------------------------------- */

int fx_tok_config_load(struct fx_tok_config *c, const char *dir, struct fx_err *err)
{
	static const char *const names[] = { "tokenizer_config.json", "special_tokens_map.json" };
	int ret = 0;

	memset(c, 0, sizeof(*c));
	for (size_t i = 0; i < FX_ARRAY_SIZE(names) && ret == 0; i++) {
		char *p = fx_path_join(dir, names[i]);
		struct stat sb;
		json_error_t je;
		json_t *root;

		if (!p)
			return fx_error(err, FX_E_NOMEM, "out of memory");
		if (stat(p, &sb) != 0 || !S_ISREG(sb.st_mode)) {
			free(p);
			continue;
		}
		root = json_load_file(p, 0, &je);
		if (!root) {
			ret = fx_error(err, je.line < 0 ? FX_E_IO : FX_E_FORMAT, "'%s': %s (line %d)", p, je.text,
				       je.line);
		} else if (!json_is_object(root)) {
			ret = fx_error(err, FX_E_FORMAT, "'%s': not a JSON object", p);
			json_decref(root);
		} else {
			if (i == 0)
				c->config = root;
			else
				c->map = root;
			c->files[c->nfiles++] = p;
			p = NULL;
		}
		free(p);
	}
	if (ret < 0)
		fx_tok_config_release(c);
	return ret;
}

void fx_tok_config_release(struct fx_tok_config *c)
{
	json_decref(c->config);
	json_decref(c->map);
	for (int i = 0; i < c->nfiles; i++)
		free(c->files[i]);
	memset(c, 0, sizeof(*c));
}

json_t *fx_tok_config_get(const struct fx_tok_config *c, const char *key)
{
	json_t *v = c->config ? json_object_get(c->config, key) : NULL;

	if (!v || json_is_null(v))
		v = c->map ? json_object_get(c->map, key) : NULL;
	return v && !json_is_null(v) ? v : NULL;
}

/* ---- the token set ---------------------------------------------------------- */

void fx_tok_added_release(struct fx_tok_added *a)
{
	for (size_t i = 0; i < a->n; i++) {
		if (a->v[i].match != a->v[i].content)
			free(a->v[i].match);
		free(a->v[i].content);
	}
	free(a->v);
	memset(a, 0, sizeof(*a));
}

const struct fx_tok_added_token *fx_tok_added_find(const struct fx_tok_added *a, const char *s, size_t n)
{
	for (size_t i = 0; i < a->n; i++)
		if (a->v[i].len == n && !memcmp(a->v[i].content, s, n))
			return &a->v[i];
	return NULL;
}

int fx_tok_added_add(struct fx_tok_added *a, const char *s, size_t n, int32_t id, unsigned flags)
{
	struct fx_tok_added_token *t;

	/* as the tokenizers library: an empty token is ignored, a repeated one
	 * keeps its first definition */
	if (n == 0 || fx_tok_added_find(a, s, n))
		return 0;
	if (a->n == a->cap) {
		size_t cap = a->cap ? a->cap * 2 : 16;

		if (!(t = realloc(a->v, cap * sizeof(*t))))
			return FX_E_NOMEM;
		a->v = t;
		a->cap = cap;
	}
	t = &a->v[a->n];
	memset(t, 0, sizeof(*t));
	if (!(t->content = malloc(n + 1)))
		return FX_E_NOMEM;
	memcpy(t->content, s, n);
	t->content[n] = '\0';
	t->len = n;
	t->match = t->content;
	t->match_len = n;
	t->id = id;
	t->flags = flags;
	a->n++;
	return 0;
}

static unsigned flag_of(json_t *o, const char *key, unsigned flag, bool dflt)
{
	json_t *v = json_object_get(o, key);

	return (v ? json_is_true(v) : dflt) ? flag : 0;
}

/* The flags of an AddedToken object; normalized defaults to !special, as in
 * transformers. */
static unsigned flags_of(json_t *o, bool special)
{
	unsigned f = flag_of(o, "special", FX_TOK_ADDED_SPECIAL, special);

	return f | flag_of(o, "single_word", FX_TOK_ADDED_SINGLE_WORD, false) |
	       flag_of(o, "lstrip", FX_TOK_ADDED_LSTRIP, false) | flag_of(o, "rstrip", FX_TOK_ADDED_RSTRIP, false) |
	       flag_of(o, "normalized", FX_TOK_ADDED_NORMALIZED, !(f & FX_TOK_ADDED_SPECIAL));
}

static int add_object(struct fx_tok_added *a, json_t *o, json_int_t id, const char *path, const char *where,
		      struct fx_err *err)
{
	json_t *c = json_object_get(o, "content");

	if (!json_is_object(o) || !json_is_string(c) || json_string_length(c) > MAX_CONTENT || id < 0 ||
	    id >= (1 << 30))
		return fx_error(err, FX_E_FORMAT, "'%s': %s: an entry is not a token with content and id", path,
				where);
	if (fx_tok_added_add(a, json_string_value(c), json_string_length(c), (int32_t)id, flags_of(o, false)) < 0)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	return 0;
}

int fx_tok_added_from_json(struct fx_tok_added *a, json_t *arr, const char *path, struct fx_err *err)
{
	json_t *el;
	size_t i;
	int ret;

	if (!arr || json_is_null(arr))
		return 0;
	if (!json_is_array(arr))
		return fx_error(err, FX_E_FORMAT, "'%s': added_tokens is not an array", path);
	json_array_foreach(arr, i, el) {
		json_t *id = json_object_get(el, "id");

		if ((ret = add_object(a, el, json_is_integer(id) ? json_integer_value(id) : -1, path, "added_tokens",
				      err)) < 0)
			return ret;
	}
	return 0;
}

int fx_tok_added_from_config(struct fx_tok_added *a, const struct fx_tok_config *c, struct fx_err *err)
{
	json_t *dec = c->config ? json_object_get(c->config, "added_tokens_decoder") : NULL, *el;
	const char *k;
	int ret;

	if (!dec || json_is_null(dec))
		return 0;
	if (!json_is_object(dec))
		return fx_error(err, FX_E_FORMAT, "'%s': added_tokens_decoder is not an object", c->files[0]);
	json_object_foreach(dec, k, el) {
		char *end;
		long long id = strtoll(k, &end, 10);

		if (*k == '\0' || *end != '\0')
			id = -1;
		if ((ret = add_object(a, el, id, c->files[0], "added_tokens_decoder", err)) < 0)
			return ret;
	}
	return 0;
}

/* The id the tokenizers library gives a new token: past the vocabulary and
 * past every added id there. */
static int32_t next_id(const struct fx_tok_added *a, int32_t vocab_size)
{
	int32_t m = -1;

	for (size_t i = 0; i < a->n; i++)
		if (a->v[i].id > m)
			m = a->v[i].id;
	return m >= vocab_size ? m + 1 : vocab_size;
}

int fx_tok_added_special(struct fx_tok_added *a, json_t *val, const char *dflt, fx_tok_vocab_fn vocab,
			 const void *model, int32_t vocab_size, int32_t *id, struct fx_err *err)
{
	const struct fx_tok_added_token *t;
	json_t *obj = json_is_object(val) ? val : NULL;
	json_t *c = obj ? json_object_get(obj, "content") : val;
	const char *s = json_is_string(c) ? json_string_value(c) : NULL;
	size_t n;
	int32_t v;

	*id = -1;
	if (val && !s)
		return 0;   /* not a token name: nothing to add */
	if (!s && !(s = dflt))
		return 0;
	n = val ? json_string_length(c) : strlen(s);
	if (n == 0 || n > MAX_CONTENT)
		return 0;
	if ((t = fx_tok_added_find(a, s, n))) {
		*id = t->id;
		return 0;
	}
	v = vocab(model, s, n);
	if (v < 0 && !val)
		return 0;
	if (v < 0)
		v = next_id(a, vocab_size);
	/* a name alone is a special token matched in the raw text */
	if (fx_tok_added_add(a, s, n, v, obj ? flags_of(obj, true) | FX_TOK_ADDED_SPECIAL : FX_TOK_ADDED_SPECIAL) < 0)
		return fx_error(err, FX_E_NOMEM, "out of memory");
	*id = v;
	return 0;
}

int fx_tok_added_prepare(struct fx_tok_added *a, fx_tok_norm_fn norm, const void *model, struct fx_err *err)
{
	memset(a->first, 0, sizeof(a->first));
	for (size_t i = 0; i < a->n; i++) {
		struct fx_tok_added_token *t = &a->v[i];
		int k = !!(t->flags & FX_TOK_ADDED_NORMALIZED);

		if (k && t->match == t->content &&
		    norm(model, t->content, t->len, &t->match, &t->match_len) < 0) {
			t->match = t->content;
			return fx_error(err, FX_E_NOMEM, "out of memory");
		}
		if (t->match_len) {
			unsigned char c = (unsigned char)t->match[0];

			a->first[k][c >> 3] |= (uint8_t)(1u << (c & 7));
		}
	}
	a->prepared = true;
	return 0;
}

/* ---- matching ----------------------------------------------------------------- */

static bool bit(const uint8_t set[32], unsigned char c)
{
	return set[c >> 3] & (1u << (c & 7));
}

/* \w of the tokenizers library's regex, near enough: letters, digits, '_'. */
static bool is_word(uint32_t cp)
{
	return cp == '_' || fx_uni_is_letter(cp) || fx_uni_is_number(cp);
}

/* The code point that ends s[0..n) (n > 0); invalid bytes count as U+FFFD. */
static uint32_t last_cp(const char *s, size_t n, size_t *start)
{
	size_t i = n - 1;
	uint32_t cp;

	while (i > 0 && n - i < 4 && ((unsigned char)s[i] & 0xC0) == 0x80)
		i--;
	if (fx_utf8_decode(s + i, n - i, &cp) != (int)(n - i)) {
		i = n - 1;
		cp = FX_UNI_REPLACEMENT;
	}
	*start = i;
	return cp;
}

static uint32_t first_cp(const char *s, size_t n, size_t *len)
{
	uint32_t cp;
	int l = fx_utf8_decode(s, n, &cp);

	*len = l > 0 ? (size_t)l : 1;
	return l > 0 ? cp : FX_UNI_REPLACEMENT;
}

int fx_tok_added_split(const struct fx_tok_added *a, const char *s, size_t n, bool normalized, fx_tok_piece_fn fn,
		       void *ctx)
{
	size_t done = 0, i = 0;
	int ret;

	while (i < n) {
		const struct fx_tok_added_token *best = NULL;
		size_t start, stop, k;

		/* the longest token starting at i */
		if (a->prepared && !bit(a->first[normalized], (unsigned char)s[i])) {
			i++;
			continue;
		}
		for (k = 0; k < a->n; k++) {
			const struct fx_tok_added_token *t = &a->v[k];

			if (!(t->flags & FX_TOK_ADDED_NORMALIZED) != !normalized || t->match_len > n - i ||
			    (best && t->match_len <= best->match_len) || memcmp(s + i, t->match, t->match_len))
				continue;
			best = t;
		}
		if (!best) {
			i++;
			continue;
		}
		start = i;
		stop = i + best->match_len;
		i = stop;
		if (best->flags & FX_TOK_ADDED_SINGLE_WORD) {
			size_t at, l;

			/* a match inside a word is dropped, its text stays text */
			if ((start > 0 && is_word(last_cp(s, start, &at))) ||
			    (stop < n && is_word(first_cp(s + stop, n - stop, &l))))
				continue;
		}
		if (best->flags & FX_TOK_ADDED_LSTRIP) {
			size_t at;

			while (start > done && fx_uni_is_space(last_cp(s, start, &at)))
				start = at;
		}
		if (best->flags & FX_TOK_ADDED_RSTRIP) {
			size_t l;

			while (stop < n && fx_uni_is_space(first_cp(s + stop, n - stop, &l)))
				stop += l;
			i = stop;
		}
		if (start > done && (ret = fn(ctx, s + done, start - done, -1)) < 0)
			return ret;
		if ((ret = fn(ctx, NULL, 0, best->id)) < 0)
			return ret;
		done = stop;
	}
	if (n > done && (ret = fn(ctx, s + done, n - done, -1)) < 0)
		return ret;
	return 0;
}
