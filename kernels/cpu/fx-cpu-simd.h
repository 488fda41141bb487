/* What the CPU kernels share to vectorize their hot loops; included by the
 * kernels/cpu sources only. */
#ifndef FX_CPU_SIMD_H
#define FX_CPU_SIMD_H

#include <stdint.h>
#include <string.h>

/* Hot loops compiled twice: AVX2 where the CPU has it, baseline otherwise
 * (the build targets plain x86-64; the same IEEE operations, so the same
 * bytes). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__)
#define FX_CPU_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define FX_CPU_CLONES
#endif

/* c ? a : b on the bits: a float ?: blocks vectorization under the default
 * -ftrapping-math. */
static inline float fx_select_f32(int c, float a, float b)
{
	uint32_t ua, ub, m = -(uint32_t)(c != 0), r;
	float f;

	memcpy(&ua, &a, 4);
	memcpy(&ub, &b, 4);
	r = (ua & m) | (ub & ~m);
	memcpy(&f, &r, 4);
	return f;
}

#endif
