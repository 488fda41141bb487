#include "fx-tok-unicode.h"

#include <stdlib.h>
#include <string.h>

struct lower_run {
	uint32_t lo, hi;
	int32_t delta;
	uint32_t stride;
};

#include "fx-tok-unicode-impl.h"

int fx_utf8_decode(const char *s, size_t n, uint32_t *cp)
{
	const unsigned char *u = (const unsigned char *)s;
	uint32_t c;
	int len, i;

	*cp = FX_UNI_REPLACEMENT;
	if (u[0] < 0x80) {
		*cp = u[0];
		return 1;
	}
	if (u[0] >= 0xC2 && u[0] <= 0xDF) {
		len = 2;
		c = u[0] & 0x1F;
	} else if (u[0] >= 0xE0 && u[0] <= 0xEF) {
		len = 3;
		c = u[0] & 0x0F;
	} else if (u[0] >= 0xF0 && u[0] <= 0xF4) {
		len = 4;
		c = u[0] & 0x07;
	} else {
		return 0;
	}
	if ((size_t)len > n)
		return 0;
	for (i = 1; i < len; i++) {
		if ((u[i] & 0xC0) != 0x80)
			return 0;
		c = (c << 6) | (u[i] & 0x3F);
	}
	if ((len == 3 && c < 0x800) || (len == 4 && (c < 0x10000 || c > 0x10FFFF)) ||
	    (c >= 0xD800 && c <= 0xDFFF))
		return 0;
	*cp = c;
	return len;
}

int fx_utf8_encode(uint32_t cp, char out[4])
{
	if (cp < 0x80) {
		out[0] = (char)cp;
		return 1;
	}
	if (cp < 0x800) {
		out[0] = (char)(0xC0 | (cp >> 6));
		out[1] = (char)(0x80 | (cp & 0x3F));
		return 2;
	}
	if (cp < 0x10000) {
		out[0] = (char)(0xE0 | (cp >> 12));
		out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
		out[2] = (char)(0x80 | (cp & 0x3F));
		return 3;
	}
	out[0] = (char)(0xF0 | (cp >> 18));
	out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
	out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
	out[3] = (char)(0x80 | (cp & 0x3F));
	return 4;
}

bool fx_utf8_valid(const char *s, size_t n)
{
	size_t i = 0;
	uint32_t cp;

	while (i < n) {
		int l = fx_utf8_decode(s + i, n - i, &cp);

		if (!l)
			return false;
		i += (size_t)l;
	}
	return true;
}

static bool in_ranges(const uint32_t (*r)[2], size_t n, uint32_t cp)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (cp < r[mid][0])
			hi = mid;
		else if (cp > r[mid][1])
			lo = mid + 1;
		else
			return true;
	}
	return false;
}

bool fx_uni_is_letter(uint32_t cp)
{
	if (cp < 0x80)
		return (cp | 0x20) >= 'a' && (cp | 0x20) <= 'z';
	return in_ranges(letter_ranges, FX_ARRAY_SIZE(letter_ranges), cp);
}

bool fx_uni_is_number(uint32_t cp)
{
	if (cp < 0x80)
		return cp >= '0' && cp <= '9';
	return in_ranges(number_ranges, FX_ARRAY_SIZE(number_ranges), cp);
}

bool fx_uni_is_space(uint32_t cp)
{
	switch (cp) {
	case 0x09: case 0x0A: case 0x0B: case 0x0C: case 0x0D: case 0x20: case 0x85: case 0xA0:
	case 0x1680: case 0x2028: case 0x2029: case 0x202F: case 0x205F: case 0x3000:
		return true;
	default:
		return cp >= 0x2000 && cp <= 0x200A;
	}
}

int fx_uni_lower(uint32_t cp, uint32_t out[2])
{
	size_t lo = 0, hi = FX_ARRAY_SIZE(lower_runs);

	if (cp < 0x80) {
		out[0] = cp >= 'A' && cp <= 'Z' ? cp + 32 : cp;
		return 1;
	}
	if (cp == 0x130) {
		out[0] = 'i';
		out[1] = 0x307;
		return 2;
	}
	out[0] = cp;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		const struct lower_run *r = &lower_runs[mid];

		if (cp < r->lo) {
			hi = mid;
		} else if (cp > r->hi) {
			lo = mid + 1;
		} else {
			if ((cp - r->lo) % r->stride == 0)
				out[0] = (uint32_t)((int32_t)cp + r->delta);
			break;
		}
	}
	return 1;
}

/* A row of a table sorted by its first column, or NULL. */
static const uint32_t *find_row(const uint32_t *tab, size_t rows, size_t cols, uint32_t cp)
{
	size_t lo = 0, hi = rows;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		const uint32_t *r = tab + mid * cols;

		if (cp < r[0])
			hi = mid;
		else if (cp > r[0])
			lo = mid + 1;
		else
			return r;
	}
	return NULL;
}

/* The value of the inclusive range (lo, hi, value) holding cp, or 0. */
static uint32_t range_value(const uint32_t (*r)[3], size_t n, uint32_t cp)
{
	size_t lo = 0, hi = n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (cp < r[mid][0])
			hi = mid;
		else if (cp > r[mid][1])
			lo = mid + 1;
		else
			return r[mid][2];
	}
	return 0;
}

static uint32_t ccc(uint32_t cp)
{
	return cp < 0x300 ? 0 : range_value(ccc_runs, FX_ARRAY_SIZE(ccc_runs), cp);
}

