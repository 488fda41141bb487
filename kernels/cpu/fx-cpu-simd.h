/* What the CPU kernels share to vectorize their hot loops; included by the
 * kernels/cpu sources only. */
#ifndef FX_CPU_SIMD_H
#define FX_CPU_SIMD_H

#include <stdint.h>
#include <string.h>

/* Hot loops compiled three times: AVX-512, AVX2 or baseline, whichever the
 * CPU has (the build targets plain x86-64). Loops keep a fixed number of
 * partial sums, so every clone does the same IEEE operations: the same
 * bytes (tests/unit/test-clones.c). FX_NO_CLONES: baseline only. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__SANITIZE_ADDRESS__) && \
	!defined(FX_NO_CLONES)
#define FX_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
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
