/* OpenBLAS work buffers under an address-space limit (fx-room.h). */
#include "fx-room.h"

#include <dlfcn.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <unistd.h>

#include "fx-log.h"

void openblas_set_num_threads(int n);

#define MIB ((size_t)1 << 20)
/* OpenBLAS's BUFFER_SIZE on x86-64 (128 MiB) with its guard pages, a glibc
 * malloc arena (64 MiB reserved) and a thread stack */
#define PER_THREAD (208 * MIB)
/* the stage's own buffers beyond the model's mapping */
#define SLACK (128 * MIB)

/* Address space the limit still allows: the limit less what is mapped. */
static size_t room_left(size_t limit)
{
	unsigned long pages = 0;
	FILE *f = fopen("/proc/self/statm", "r");
	size_t used;

	if (!f)
		return limit;
	if (fscanf(f, "%lu", &pages) != 1)
		pages = 0;
	fclose(f);
	used = (size_t)pages * (size_t)sysconf(_SC_PAGESIZE);
	return used < limit ? limit - used : 0;
}

/* The buffers OpenBLAS keeps in its table once allocated and freed. */
static void preallocate(int n)
{
	void *(*alloc)(int) = (void *(*)(int))dlsym(RTLD_DEFAULT, "blas_memory_alloc");
	void (*release)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "blas_memory_free");
	void *held[256];
	int i, k = 0;

	if (!alloc || !release)
		return;
	for (i = 0; i < n && i < 256; i++)
		if ((held[k] = alloc(0)))
			k++;
	for (i = 0; i < k; i++)
		release(held[i]);
}

int fx_room_blas(struct fx_err *err)
{
	struct rlimit rl;
	int want = omp_get_max_threads(), t;
	size_t left;

	if (getrlimit(RLIMIT_AS, &rl) != 0 || rl.rlim_cur == RLIM_INFINITY)
		return 0;
	left = room_left((size_t)rl.rlim_cur);
	t = left > SLACK ? (int)((left - SLACK) / PER_THREAD) : 0;
	if (t > want)
		t = want;
	if (t < 1)
		return fx_error(err, FX_E_NOMEM,
				"the address-space limit (ulimit -v %llu KiB) leaves %zu MiB, too little "
				"for one thread's BLAS buffer with its stack and heap (%zu MiB) and %zu MiB "
				"of work space besides the model: raise it by at least %zu MiB",
				(unsigned long long)(rl.rlim_cur / 1024), left / MIB, PER_THREAD / MIB,
				SLACK / MIB, (PER_THREAD + SLACK - left) / MIB + 1);
	if (t < want) {
		fx_log_warn("the address-space limit (ulimit -v %llu KiB) leaves room for the BLAS "
			    "buffers of %d thread%s, not %d: running with %d (raise it by %zu MiB for %d)",
			    (unsigned long long)(rl.rlim_cur / 1024), t, t == 1 ? "" : "s", want, t,
			    ((size_t)want * PER_THREAD + SLACK - left) / MIB + 1, want);
		omp_set_num_threads(t);
		openblas_set_num_threads(t);
	}
	/* one per OpenMP thread calling BLAS (OpenBLAS's own threads took
	 * theirs when they started); within the room just checked */
	preallocate(t);
	return 0;
}
