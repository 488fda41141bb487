/* The T5 tokenizer: SentencePiece unigram (Viterbi over piece scores) as
 * shipped with T5 v1.1 in FLUX.1's tokenizer_2/, read either from the
 * Hugging Face tokenizer.json (model "Unigram", normalizer "Precompiled",
 * pre-tokenizer "Metaspace") or from SentencePiece's own spiece.model
 * (protobuf). Both forms give the same ids.
 *
 * Encoding: the text is normalized with the precompiled character map
 * (nmt_nfkc for T5: NFKC plus whitespace folding), whitespace runs separate
 * words, every word gets the "▁" prefix and is split into pieces by the
 * best total score (Viterbi); characters no piece covers become <unk>
 * (consecutive ones in a word fused). The map is applied as the library
 * that reads each form applies it: for spiece.model as SentencePiece (the
 * longest key at each position), for tokenizer.json as the tokenizers
 * library (per grapheme cluster: a cluster under 6 bytes starting with a
 * key becomes that shortest key's replacement, else each character is
 * mapped alone). The two differ only for combining marks that follow a
 * mapped character (e.g. "ﬁ" + U+0301: tokenizers drops the accent).
 *
 * Before all that, the added tokens (fx-tok-added.h) are cut out of the
 * text as transformers does, for both forms: those of tokenizer.json and of
 * tokenizer_config.json / special_tokens_map.json next to the file, with
 * the special tokens these name (</s>, <unk>, <pad> by default) and
 * <extra_id_N> as transformers' T5 tokenizer adds them. The text between is
 * normalized and split on its own. */
#ifndef FX_TOK_T5_H
#define FX_TOK_T5_H

#include "fx-err.h"

struct fx_tok_t5;

/* path: a tokenizer.json, a spiece.model (anything not starting with '{'),
 * or a folder holding one of them (tokenizer.json preferred). */
int fx_tok_t5_open(struct fx_tok_t5 **out, const char *path, struct fx_err *err);
void fx_tok_t5_free(struct fx_tok_t5 *t);

/* The file that was read (borrowed). */
const char *fx_tok_t5_path(const struct fx_tok_t5 *t);
int fx_tok_t5_vocab_size(const struct fx_tok_t5 *t);
int fx_tok_t5_eos(const struct fx_tok_t5 *t);
/* The pad id: the configuration's pad_token, else the model's <pad>. */
int fx_tok_t5_pad(const struct fx_tok_t5 *t);
/* The files read: the tokenizer file, then the configuration files that
 * were there (*n of them; borrowed). */
const char *const *fx_tok_t5_files(const struct fx_tok_t5 *t, int *n);

/* The pieces of text (UTF-8; invalid bytes count as U+FFFD), without EOS:
 * *ids is malloc'ed (may be NULL when *n is 0), the caller frees it. */
int fx_tok_t5_tokenize(const struct fx_tok_t5 *t, const char *text, int32_t **ids, size_t *n,
		       struct fx_err *err);

/* As FluxPipeline does (padding "max_length", truncation): the pieces
 * truncated to len-1, then EOS, then the pad id up to len. ids has room for
 * len (>= 1) values; *ntok (may be NULL) receives the count before padding. */
int fx_tok_t5_encode(const struct fx_tok_t5 *t, const char *text, int32_t *ids, int len, int *ntok,
		     struct fx_err *err);

#endif
