/* FLUX.1's text encoders in f32 on the CPU (OpenBLAS sgemm for every
 * matrix product, OpenMP for the rest), as transformers computes them:
 *
 *   T5 v1.1 encoder (text_encoder_2/, T5EncoderModel): token embeddings, no
 *   absolute positions; per layer RMSNorm -> self-attention without 1/sqrt(d)
 *   scaling plus the relative position bias (bidirectional buckets, computed
 *   by layer 0 and shared by all layers) -> residual, RMSNorm -> gated-GELU
 *   (tanh) or ReLU feed-forward -> residual; final RMSNorm. No attention
 *   mask: padding tokens take part, as in FluxPipeline.
 *
 *   CLIP text model (text_encoder/, CLIPTextModel): token + position
 *   embeddings, pre-LayerNorm layers with causal self-attention and a
 *   quick_gelu (or gelu) MLP, final LayerNorm; the pooled output is the
 *   final hidden state at the end-of-text token (eos_token_id 2 in the
 *   config: the position of the largest id, as transformers does; else the
 *   first position holding eos_token_id).
 *
 * Weights are read from a folder with config.json and safetensors (sharded
 * with an index or not), BF16, F16 or F32, and widened one layer at a time:
 * memory is one layer in f32 plus the activations of the sequences being
 * encoded. With a CUDA device (fx_t5_set_device, built with CUDA=1) the
 * layers run on the GPU (kernels/fx-textenc-cuda.h): the host widens layer
 * l+1 while the device computes layer l. */
#ifndef FX_TEXTENC_H
#define FX_TEXTENC_H

#include "fx-err.h"
#include "fx-device.h"

/* The format name of fx-encode's conditioning file. */
#define FX_FMT_COND "fx.cond"

/* Called after each layer: done of total layers. */
typedef void (*fx_textenc_progress_fn)(void *ctx, int done, int total);

enum fx_textenc_act { FX_ACT_RELU, FX_ACT_GELU_TANH, FX_ACT_GELU, FX_ACT_QUICK_GELU, FX_ACT_COUNT };

struct fx_t5_config {
	int vocab, d_model, d_kv, heads, d_ff, layers;
	int buckets, max_distance;
	float eps;
	bool gated;
	enum fx_textenc_act act;
};

struct fx_clip_config {
	int vocab, hidden, heads, ff, layers, max_pos, eos_token_id;
	float eps;
	enum fx_textenc_act act;
};

struct fx_t5;
struct fx_clip;

/* dir: the encoder folder (config.json + weights). */
int fx_t5_open(struct fx_t5 **out, const char *dir, struct fx_err *err);
void fx_t5_close(struct fx_t5 *m);
const struct fx_t5_config *fx_t5_config(const struct fx_t5 *m);

/* Encodes n sequences of len ids each (row-major (n,len)) into out
 * (n, len, d_model) f32: the final RMSNorm'ed hidden states. Ids must be
 * below the vocabulary size (FX_E_ARG otherwise). */
int fx_t5_encode(struct fx_t5 *m, const int32_t *ids, int n, int len, float *out,
		 fx_textenc_progress_fn progress, void *ctx, struct fx_err *err);

/* Where fx_t5_encode / fx_clip_encode compute: the CPU (the default, also
 * for dev NULL) or a CUDA device; FX_E_UNSUPPORTED for CUDA in a build
 * without it. */
int fx_t5_set_device(struct fx_t5 *m, const struct fx_device *dev, struct fx_err *err);
int fx_clip_set_device(struct fx_clip *m, const struct fx_device *dev, struct fx_err *err);

/* The relative position bucket of key position j seen from query i
 * (transformers' _relative_position_bucket, bidirectional), exposed for
 * tests. */
int fx_t5_bucket(int i, int j, int buckets, int max_distance);

int fx_clip_open(struct fx_clip **out, const char *dir, struct fx_err *err);
void fx_clip_close(struct fx_clip *m);
const struct fx_clip_config *fx_clip_config(const struct fx_clip *m);

/* Encodes n sequences of len (<= max_pos) ids: pooled (n, hidden) and, when
 * hidden_out is not NULL, every final-LayerNorm'ed hidden state
 * (n, len, hidden). */
int fx_clip_encode(struct fx_clip *m, const int32_t *ids, int n, int len, float *pooled,
		   float *hidden_out, fx_textenc_progress_fn progress, void *ctx, struct fx_err *err);

#endif
