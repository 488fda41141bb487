/* Address-space room for the BLAS work buffers under an rlimit. */
#ifndef FX_ROOM_H
#define FX_ROOM_H

#include "fx-err.h"

/* Under a finite RLIMIT_AS (ulimit -v, a scheduler's h_vmem), OpenBLAS
 * retries a failed work-buffer allocation forever. This checks that the
 * threads about to run fit (per thread: a BLAS buffer, a malloc arena and a
 * stack), lowers the thread count with a warning when fewer fit, and makes
 * OpenBLAS allocate the buffers now, so later calls reuse them instead of
 * spinning. No limit: nothing to do. FX_E_NOMEM when not even one thread
 * fits, naming the limit and what to raise it to. */
int fx_room_blas(struct fx_err *err);

#endif
