/* Qwen-Image forward, sampler schedule, RoPE and true CFG against diffusers
 * 0.42.1 (transformer_qwenimage.py, pipeline_qwenimage.py,
 * scheduling_flow_match_euler_discrete.py). The constants below were
 * printed by diffusers itself (QwenEmbedRope, FlowMatchEulerDiscreteScheduler
 * with the Qwen-Image scheduler config, the pipeline's bf16 timestep). */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fx-model.h"
#include "fx-qwen-sampler.h"
#include "fx-qwen.h"
#include "fx-sampler.h"

/* ---- timestep ------------------------------------------------------------ */

static void test_timestep_rounding(void **state)
{
	/* σ, then the transformer's timestep input: bf16(bf16(1000σ)/1000) */
	static const float tab[][2] = {
		{ 1.0f, 1.0f },
		{ 0.9897009134292603f, 0.98828125f },    /* 990 / 1000 → bf16 */
		{ 0.7434282302856445f, 0.7421875f },
		{ 0.42518579959869385f, 0.42578125f },
		{ 0.019999980926513672f, 0.02001953125f },
		{ 0.0584757924079895f, 0.05859375f },
	};

	(void)state;
	for (size_t i = 0; i < FX_ARRAY_SIZE(tab); i++)
		assert_true(fx_qwen_timestep(tab[i][0]) == tab[i][1]);
	assert_true(fx_qwen_timestep(0.0f) == 0.0f);
}

/* ---- schedule ------------------------------------------------------------ */

static void test_sigmas(void **state)
{
	/* FlowMatchEulerDiscreteScheduler(Qwen-Image config).set_timesteps(
	 * sigmas=np.linspace(1, 1/n, n), mu=calculate_shift(L, 256, 8192, 0.5, 0.9)) */
	static const struct {
		int64_t L;
		int n;
		double mu;
		float head[3], tail[3];   /* sigmas[0..2], sigmas[n-2..n] */
	} cases[] = {
		{ 4096, 50, 0.6935483870967742, { 0x1p+0f, 0x1.faba14p-1f, 0x1.f55896p-1f },
		  { 0x1.df08ap-5f, 0x1.47aep-6f, 0.0f } },
		{ 6032, 50, 0.7911290322580645, { 0x1p+0f, 0x1.fb318p-1f, 0x1.f6477ep-1f },
		  { 0x1.fc9f2p-5f, 0x1.47aep-6f, 0.0f } },
		{ 64, 4, 0.4903225806451613, { 0x1p+0f, 0x1.7ca2ap-1f, 0x1.b363e8p-2f },
		  { 0x1.b363e8p-2f, 0x1.47aep-6f, 0.0f } },
		{ 16, 3, 0.4879032258064516, { 0x1p+0f, 0x1.2a2d1cp-1f, 0x1.47aep-6f },
		  { 0x1.2a2d1cp-1f, 0x1.47aep-6f, 0.0f } },
	};
	float s[64];
	struct fx_err err = { 0 };

	(void)state;
	for (size_t c = 0; c < FX_ARRAY_SIZE(cases); c++) {
		int n = cases[c].n;

		assert_true(fabs(fx_qwen_mu(cases[c].L) - cases[c].mu) < 1e-15);
		assert_int_equal(fx_qwen_sigmas(s, n, cases[c].L, &err), 0);
		for (int i = 0; i < 3; i++) {
			assert_true(s[i] == cases[c].head[i]);
			assert_true(s[n - 2 + i] == cases[c].tail[i]);
		}
		for (int i = 0; i < n; i++)
			assert_true(s[i] > s[i + 1]);
	}
	/* one step: diffusers' terminal stretch divides 0 by 0 (NaN sigmas) */
	assert_int_equal(fx_qwen_sigmas(s, 1, 4096, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "2 steps"));
	assert_int_equal(fx_qwen_sigmas(s, 0, 4096, &err), FX_E_ARG);
	assert_true(fabs(fx_qwen_mu(256) - 0.5) < 1e-15);
	assert_true(fabs(fx_qwen_mu(8192) - 0.9) < 1e-15);
}

/* ---- RoPE ---------------------------------------------------------------- */

struct rope_pick {
	int64_t t;
	int k;
	float c, s;
};

static void check_rope(const int axes[3], int h, int w, int64_t nt, const struct rope_pick *p,
		       size_t np)
{
	int64_t n = nt + (int64_t)h * w;
	int half = (axes[0] + axes[1] + axes[2]) / 2;
	float *cs = malloc((size_t)(n * half) * sizeof(float));
	float *sn = malloc((size_t)(n * half) * sizeof(float));

	assert_true(cs && sn);
	fx_qwen_rope_table(cs, sn, nt, h, w, axes);
	for (size_t i = 0; i < np; i++) {
		float c = cs[p[i].t * half + p[i].k], s = sn[p[i].t * half + p[i].k];

		if (c != p[i].c || s != p[i].s)
			fail_msg("rope token %lld pair %d: (%.9g, %.9g), diffusers (%.9g, %.9g)",
				 (long long)p[i].t, p[i].k, c, s, p[i].c, p[i].s);
	}
	free(cs);
	free(sn);
}

