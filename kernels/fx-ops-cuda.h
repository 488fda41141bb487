/* The f32 primitives of kernels/fx-ops.h on a GPU (kernels/cuda/ops.cu;
 * kernels/cuda-stub.c when built without CUDA: every entry point returns
 * FX_E_UNSUPPORTED). Same arguments and semantics as the CPU op of the same
 * name without the _cuda suffix, but every array argument named *_dev is a
 * device pointer, and each op takes a context and returns 0 or a negative
 * enum fx_status with the reason in *err ("cuda: <msg> in <stmt> at
 * file:line (device N)").
 *
 * Ops are queued on the context's stream and return without waiting;
 * fx_cuda_download and fx_cuda_sync wait, and report errors of earlier
 * kernels. GEMMs are cuBLAS sgemm in plain f32 (no TF32), so results match
 * the CPU ops within f32 rounding of another summation order, not bit for
 * bit (tests/gpu/test-gpu-ops.c checks NMSE budgets).
 *
 * A context is not thread-safe; use one per thread. */
#ifndef FX_OPS_CUDA_H
#define FX_OPS_CUDA_H

#include "fx-err.h"

#include <stddef.h>
#include <stdint.h>

struct fx_cuda_ctx;

/* Device memory: one allocation on one device. Zero-initialize; release
 * with fx_cuda_buf_release (a zeroed buffer releases as a no-op). */
struct fx_dev_buf {
	void *data_dev;
	size_t nbytes;
	int device;
};

/* Selects `device`, creates a stream and a cuBLAS handle on it. */
int fx_cuda_ctx_new(struct fx_cuda_ctx **out, int device, struct fx_err *err);
/* Waits for queued work, frees scratch memory; NULL is a no-op. */
void fx_cuda_ctx_free(struct fx_cuda_ctx *cx);
int fx_cuda_ctx_device(const struct fx_cuda_ctx *cx);

/* Makes b hold at least nbytes (contents are lost when it grows). */
int fx_cuda_buf_reserve(struct fx_cuda_ctx *cx, struct fx_dev_buf *b, size_t nbytes,
			struct fx_err *err);
void fx_cuda_buf_release(struct fx_dev_buf *b);

/* Host → device; the host buffer may be reused when this returns. */
int fx_cuda_upload(struct fx_cuda_ctx *cx, void *dst_dev, const void *src, size_t nbytes,
		   struct fx_err *err);
/* Device → host after all queued work; waits. */
int fx_cuda_download(struct fx_cuda_ctx *cx, void *dst, const void *src_dev, size_t nbytes,
		     struct fx_err *err);
/* Waits for queued work and reports its first error. */
int fx_cuda_sync(struct fx_cuda_ctx *cx, struct fx_err *err);

/* The ops (see kernels/fx-ops.h). */
int fx_ops_linear_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev,
		       const float *w_dev, const float *b_dev, int64_t m, int64_t n, int64_t k,
		       struct fx_err *err);
/* The same linear with a BF16 weight (n,k) (raw bits) and x rounded to BF16
 * (nearest even) on the way in: one cuBLAS BF16 GEMM, f32 accumulate and
 * output, as a BF16 pipeline computes it. */
int fx_ops_linear_bf16_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev,
			    const void *w_dev, const float *b_dev, int64_t m, int64_t n, int64_t k,
			    struct fx_err *err);
int fx_ops_layernorm_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev, int64_t m,
			  int64_t d, float eps, struct fx_err *err);
int fx_ops_layernorm_mod_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev, int64_t m,
			      int64_t d, const float *shift_dev, const float *scale_dev, float eps,
			      struct fx_err *err);
int fx_ops_rmsnorm_heads_cuda(struct fx_cuda_ctx *cx, float *x_dev, int64_t ld, int64_t m,
			      int heads, int hd, const float *g_dev, float eps, struct fx_err *err);
/* ids_dev (n,3) on the device; angles in f64 as on the CPU. */
int fx_ops_rope_table_cuda(struct fx_cuda_ctx *cx, float *cs_dev, float *sn_dev,
			   const float *ids_dev, int64_t n, const int axes[3], double theta,
			   struct fx_err *err);
int fx_ops_rope_apply_cuda(struct fx_cuda_ctx *cx, float *x_dev, int64_t ld, int64_t n, int heads,
			   int hd, const float *cs_dev, const float *sn_dev, struct fx_err *err);
/* Per query tile: scores of all heads by one strided-batched sgemm into
 * context scratch (at most FX_CUDA_ATTN_TILE_FLOATS floats), a row softmax
 * kernel, then the batched AV sgemm. */
#define FX_CUDA_ATTN_TILE_FLOATS (64u << 20)
int fx_ops_attention_cuda(struct fx_cuda_ctx *cx, float *o_dev, int64_t ldo, const float *q_dev,
			  const float *k_dev, const float *v_dev, int64_t ld, int64_t n, int heads,
			  int hd, struct fx_err *err);
int fx_ops_gelu_tanh_cuda(struct fx_cuda_ctx *cx, float *x_dev, size_t n, struct fx_err *err);
int fx_ops_silu_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev, size_t n,
		     struct fx_err *err);
int fx_ops_timestep_embed_cuda(struct fx_cuda_ctx *cx, float *out_dev, float t, int dim,
			       struct fx_err *err);
int fx_ops_gated_add_cuda(struct fx_cuda_ctx *cx, float *x_dev, const float *y_dev,
			  const float *gate_dev, int64_t m, int64_t d, struct fx_err *err);
int fx_ops_add_cuda(struct fx_cuda_ctx *cx, float *a_dev, const float *b_dev, size_t n,
		    struct fx_err *err);

#endif
