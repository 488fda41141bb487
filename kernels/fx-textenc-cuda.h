/* The text encoders' layers on a GPU (kernels/cuda/textenc.cu, built with
 * CUDA=1 only; formats/fx-textenc.c calls it under FX_CUDA). One generic
 * pre-norm transformer layer covers both encoders:
 *
 *   T5:   RMSNorm, attention without scaling plus a position bias, gated
 *         (or plain) feed-forward, no biases;
 *   CLIP: LayerNorm with bias, causal attention scaled by 1/sqrt(dk),
 *         linear biases, quick_gelu (or gelu) MLP.
 *
 * The residual stream of all n sequences stays on the device between
 * layers; each layer's f32 weights (widened on the host) are uploaded when
 * the layer runs, so device memory is one layer plus the activations. The
 * GEMMs are cuBLAS sgemm in plain f32 (no TF32): results match the CPU
 * within f32 rounding of another summation order. */
#ifndef FX_TEXTENC_CUDA_H
#define FX_TEXTENC_CUDA_H

#include "fx-err.h"

#include <stdbool.h>
#include <stdint.h>

enum fx_tenc_cuda_act {
	FX_TENC_RELU, FX_TENC_GELU_TANH, FX_TENC_GELU, FX_TENC_QUICK_GELU, FX_TENC_ACT_COUNT
};

struct fx_tenc_cuda_dims {
	int64_t n, L;            /* sequences, tokens each */
	int64_t D, heads, dk, F; /* width, heads x head width, feed-forward width */
	bool gated;              /* fc1 is [gate; up] (2F, D): act(gate) * up */
	bool causal;
	bool rms;                /* RMSNorm (no mean, no bias) instead of LayerNorm */
	enum fx_tenc_cuda_act act;
	float eps, scale;        /* norm epsilon, attention score scale */
};

/* One layer's f32 weights on the host, row-major (out, in); a NULL bias is
 * none. */
struct fx_tenc_cuda_layer {
	const float *qkv, *qkv_b;    /* (3 heads dk, D) */
	const float *o, *o_b;        /* (D, heads dk) */
	const float *ln1_w, *ln1_b;  /* before attention */
	const float *ln2_w, *ln2_b;  /* before the feed-forward */
	const float *fc1, *fc1_b;    /* (F or 2F, D) */
	const float *fc2, *fc2_b;    /* (D, F) */
};

struct fx_tenc_cuda;

/* Uploads the residual stream h (n L, D) and the position bias (heads, L, L)
 * added to every sequence's scores (NULL: none). */
int fx_tenc_cuda_new(struct fx_tenc_cuda **out, int device, const struct fx_tenc_cuda_dims *d,
		     const float *h, const float *pos_bias, struct fx_err *err);
/* Runs one layer on every sequence. */
int fx_tenc_cuda_layer(struct fx_tenc_cuda *g, const struct fx_tenc_cuda_layer *w, struct fx_err *err);
/* Applies a final norm to every row (ln_w NULL: none; ln_b NULL with
 * dims.rms) and downloads the residual stream into out (n L, D). */
int fx_tenc_cuda_finish(struct fx_tenc_cuda *g, const float *ln_w, const float *ln_b, float *out,
			struct fx_err *err);
/* NULL is a no-op. */
void fx_tenc_cuda_free(struct fx_tenc_cuda *g);

#endif
