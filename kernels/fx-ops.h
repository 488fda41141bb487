/* f32 CPU primitives of the FLUX transformer forward (OpenBLAS sgemm,
 * OpenMP). Plain row-major arrays; no file formats here. Strides (ld) are
 * in floats. Definitions: shared/spec/flux-transformer.md §3. */
#ifndef FX_OPS_H
#define FX_OPS_H

#include "fx-err.h"

#include <stdbool.h>

/* Large buffers (a layer's weights, activations): 2 MiB aligned and marked
 * for transparent huge pages, which saves page faults on first touch and TLB
 * misses in the products' packing (a few per cent). Release with free(). */
void *fx_ops_alloc(size_t n);

/* OpenBLAS single-threaded while the callers' OpenMP threads split the
 * work (fx_ops_linear and fx_ops_attention do this themselves); returns the
 * previous thread count for fx_ops_blas_restore (0: nothing was changed, as
 * inside a parallel region or with an OpenMP build of OpenBLAS). */
int fx_ops_blas_single(void);
void fx_ops_blas_restore(int prev);

/* Row-major C (M,N) = alpha·op(A)·op(B) + beta·C, cut into tiles from the
 * shape alone (about 768 a side), each a single-threaded sgemm, the tiles
 * shared by the OpenMP threads (inside a parallel region: taken in turn by
 * the calling thread). The bytes do not depend on the thread count. */
void fx_ops_gemm(bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
		 int64_t lda, const float *B, int64_t ldb, float beta, float *C, int64_t ldc);

/* y (m,n) = x (m,k) · wᵀ + b, w (n,k) row-major, b (n) or NULL. y must not
 * alias x. fx_ops_gemm's tiles; one row (m = 1): a dot product per output
 * in a fixed order. */
void fx_ops_linear(float *y, const float *x, const float *w, const float *b,
		   int64_t m, int64_t n, int64_t k);

/* y (n) = W x + b for one input row, W (n,k) BF16 with row stride ldw
 * elements, read in place (the adaLN modulations: a weight read once needs
 * no widened copy). Returns false, y unspecified, when W holds NaN/Inf. */
bool fx_ops_gemv_bf16(float *y, const float *x, const void *w, int64_t ldw, const float *b,
		      int64_t n, int64_t k);

/* Per row of d: y = (x − mean) / sqrt(var + eps), biased variance, no
 * affine. y may equal x. */
void fx_ops_layernorm(float *y, const float *x, int64_t m, int64_t d, float eps);

/* adaLN modulation: y = LN(x) · (1 + scale) + shift, scale/shift (d)
 * broadcast over the m rows. y may equal x. */
void fx_ops_layernorm_mod(float *y, const float *x, int64_t m, int64_t d,
			  const float *shift, const float *scale, float eps);

/* In place over m rows of stride ld: each head vector v = x[r·ld + h·hd ..]
 * (h < heads) becomes v / sqrt(mean(v²) + eps) · g, g (hd). */
void fx_ops_rmsnorm_heads(float *x, int64_t ld, int64_t m, int heads, int hd,
			  const float *g, float eps);

/* RoPE tables cs, sn (n, hd/2) for ids (n,3) with axes dims axes[0..2]
 * (even, summing to hd): pair k of axis a, index j, has angle
 * ids[a]·theta^(−2j/axes[a]), in f64, stored f32 (spec §3.4). */
void fx_ops_rope_table(float *cs, float *sn, const float *ids, int64_t n,
		       const int axes[3], double theta);

/* In place on n rows of stride ld, every head: the interleaved pair
 * (x[2k], x[2k+1]) is rotated by the angle of pair k. */
void fx_ops_rope_apply(float *x, int64_t ld, int64_t n, int heads, int hd,
		       const float *cs, const float *sn);

/* Scratch memory kept between calls (zero-initialize; fx_ops_ws_free). */
struct fx_ops_ws {
	float *buf;
	size_t cap;   /* floats */
};
void fx_ops_ws_free(struct fx_ops_ws *ws);

/* Joint attention without mask: per head h, O_h = softmax(Q_h K_hᵀ/√hd) V_h.
 * q, k, v: n rows of stride ld, head h at columns [h·hd, h·hd+hd); o: n rows
 * of stride ldo, same head layout. Blocked over queries (each block's scores
 * are one sgemm; never n×n for all heads at once), heads and blocks over the
 * threads. ws (or NULL: allocated per call) holds the score tiles.
 * FX_E_NOMEM possible. */
int fx_ops_attention(float *o, int64_t ldo, const float *q, const float *k,
		     const float *v, int64_t ld, int64_t n, int heads, int hd,
		     struct fx_ops_ws *ws, struct fx_err *err);

/* In place: x ← 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))). */
void fx_ops_gelu_tanh(float *x, size_t n);
/* y = x·σ(x); y may equal x. */
void fx_ops_silu(float *y, const float *x, size_t n);

/* Sinusoidal embedding of a scalar, width dim (even): f_i =
 * exp(−ln(10000)·i/(dim/2)), out = [cos(t·f_i) …, sin(t·f_i) …] (cosine half
 * first), computed in f32 as diffusers does. */
void fx_ops_timestep_embed(float *out, float t, int dim);

/* Gated residual: x[r,:] += gate ⊙ y[r,:] over m rows of d. */
void fx_ops_gated_add(float *x, const float *y, const float *gate, int64_t m, int64_t d);
/* Elementwise a += b over n values. */
void fx_ops_add(float *a, const float *b, size_t n);

/* SVDQuant residual: dst (rows,k) = w·diag(s) − up·down, w (rows,k), s (k)
 * or NULL (no scaling), up (rows,rank), down (rank,k), all row-major; dst
 * may equal w. packed: down as fx_ops_residual_pack wrote it, or NULL (then
 * copied in slices here, which a caller that cuts a layer into many small
 * calls pays again each call). Not BLAS: each element is one fixed sequence
 * of f32 operations (the rank products summed in order, then w·s minus the
 * sum), so the bytes do not depend on how the caller cuts rows, on packed,
 * on the threads or on the CPU. Threads over rows when called outside a
 * parallel region. */
void fx_ops_residual(float *dst, const float *w, const float *s, const float *up,
		     const float *down, const float *packed, int64_t rows, int64_t k, int64_t rank);
/* down (rank,k) as tiles of 16 columns, each (rank,16) contiguous, into dp
 * (rank·k floats; columns after the last whole tile are not copied). */
void fx_ops_residual_pack(float *dp, const float *down, int64_t rank, int64_t k);

#endif
