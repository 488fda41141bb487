/* Times fx_flux_forward alone (no sampler, no capture), as
 * bench/torch-forward.py times the diffusers forward: one warm-up call, then
 * the best of REPS. Inputs: seeded Gaussian latents and text states, a
 * side x side image id grid, zero text ids.
 *
 *   fx-forward-bench MODEL IMG_TOKENS TXT_TOKENS [REPS]
 *
 * Prints "fx_forward ms=<best> mean_ms=<mean> reps=<n>". */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <math.h>

#include "fx-flux.h"
#include "fx-model.h"
#include "fx-sampler.h"

static double now(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
	struct fx_err err = { 0 };
	struct fx_model *m = NULL;
	struct fx_flux *f = NULL;
	const struct fx_model_config *c;
	struct fx_flux_input in = { 0 };
	struct fx_rng g;
	float *img = NULL, *txt = NULL, *pooled = NULL, *ids = NULL, *out = NULL;
	int64_t ni, nt, side;
	int reps, ret = 1;
	double best = INFINITY, sum = 0.0;

	if (argc < 4) {
		fprintf(stderr, "usage: %s MODEL IMG_TOKENS TXT_TOKENS [REPS]\n", argv[0]);
		return 2;
	}
	ni = atoll(argv[2]);
	nt = atoll(argv[3]);
	reps = argc > 4 ? atoi(argv[4]) : 2;
	side = (int64_t)llround(sqrt((double)ni));
	if (fx_model_open(&m, argv[1], &err) < 0 || fx_flux_new(&f, m, &err) < 0)
		goto out;
	c = fx_model_config(m);
	img = malloc((size_t)(ni * c->in_channels) * sizeof(float));
	txt = malloc((size_t)(nt * c->joint_dim) * sizeof(float));
	pooled = malloc((size_t)c->pooled_dim * sizeof(float));
	ids = calloc((size_t)(ni * 3), sizeof(float));
	out = malloc((size_t)(ni * c->in_channels) * sizeof(float));
	if (!img || !txt || !pooled || !ids || !out) {
		fprintf(stderr, "fx-forward-bench: out of memory\n");
		goto out;
	}
	fx_rng_init(&g, 0);
	for (int64_t i = 0; i < ni * c->in_channels; i++)
		img[i] = (float)fx_rng_normal(&g);
	for (int64_t i = 0; i < nt * c->joint_dim; i++)
		txt[i] = (float)fx_rng_normal(&g);
	for (int64_t i = 0; i < c->pooled_dim; i++)
		pooled[i] = (float)fx_rng_normal(&g);
	for (int64_t i = 0; i < ni; i++) {
		ids[i * 3 + 1] = (float)(i / side);
		ids[i * 3 + 2] = (float)(i % side);
	}
	in.ni = ni;
	in.nt = nt;
	in.img = img;
	in.txt = txt;
	in.pooled = pooled;
	in.img_ids = ids;
	in.sigma = 1.0f;
	in.guidance = 3.5f;
	for (int r = 0; r <= reps; r++) {
		double t0 = now(), dt;

		if (fx_flux_forward(f, &in, out, &err) < 0)
			goto out;
		dt = now() - t0;
		if (r == 0)
			continue;   /* warm-up */
		best = dt < best ? dt : best;
		sum += dt;
	}
	for (int64_t i = 0; i < ni * c->in_channels; i++)
		if (!isfinite(out[i])) {
			fprintf(stderr, "fx-forward-bench: non-finite output\n");
			goto out;
		}
	printf("fx_forward ms=%.1f mean_ms=%.1f reps=%d\n", best * 1e3, sum / reps * 1e3, reps);
	ret = 0;
out:
	if (ret && err.code)
		fprintf(stderr, "fx-forward-bench: %s\n", err.msg);
	free(img);
	free(txt);
	free(pooled);
	free(ids);
	free(out);
	fx_flux_free(f);
	fx_model_close(m);
	return ret;
}
