/* Sampling pieces shared by the DiT families: Gaussian generator, latent
 * packing, noise, token count, Euler steps. */
#include "fx-dit-sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifndef M_PI
#define M_PI 3.14159265358979323846
#endif

void fx_rng_init(struct fx_rng *r, uint64_t seed)
{
	r->s = seed;
	r->spare = 0.0;
	r->has_spare = false;
}

uint64_t fx_rng_u64(struct fx_rng *r)
{
	uint64_t z = (r->s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

double fx_rng_uniform(struct fx_rng *r)
{
	return ((double)(fx_rng_u64(r) >> 11) + 0.5) * 0x1.0p-53;
}

double fx_rng_normal(struct fx_rng *r)
{
	double u1, u2, rad, a;

	if (r->has_spare) {
		r->has_spare = false;
		return r->spare;
	}
	u1 = fx_rng_uniform(r);
	u2 = fx_rng_uniform(r);
	rad = sqrt(-2.0 * log(u1));
	a = 2.0 * M_PI * u2;
	r->spare = rad * sin(a);
	r->has_spare = true;
	return rad * cos(a);
}

void fx_rng_normal_f32(struct fx_rng *r, float *dst, size_t n)
{
	for (size_t i = 0; i < n; i++)
		dst[i] = (float)fx_rng_normal(r);
}

void fx_latent_pack(float *packed, const float *z, int c, int h, int w)
{
	int hp = h / 2, wp = w / 2;

	for (int r = 0; r < hp; r++)
		for (int col = 0; col < wp; col++) {
			float *dst = packed + ((size_t)r * wp + col) * 4 * c;

			for (int ch = 0; ch < c; ch++)
				for (int dy = 0; dy < 2; dy++)
					for (int dx = 0; dx < 2; dx++)
						dst[ch * 4 + dy * 2 + dx] =
							z[((size_t)ch * h + 2 * r + dy) * w + 2 * col + dx];
		}
}

void fx_latent_unpack(float *z, const float *packed, int c, int h, int w)
{
	int hp = h / 2, wp = w / 2;

	for (int r = 0; r < hp; r++)
		for (int col = 0; col < wp; col++) {
			const float *src = packed + ((size_t)r * wp + col) * 4 * c;

			for (int ch = 0; ch < c; ch++)
				for (int dy = 0; dy < 2; dy++)
					for (int dx = 0; dx < 2; dx++)
						z[((size_t)ch * h + 2 * r + dy) * w + 2 * col + dx] =
							src[ch * 4 + dy * 2 + dx];
		}
}

void fx_sampler_noise(float *packed, int c, int h, int w, uint64_t seed)
{
	struct fx_rng r;

	/* drawn in (ch, y, x) order, stored straight at the packed position */
	fx_rng_init(&r, seed);
	for (int ch = 0; ch < c; ch++)
		for (int y = 0; y < h; y++)
			for (int x = 0; x < w; x++)
				packed[((size_t)(y / 2) * (w / 2) + x / 2) * 4 * c + ch * 4 +
				       (y % 2) * 2 + x % 2] = (float)fx_rng_normal(&r);
}

int fx_sampler_tokens(int width, int height, int64_t *ni, struct fx_err *err)
{
	if (width <= 0 || height <= 0 || width % 16 || height % 16 || width > 65536 ||
	    height > 65536)
		return fx_error(err, FX_E_ARG,
				"bad resolution %dx%d (positive multiples of 16 expected)", width,
				height);
	*ni = (int64_t)(width / 16) * (height / 16);
	return 0;
}

void fx_sampler_linspace(float *s, int steps)
{
	/* numpy linspace(1, 1/n, n): i·step + 1, the last one exactly 1/n */
	double step = steps > 1 ? (1.0 / steps - 1.0) / (double)(steps - 1) : 0.0;

	for (int i = 0; i < steps; i++)
		s[i] = (float)(i == steps - 1 ? 1.0 / steps : (double)i * step + 1.0);
}

void fx_sampler_start(float *x, const float *init, int64_t nv, int c, int h, int w,
		      uint64_t seed)
{
	if (init)
		memcpy(x, init, (size_t)nv * sizeof(float));
	else
		fx_sampler_noise(x, c, h, w, seed);
}

void fx_sampler_euler(float *x, const float *v, float dt, int64_t n)
{
	for (int64_t j = 0; j < n; j++)
		x[j] = x[j] + dt * v[j];
}
