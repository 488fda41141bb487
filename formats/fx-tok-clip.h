/* The CLIP tokenizer: byte-level BPE with "</w>" word ends, from
 * vocab.json + merges.txt as shipped in FLUX.1's tokenizer/ folder, with
 * the rules of transformers' CLIPTokenizer (tokenizers backend):
 * <|startoftext|> and <|endoftext|> in the text are the special tokens;
 * the rest is NFC-normalized, whitespace runs become one space, lowercased,
 * split with CLIP's pattern
 *   's|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
 * and each piece's UTF-8 bytes, mapped to GPT-2's byte alphabet, are merged
 * by merge rank. */
#ifndef FX_TOK_CLIP_H
#define FX_TOK_CLIP_H

#include "../common/fx-err.h"

#define FX_CLIP_LEN 77

struct fx_tok_clip;

/* dir holds vocab.json and merges.txt; the pad token comes from its
 * tokenizer_config.json or special_tokens_map.json ("pad_token"), else it
 * is the end-of-text token (as for FLUX.1). */
int fx_tok_clip_open(struct fx_tok_clip **out, const char *dir, struct fx_err *err);
void fx_tok_clip_free(struct fx_tok_clip *t);

const char *fx_tok_clip_dir(const struct fx_tok_clip *t);
int fx_tok_clip_vocab_size(const struct fx_tok_clip *t);
int fx_tok_clip_bos(const struct fx_tok_clip *t);
int fx_tok_clip_eos(const struct fx_tok_clip *t);
int fx_tok_clip_pad(const struct fx_tok_clip *t);

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