/* Hangul constants (Unicode §3.12). */
enum { S_BASE = 0xAC00, L_BASE = 0x1100, V_BASE = 0x1161, T_BASE = 0x11A7,
       L_COUNT = 19, V_COUNT = 21, T_COUNT = 28, N_COUNT = V_COUNT * T_COUNT,
       S_COUNT = L_COUNT * N_COUNT };

static uint32_t compose(uint32_t a, uint32_t b)
{
	size_t lo = 0, hi = FX_ARRAY_SIZE(compose_pairs);

	if (a >= L_BASE && a < L_BASE + L_COUNT && b >= V_BASE && b < V_BASE + V_COUNT)
		return S_BASE + ((a - L_BASE) * V_COUNT + (b - V_BASE)) * T_COUNT;
	if (a >= S_BASE && a < S_BASE + S_COUNT && (a - S_BASE) % T_COUNT == 0 &&
	    b > T_BASE && b < T_BASE + T_COUNT)
		return a + (b - T_BASE);
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		const uint32_t *p = compose_pairs[mid];

		if (a < p[0] || (a == p[0] && b < p[1]))
			hi = mid;
		else if (a > p[0] || b > p[1])
			lo = mid + 1;
		else
			return p[2];
	}
	return 0;
}

size_t fx_uni_nfc(uint32_t *out, const uint32_t *cps, size_t n)
{
	size_t o = 0, i, starter = 0, w;
	uint32_t last = 0, sc;

	/* canonical decomposition */
	for (i = 0; i < n; i++) {
		uint32_t c = cps[i];
		const uint32_t *d = c >= 0xC0 ? find_row(&decomp[0][0], FX_ARRAY_SIZE(decomp), 6, c) : NULL;

		if (c >= S_BASE && c < S_BASE + S_COUNT) {
			uint32_t si = c - S_BASE;

			out[o++] = L_BASE + si / N_COUNT;
			out[o++] = V_BASE + (si % N_COUNT) / T_COUNT;
			if (si % T_COUNT)
				out[o++] = T_BASE + si % T_COUNT;
		} else if (d) {
			for (uint32_t k = 0; k < d[1]; k++)
				out[o++] = d[2 + k];
		} else {
			out[o++] = c;
		}
	}
	/* canonical ordering: stable sort of each run of non-starters by class */
	for (i = 1; i < o; i++) {
		uint32_t c = out[i], cc = ccc(c);
		size_t j = i;

		if (!cc)
			continue;
		while (j > 0 && ccc(out[j - 1]) > cc) {
			out[j] = out[j - 1];
			j--;
		}
		out[j] = c;
	}
	/* canonical composition (the Unicode sample algorithm) */
	if (o == 0)
		return 0;
	sc = out[0];
	last = ccc(sc) ? 256 : 0;
	for (i = 1, w = 1; i < o; i++) {
		uint32_t c = out[i], cc = ccc(c), comp = compose(sc, c);

		if (comp && (last < cc || last == 0)) {
			out[starter] = comp;
			sc = comp;
			continue;
		}
		if (cc == 0) {
			starter = w;
			sc = c;
		}
		last = cc;
		out[w++] = c;
	}
	return w;
}

enum gcb { G_OTHER, G_CONTROL, G_EXTEND, G_SPACING, G_PREPEND, G_CR, G_LF, G_L, G_V, G_T, G_LV, G_LVT };

static int gcb(uint32_t cp)
{
	if (cp == 0x0D)
		return G_CR;
	if (cp == 0x0A)
		return G_LF;
	if ((cp >= 0x1100 && cp <= 0x115F) || (cp >= 0xA960 && cp <= 0xA97C))
		return G_L;
	if ((cp >= 0x1160 && cp <= 0x11A7) || (cp >= 0xD7B0 && cp <= 0xD7C6))
		return G_V;
	if ((cp >= 0x11A8 && cp <= 0x11FF) || (cp >= 0xD7CB && cp <= 0xD7FB))
		return G_T;
	if (cp >= S_BASE && cp < S_BASE + S_COUNT)
		return (cp - S_BASE) % T_COUNT ? G_LVT : G_LV;
	if (cp >= 0x20 && cp < 0x7F)
		return G_OTHER;
	return (int)range_value(gcb_ranges, FX_ARRAY_SIZE(gcb_ranges), cp);
}

size_t fx_uni_grapheme_end(const uint32_t *cps, size_t n, size_t i)
{
	int prev;

	if (i >= n)
		return n;
	prev = gcb(cps[i]);
	for (i++; i < n; i++) {
		int cur = gcb(cps[i]);

		if (prev == G_CR && cur == G_LF) {                                   /* GB3 */
		} else if (prev == G_CR || prev == G_LF || prev == G_CONTROL ||
			   cur == G_CR || cur == G_LF || cur == G_CONTROL) {         /* GB4, GB5 */
			break;
		} else if (prev == G_L && (cur == G_L || cur == G_V || cur == G_LV || cur == G_LVT)) {
		} else if ((prev == G_LV || prev == G_V) && (cur == G_V || cur == G_T)) {
		} else if ((prev == G_LVT || prev == G_T) && cur == G_T) {           /* GB6-8 */
		} else if (cur == G_EXTEND || cur == G_SPACING || prev == G_PREPEND) { /* GB9-9b */
		} else {
			break;
		}
		prev = cur;
	}
	return i;
}

const char *fx_uni_version(void)
{
	return FX_UNICODE_VERSION;
}

int fx_tok_buf_put(struct fx_tok_buf *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap * 2 : 256;
		char *p;

		while (cap < b->n + n + 1)
			cap *= 2;
		if (!(p = realloc(b->p, cap)))
			return FX_E_NOMEM;
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
	return 0;
}
