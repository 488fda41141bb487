/* Scalar float conversions: bf16, f16, fp8 e4m3fn. Narrowing rounds to
 * nearest even on the bit pattern so results do not depend on the FPU mode. */
#include "fx-tensor.h"

#include <string.h>

static uint32_t f32_bits(float f)
{
	uint32_t u;
	memcpy(&u, &f, sizeof(u));
	return u;
}

static float bits_f32(uint32_t u)
{
	float f;
	memcpy(&f, &u, sizeof(f));
	return f;
}

float fx_bf16_to_f32(uint16_t h)
{
	return bits_f32((uint32_t)h << 16);
}

uint16_t fx_f32_to_bf16(float f)
{
	uint32_t u = f32_bits(f);

	if ((u & 0x7fffffffu) > 0x7f800000u)   /* NaN: keep sign, force quiet */
		return (uint16_t)((u >> 16) | 0x0040u);
	u += 0x7fffu + ((u >> 16) & 1u);       /* overflow carries into inf, as RNE should */
	return (uint16_t)(u >> 16);
}

float fx_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000u) << 16;
	uint32_t e = (h >> 10) & 0x1fu, m = h & 0x3ffu;

	if (e == 0x1f)
		return bits_f32(sign | 0x7f800000u | (m << 13));
	if (e == 0) {
		/* subnormal: m * 2^-24, exact in f32 */
		float v = (float)m * bits_f32(0x33800000u);
		return sign ? -v : v;
	}
	return bits_f32(sign | ((e + 112u) << 23) | (m << 13));
}

uint16_t fx_f32_to_f16(float f)
{
	uint32_t u = f32_bits(f);
	uint16_t sign = (uint16_t)((u >> 16) & 0x8000u);
	uint32_t a = u & 0x7fffffffu;

	if (a > 0x7f800000u)
		return (uint16_t)(sign | 0x7e00u | ((a >> 13) & 0x3ffu));
	if (a >= 0x477ff000u)          /* rounds to >= 65520: inf */
		return (uint16_t)(sign | 0x7c00u);
	if (a >= 0x38800000u) {        /* normal f16 range (>= 2^-14) */
		uint32_t r = a - (112u << 23);
		r += 0xfffu + ((r >> 13) & 1u);
		return (uint16_t)(sign | (r >> 13));
	}
	if (a < 0x33000000u)           /* below half the smallest subnormal */
		return sign;
	/* subnormal: shift the full mantissa down with RNE on the dropped bits */
	{
		uint32_t e = a >> 23, m = (a & 0x7fffffu) | 0x800000u;
		uint32_t shift = 126u - e;   /* 14..24 for e in 102..112 */
		uint32_t q = m >> shift, rem = m & ((1u << shift) - 1u), half = 1u << (shift - 1u);
		if (rem > half || (rem == half && (q & 1u)))
			q++;
		return (uint16_t)(sign | q);
	}
}

float fx_e5m2_to_f32(uint8_t c)
{
	return fx_f16_to_f32((uint16_t)(c << 8));
}

float fx_e4m3_to_f32(uint8_t c)
{
	uint32_t e = (c >> 3) & 0xfu, m = c & 7u;
	float v;

	if (e == 0xf && m == 7)
		return bits_f32(0x7fc00000u);
	if (e == 0)
		v = (float)m * (1.0f / 512.0f);
	else
		v = bits_f32(((e + 120u) << 23) | (m << 20));
	return (c & 0x80) ? -v : v;
}

uint8_t fx_f32_to_e4m3(float f)
{
	uint32_t u = f32_bits(f), a = u & 0x7fffffffu;
	uint32_t code;

	if (a > 0x7f800000u)
		return 0x7f;
	if (a >= 0x43e00000u) {                /* >= 448 (and inf): saturate */
		code = 0x7e;
	} else if (a < 0x3c800000u) {          /* below 2^-6: subnormal, step 2^-9 */
		float q = bits_f32(a) * 512.0f;    /* exact power-of-two scaling */
		uint32_t qi = (uint32_t)q;
		float rem = q - (float)qi;
		if (rem > 0.5f || (rem == 0.5f && (qi & 1u)))
			qi++;
		code = qi;                          /* 8 becomes the smallest normal */
	} else {
		uint32_t e = (a >> 23) - 120u, mant = a & 0x7fffffu;
		uint32_t rem = mant & 0xfffffu;
		code = (e << 3) | (mant >> 20);
		if (rem > 0x80000u || (rem == 0x80000u && (code & 1u)))
			code++;                         /* mantissa carry moves into the exponent */
		if (code > 0x7e)
			code = 0x7e;
	}
	/* zero keeps no sign: scales must stay unsigned (golden: -0 -> 0x00) */
	if (code == 0)
		return 0;
	return (uint8_t)(code | ((u >> 24) & 0x80u));
}

/* ---- bulk BF16 -> f32 ---------------------------------------------------- */

static bool widen_plain(float *dst, const unsigned char *src, size_t n)
{
	unsigned nonfin = 0;

	for (size_t i = 0; i < n; i++) {
		uint16_t h;
		uint32_t u;

		memcpy(&h, src + 2 * i, 2);
		u = (uint32_t)h << 16;
		memcpy(&dst[i], &u, 4);
		nonfin |= (h & 0x7f80u) == 0x7f80u;
	}
	return nonfin != 0;
}

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

/* AVX2, 8 values a step. Streaming stores (for weights next read by a GEMM's
 * packing, long after these lines would have left the cache) skip the read
 * for ownership and double the rate; plain stores keep a small block hot. */
__attribute__((target("avx2")))
static bool widen_avx2(float *dst, const unsigned char *src, size_t n, bool stream)
{
	const __m256i expo = _mm256_set1_epi32(0x7f800000);
	__m256i bad = _mm256_setzero_si256();
	size_t i = 0, head = stream ? (size_t)((32 - ((uintptr_t)dst & 31)) & 31) / 4 : 0;
	bool nonfin;

	if (stream && ((uintptr_t)dst & 3))
		return widen_plain(dst, src, n);
	head = head < n ? head : n;
	nonfin = widen_plain(dst, src, head);
	for (i = head; i + 8 <= n; i += 8) {
		__m128i h = _mm_loadu_si128((const __m128i *)(const void *)(src + 2 * i));
		__m256i u = _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16);

		bad = _mm256_or_si256(bad, _mm256_cmpeq_epi32(_mm256_and_si256(u, expo), expo));
		if (stream)
			_mm256_stream_ps(dst + i, _mm256_castsi256_ps(u));
		else
			_mm256_storeu_ps(dst + i, _mm256_castsi256_ps(u));
	}
	if (stream)
		_mm_sfence();
	return nonfin || !_mm256_testz_si256(bad, bad) || widen_plain(dst + i, src + 2 * i, n - i);
}
#endif

bool fx_bf16_widen(float *dst, const void *src, size_t n, bool stream)
{
#if defined(__x86_64__) && defined(__GNUC__)
	if (n >= 64 && __builtin_cpu_supports("avx2"))
		return widen_avx2(dst, src, n, stream);
#else
	(void)stream;
#endif
	return widen_plain(dst, src, n);
}

bool fx_bf16_copy(uint16_t *dst, const void *src, size_t n)
{
	unsigned nonfin = 0;

	memcpy(dst, src, n * sizeof(uint16_t));
	#pragma omp simd reduction(| : nonfin)
	for (size_t i = 0; i < n; i++)
		nonfin |= (dst[i] & 0x7f80u) == 0x7f80u;
	return nonfin != 0;
}
