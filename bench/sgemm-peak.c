/* OpenBLAS sgemm peak for `make bench`: C = A·B with square N×N f32 matrices
 * (default 2048), repeated until at least SECONDS (default 3) have passed after
 * one warm-up call. Prints one line: "sgemm n=N reps=R best_gflops=G mean_gflops=M".
 * Built on the fly by bench/run.sh: cc -O2 sgemm-peak.c -lopenblas. */
#define _POSIX_C_SOURCE 200809L
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv)
{
	int n = argc > 1 ? atoi(argv[1]) : 2048;
	double seconds = argc > 2 ? atof(argv[2]) : 3.0;
	size_t nn;
	float *a, *b, *c;
	double flop, t0, t, best = 0, total = 0;
	int reps = 0;

	if (n < 64 || n > 16384 || !(seconds > 0)) {
		fprintf(stderr, "usage: sgemm-peak [N (64..16384)] [SECONDS]\n");
		return 2;
	}
	nn = (size_t)n * (size_t)n;
	a = malloc(nn * sizeof *a);
	b = malloc(nn * sizeof *b);
	c = malloc(nn * sizeof *c);
	if (!a || !b || !c) {
		fprintf(stderr, "sgemm-peak: out of memory\n");
		return 1;
	}
	for (size_t i = 0; i < nn; i++) {
		a[i] = (float)((int)(i * 7 % 13) - 6) / 8.0f;
		b[i] = (float)((int)(i * 5 % 11) - 5) / 8.0f;
		c[i] = 0;
	}
	flop = 2.0 * n * (double)n * n;
	cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b, n,
		    0.0f, c, n); /* warm-up: thread pool, page faults */
	t0 = now();
	do {
		double s = now();

		cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, n, n, n, 1.0f, a, n, b,
			    n, 0.0f, c, n);
		t = now() - s;
		total += t;
		if (flop / t > best)
			best = flop / t;
		reps++;
	} while (now() - t0 < seconds);
	printf("sgemm n=%d reps=%d best_gflops=%.1f mean_gflops=%.1f check=%g\n", n, reps,
	       best / 1e9, flop * reps / total / 1e9, (double)c[nn / 2 + 1]);
	free(a);
	free(b);
	free(c);
	return 0;
}