static void test_rope(void **state)
{
	/* QwenEmbedRope(10000, axes, scale_rope=True)([(1, h, w)], nt): the
	 * rows of cat([txt_freqs, vid_freqs]), pair k, (real, imag) */
	static const int ax1[3] = { 8, 12, 12 }, ax2[3] = { 16, 56, 56 };
	static const struct rope_pick p1[] = {
		{ 0, 0, -0.416146844625473f, 0.9092974066734314f },     /* text 0: p = 2 */
		{ 0, 3, 0.9999979734420776f, 0.0019999986980110407f },
		{ 3, 15, 0.9999973177909851f, 0.0023207927588373423f },
		{ 4, 0, 1.0f, 0.0f },                                     /* image (0,0): (0,-2,-3) */
		{ 4, 4, -0.416146844625473f, -0.9092974066734314f },
		{ 4, 9, 0.9999995827674866f, -0.0009283177787438035f },
		{ 4, 15, 0.9999990463256836f, -0.0013924763770774007f },
		{ 18, 5, 1.0f, 0.0f },                                    /* image (2,4): (0,0,1) */
		{ 18, 10, 0.5403022766113281f, 0.8414709568023682f },
		{ 5, 11, 0.9085956811904907f, -0.41767680644989014f },
	};
	static const struct rope_pick p2[] = {
		{ 0, 0, -0.9873392581939697f, -0.15862266719341278f },
		{ 6, 7, 0.9998895525932312f, 0.014862158335745335f },
		{ 6, 8, -0.9923354983329773f, 0.12357312440872192f },
		{ 6, 35, 0.9999786615371704f, 0.006530581507831812f },
		{ 7, 8, -0.39998531341552734f, 0.9165215492248535f },
		{ 7, 36, -0.7480575442314148f, 0.6636338829994202f },
		{ 4820, 8, -0.666938066482544f, 0.7451131343841553f },
		{ 4820, 36, -0.962605893611908f, 0.2709057927131653f },
		{ 2347, 20, 0.999254584312439f, -0.03860435634851456f },
		{ 2347, 50, 0.9959527254104614f, -0.08987854421138763f },
	};

	(void)state;
	check_rope(ax1, 3, 5, 4, p1, FX_ARRAY_SIZE(p1));
	check_rope(ax2, 83, 58, 7, p2, FX_ARRAY_SIZE(p2));
}

/* ---- true CFG ------------------------------------------------------------ */

static void test_cfg(void **state)
{
	enum { N = 5, C = 64 };
	float pos[N * C], neg[N * C], got[N * C];
	struct fx_rng g;

	(void)state;
	fx_rng_init(&g, 3);
	fx_rng_normal_f32(&g, pos, N * C);
	fx_rng_normal_f32(&g, neg, N * C);
	memcpy(got, pos, sizeof(pos));
	fx_qwen_cfg(got, neg, N, C, 4.0f);
	for (int t = 0; t < N; t++) {
		double sp = 0, sc = 0, comb[C], sg = 0;

		for (int j = 0; j < C; j++) {
			comb[j] = neg[t * C + j] + 4.0 * ((double)pos[t * C + j] - neg[t * C + j]);
			sp += (double)pos[t * C + j] * pos[t * C + j];
			sc += comb[j] * comb[j];
			sg += (double)got[t * C + j] * got[t * C + j];
		}
		/* the result has the norm of the positive prediction ... */
		assert_true(fabs(sqrt(sg) - sqrt(sp)) < 1e-5 * sqrt(sp));
		/* ... and the direction of the combination */
		for (int j = 0; j < C; j++)
			assert_true(fabs(got[t * C + j] - comb[j] * sqrt(sp / sc)) < 1e-5);
	}
	/* scale 1: the positive prediction (to rounding) */
	memcpy(got, pos, sizeof(pos));
	fx_qwen_cfg(got, neg, N, C, 1.0f);
	for (int i = 0; i < N * C; i++)
		assert_true(fabsf(got[i] - pos[i]) <= 1e-6f * fmaxf(1.0f, fabsf(pos[i])));
	/* a small exact case: pos (3, 4), neg (0, 0) → comb (12, 16) rescaled to norm 5 */
	{
		float p[2] = { 3.0f, 4.0f }, q[2] = { 0.0f, 0.0f };

		fx_qwen_cfg(p, q, 1, 2, 4.0f);
		assert_true(p[0] == 3.0f && p[1] == 4.0f);
		p[0] = 3.0f;
		p[1] = 4.0f;
		q[0] = 1.0f;   /* comb = (1 + 4·2, 16) = (9, 16), norm √337 */
		fx_qwen_cfg(p, q, 1, 2, 4.0f);
		assert_true(fabsf(p[0] - (float)(9.0 * 5.0 / sqrt(337.0))) < 1e-6f);
		assert_true(fabsf(p[1] - (float)(16.0 * 5.0 / sqrt(337.0))) < 1e-6f);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_timestep_rounding),
		cmocka_unit_test(test_sigmas),
		cmocka_unit_test(test_rope),
		cmocka_unit_test(test_cfg),
	};

	return cmocka_run_group_tests_name("qwenimage", tests, NULL, NULL);
}
