/* Added tokens of the text tokenizers, as the tokenizers library (behind
 * transformers' T5 and CLIP tokenizers) treats them: strings such as "</s>",
 * "<extra_id_0>" or "<|endoftext|>" that are cut out of the text before the
 * model sees it and become one id each.
 *
 * Where they come from (first one of a given content wins):
 *   1. tokenizer.json "added_tokens" (content, id, single_word, lstrip,
 *      rstrip, normalized, special);
 *   2. tokenizer_config.json "added_tokens_decoder" (id -> the same fields);
 *   3. the special tokens the configuration names (bos_token, eos_token,
 *      unk_token, sep_token, pad_token, cls_token, mask_token,
 *      additional_special_tokens; tokenizer_config.json's, else
 *      special_tokens_map.json's), which transformers adds when it loads
 *      the tokenizer: a pad token "!" makes "!" special text.
 * A token's id is its id in 1. or 2., else its id in the model's vocabulary,
 * else the next free id past the vocabulary.
 *
 * Matching: tokens with normalized false are found in the raw text, the
 * others in the normalized text of the pieces between (their content is
 * normalized the same way); leftmost match first, the longest there.
 * single_word drops a match with a word character (letter, digit or '_')
 * right before or after it; lstrip and rstrip take the whitespace on that
 * side into the token. */
#ifndef FX_TOK_ADDED_H
#define FX_TOK_ADDED_H

#include <jansson.h>

#include "fx-err.h"

enum fx_tok_added_flags {
	FX_TOK_ADDED_SINGLE_WORD = 1 << 0,
	FX_TOK_ADDED_LSTRIP = 1 << 1,
	FX_TOK_ADDED_RSTRIP = 1 << 2,
	FX_TOK_ADDED_NORMALIZED = 1 << 3,
	FX_TOK_ADDED_SPECIAL = 1 << 4,
};

struct fx_tok_added_token {
	char *content;
	size_t len;
	char *match;          /* what is searched: content, or its normalized form */
	size_t match_len;
	int32_t id;
	unsigned flags;
};

struct fx_tok_added {
	struct fx_tok_added_token *v;
	size_t n, cap;
	bool prepared;
	uint8_t first[2][32];  /* [normalized] bit set of the bytes a match starts with */
};

/* The configuration files of a tokenizer folder, when present. */
struct fx_tok_config {
	json_t *config;       /* tokenizer_config.json, or NULL */
	json_t *map;          /* special_tokens_map.json, or NULL */
	char *files[2];       /* the files read, for the tokenizer's identity */
	int nfiles;
};

/* Reads dir/tokenizer_config.json and dir/special_tokens_map.json where they
 * exist; one that is not valid JSON is an error (FX_E_FORMAT). */
int fx_tok_config_load(struct fx_tok_config *c, const char *dir, struct fx_err *err);
void fx_tok_config_release(struct fx_tok_config *c);
/* The value of a configuration key, tokenizer_config.json's, else
 * special_tokens_map.json's (transformers 5 reads the latter only when the
 * former has no added_tokens_decoder; in real folders they agree); NULL
 * when neither has it. Borrowed. */
json_t *fx_tok_config_get(const struct fx_tok_config *c, const char *key);

void fx_tok_added_release(struct fx_tok_added *a);
/* The token of that content, or NULL. */
const struct fx_tok_added_token *fx_tok_added_find(const struct fx_tok_added *a, const char *s, size_t n);
/* Adds a token unless one of that content is there (returns 0 either way);
 * FX_E_NOMEM. */
int fx_tok_added_add(struct fx_tok_added *a, const char *s, size_t n, int32_t id, unsigned flags);

/* tokenizer.json's "added_tokens" array (NULL: none); path names the file
 * in messages. */
int fx_tok_added_from_json(struct fx_tok_added *a, json_t *arr, const char *path, struct fx_err *err);
/* tokenizer_config.json's "added_tokens_decoder" of c, if any. */
int fx_tok_added_from_config(struct fx_tok_added *a, const struct fx_tok_config *c, struct fx_err *err);

/* The model's id of a piece, or -1. */
typedef int32_t (*fx_tok_vocab_fn)(const void *model, const char *s, size_t n);

/* Adds the special token val names (a string, or an object with "content"
 * and flags) and sets *id to its id; new ids start at vocab_size. val NULL:
 * dflt (when not NULL) is added only when it is already an added token or
 * in the vocabulary, else *id = -1. */
int fx_tok_added_special(struct fx_tok_added *a, json_t *val, const char *dflt, fx_tok_vocab_fn vocab,
			 const void *model, int32_t vocab_size, int32_t *id, struct fx_err *err);

/* Normalizes s[0..n) into a malloc'ed string. */
typedef int (*fx_tok_norm_fn)(const void *model, const char *s, size_t n, char **out, size_t *out_len);
/* Sets what each token is matched as; call once all are added. */
int fx_tok_added_prepare(struct fx_tok_added *a, fx_tok_norm_fn norm, const void *model, struct fx_err *err);

/* Cuts s[0..n) at the tokens whose normalized flag is `normalized`: calls
 * fn(ctx, piece, len, -1) for the text between (not for empty pieces) and
 * fn(ctx, NULL, 0, id) for each token, in order; stops at fn's first
 * negative return, which it returns. */
typedef int (*fx_tok_piece_fn)(void *ctx, const char *s, size_t n, int32_t id);
int fx_tok_added_split(const struct fx_tok_added *a, const char *s, size_t n, bool normalized, fx_tok_piece_fn fn,
		       void *ctx);

#endif
