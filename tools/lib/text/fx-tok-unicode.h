/* The bits of Unicode the text tokenizers need: UTF-8, general categories
 * L and N, White_Space, per-character lowercase, NFC and grapheme clusters
 * (tables generated from Python's unicodedata and the regex module by
 * tests/fixtures/gen_text_ref.py --c-tables). */
#ifndef FX_TOK_UNICODE_H
#define FX_TOK_UNICODE_H

#include "fx.h"

#define FX_UNI_REPLACEMENT 0xFFFDu

/* A growing NUL-terminated byte string (the normalizers' output); p is
 * malloc'ed, the caller frees it. */
struct fx_tok_buf {
	char *p;
	size_t n, cap;
};

/* Appends s[0..n); FX_E_NOMEM (the buffer unchanged) when it cannot grow. */
int fx_tok_buf_put(struct fx_tok_buf *b, const char *s, size_t n);

/* Decodes one UTF-8 character of s[0..n): returns its length (1..4) and the
 * code point, or 0 when the bytes are not valid UTF-8 (overlong forms,
 * surrogates and values past U+10FFFF are invalid). n > 0. */
int fx_utf8_decode(const char *s, size_t n, uint32_t *cp);
/* Encodes cp (<= U+10FFFF) into out; returns the length (1..4). */
int fx_utf8_encode(uint32_t cp, char out[4]);
/* true when s[0..n) is valid UTF-8. */
bool fx_utf8_valid(const char *s, size_t n);

bool fx_uni_is_letter(uint32_t cp);    /* general category L* */
bool fx_uni_is_number(uint32_t cp);    /* general category N* */
bool fx_uni_is_space(uint32_t cp);     /* White_Space (Rust is_whitespace, regex \s) */
/* Lowercase of one character (Python's str.lower per character): writes 1
 * or 2 code points to out (U+0130 gives "i" + U+0307) and returns the count. */
int fx_uni_lower(uint32_t cp, uint32_t out[2]);

/* NFC of cps[0..n) into out (capacity 4n is always enough): canonical
 * decomposition, canonical ordering of combining marks, canonical
 * composition (Unicode §3.11). Returns the output length. */
size_t fx_uni_nfc(uint32_t *out, const uint32_t *cps, size_t n);

/* The end of the extended grapheme cluster (UAX #29) that starts at
 * cps[i]: rules GB3-GB9b (CR LF, controls, Hangul syllables, Extend, ZWJ,
 * SpacingMark, Prepend). Emoji ZWJ sequences (GB11) and regional indicator
 * pairs (GB12-13) are split where UAX #29 keeps them, and Indic conjuncts
 * (GB9c) are not joined: none of that changes the T5 normalization, for
 * which clusters of 6 bytes or more are taken apart anyway. */
size_t fx_uni_grapheme_end(const uint32_t *cps, size_t n, size_t i);

const char *fx_uni_version(void);

#endif
