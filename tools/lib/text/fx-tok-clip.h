/* The CLIP tokenizer: byte-level BPE with "</w>" word ends, from
 * vocab.json + merges.txt as shipped in FLUX.1's tokenizer/ folder, with
 * the rules of transformers' CLIPTokenizer (tokenizers backend): the added
 * tokens (fx-tok-added.h) of tokenizer_config.json and
 * special_tokens_map.json are cut out first (<|startoftext|> and
 * <|endoftext|>, and whatever else these name: a pad token "!" makes "!"
 * special text; a tokenizer.json in the folder is not read); the text
 * between is NFC-normalized, whitespace runs become one space, lowercased,
 * split with CLIP's pattern
 *   's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * and each piece's UTF-8 bytes, mapped to GPT-2's byte alphabet, are merged
 * by merge rank. */
#ifndef FX_TOK_CLIP_H
#define FX_TOK_CLIP_H

#include "fx-err.h"

#define FX_CLIP_LEN 77

struct fx_tok_clip;

/* dir holds vocab.json and merges.txt; the start-, end-of-text and pad
 * tokens are those its tokenizer_config.json or special_tokens_map.json
 * name ("bos_token", "eos_token", "pad_token"), else <|startoftext|> and
 * <|endoftext|> (FLUX.1's pad token). */
int fx_tok_clip_open(struct fx_tok_clip **out, const char *dir, struct fx_err *err);
void fx_tok_clip_free(struct fx_tok_clip *t);

const char *fx_tok_clip_dir(const struct fx_tok_clip *t);
int fx_tok_clip_vocab_size(const struct fx_tok_clip *t);
int fx_tok_clip_bos(const struct fx_tok_clip *t);
int fx_tok_clip_eos(const struct fx_tok_clip *t);
int fx_tok_clip_pad(const struct fx_tok_clip *t);
/* The files read: vocab.json, merges.txt, then the configuration files
 * that were there (*n of them; borrowed). */
const char *const *fx_tok_clip_files(const struct fx_tok_clip *t, int *n);

/* The tokens of text without BOS/EOS; *ids malloc'ed (may be NULL when *n
 * is 0), the caller frees it. */
int fx_tok_clip_tokenize(const struct fx_tok_clip *t, const char *text, int32_t **ids, size_t *n,
			 struct fx_err *err);

/* As FluxPipeline does: BOS, the tokens truncated to len-2, EOS, then the
 * pad id up to len (>= 2). *ntok (may be NULL) receives the count before
 * padding. */
int fx_tok_clip_encode(const struct fx_tok_clip *t, const char *text, int32_t *ids, int len,
		       int *ntok, struct fx_err *err);

#endif
