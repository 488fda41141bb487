/* A FLUX transformer behind one internal naming: diffusers tensor names for
 * raw tensors, Nunchaku fused-group names for quantization units. */
#ifndef FX_MODEL_H
#define FX_MODEL_H

#include "fx-err.h"
#include "fx-tensor.h"
#include "fx-st.h"

struct fx_family;

enum fx_layout { FX_LAYOUT_DIFFUSERS, FX_LAYOUT_BFL };

struct fx_model_config {
	int hidden;          /* D = heads * head_dim */
	int heads;
	int head_dim;
	int mlp_hidden;      /* 4 D */
	int num_double;
	int num_single;
	int in_channels;
	int out_channels;
	int joint_dim;       /* T5 width (4096) */
	int pooled_dim;      /* CLIP width (768) */
	bool guidance;       /* dev: true, schnell: false */
	int axes[3];         /* RoPE axes dims, sum = head_dim */
	const struct fx_family *family;   /* what the model is (fx-family.h) */
};

enum fx_group_kind {
	FX_GROUP_W4A4,       /* smoothed, low-rank, 4-bit weights and activations */
	FX_GROUP_ADALN       /* W4A16 modulation linear */
};

/* One source slice of a fused group: rows [row0,row0+nrows) and columns
 * [col0,col0+ncols) of a source weight; its rows land at group rows
 * [out_row0, out_row0+nrows). The bias is sliced with the same rows
 * [row0,row0+nrows); NULL means zero. weight/bias are the file's tensors
 * (BFL: the fused img_attn.qkv, linear1, linear2 ...); ncols == group k. */
struct fx_member {
	const char *name;            /* diffusers name of the source linear */
	const struct fx_tensor *weight;   /* borrowed from the model's files */
	const struct fx_tensor *bias;
	const struct fx_tensor *wscale;   /* FP8 per-tensor scale of weight, or NULL */
	int64_t row0, nrows, col0, ncols, out_row0;
};

#define FX_GROUP_MAX_MEMBERS 4

struct fx_group {
	char name[96];               /* "transformer_blocks.3.qkv_proj" */
	const char *fused;           /* "qkv_proj" */
	int block;                   /* index within its kind */
	bool single;                 /* single_transformer_blocks */
	enum fx_group_kind kind;
	int64_t n, k;                /* fused output and input features */
	int nmembers;
	struct fx_member members[FX_GROUP_MAX_MEMBERS];
	int adaln_chunks;            /* S for adaLN groups (6 or 3), else 0 */
	bool gelu_input;             /* *_fc2: input comes from GELU (INT4 shift) */
	const struct fx_family *family;   /* the model's (its runtime names) */
	char lora[65];               /* digest of the LoRA products merged into its
				      * members' weights or biases; "" when none
				      * (layer recipes hash it) */
};

struct fx_model;

/* The one reading of a model path, for the loader and for the identity
 * every stage records (fx_input_id): a pipeline folder (no config.json,
 * holds transformer/) -> its transformer/; a diffusers folder (config.json
 * + one file or shards + index); an index file; one shard of an indexed
 * set -> that set's index; a single file. *src: what fx_stset_open opens;
 * *cfg: the config.json that applies, or NULL. Both malloc'ed. */
int fx_model_resolve(const char *path, char **src, char **cfg, struct fx_err *err);

/* path: any form fx_model_resolve reads. Names: diffusers or BFL, with or
 * without a leading "model.diffusion_model." (a ComfyUI all-in-one file:
 * vae.*, text_encoders.*, first_stage_model.*, cond_stage_model.* ... are
 * ignored with a note). Dtypes BF16, F16, F32, F8_E4M3, F8_E5M2; a
 * "<base>.scale_weight" or "<base>.weight_scale" scalar beside an FP8
 * weight multiplies it on widening; FP8 activation scales are ignored. The
 * config comes from config.json when there is one, else from the shapes.
 * Every expected tensor is checked (present, dtype, shape); so is the
 * absence of unexpected ones under the transformer's names. FX_E_FORMAT
 * names the tensor, the file and both shapes. */
int fx_model_open(struct fx_model **out, const char *path, struct fx_err *err);

/* The same with LoRAs merged (fx-lora.h; l may be NULL or empty): every
 * value read through this model (the group and plain converters) is
 * W + Σ scale·(alpha/rank)·B·A in f32, in the order given, one LoRA after
 * the other, rows computed as they are read (nothing merged is kept); BF16
 * readers get that sum rounded once. A LoRA key that names no linear of
 * this model, or whose shapes do not fit it, is an FX_E_FORMAT error naming
 * the key, the file and the tensor. */
struct fx_loras;
struct fx_lora_file;
int fx_model_open_loras(struct fx_model **out, const char *path, const struct fx_loras *l,
			struct fx_err *err);
/* The LoRA files merged, in order (borrowed). */
size_t fx_model_nloras(const struct fx_model *m);
const struct fx_lora_file *fx_model_lora(const struct fx_model *m, size_t i);
/* True when a LoRA changes some value of g (its raw BF16 weights are then
 * not what the model holds). */
bool fx_model_group_merged(const struct fx_model *m, const struct fx_group *g);
/* True when a LoRA changes the tensor t (a source tensor of the model). */
bool fx_model_tensor_merged(const struct fx_model *m, const struct fx_tensor *t);

/* The per-tensor scale companion applied to t, or NULL. */
const struct fx_tensor *fx_model_scale_tensor(const struct fx_model *m, const struct fx_tensor *t);
void fx_model_close(struct fx_model *m);

const struct fx_model_config *fx_model_config(const struct fx_model *m);
enum fx_layout fx_model_layout(const struct fx_model *m);
const struct fx_stset *fx_model_files(const struct fx_model *m);
/* config.json text, or a diffusers-style config synthesised from the
 * inferred config when the model has none; never NULL; borrowed. */
const char *fx_model_config_json(const struct fx_model *m);
/* True when the config came from a config.json file. */
bool fx_model_config_from_file(const struct fx_model *m);
/* Diffusers-style config.json text for c (malloc'ed, caller frees):
 * _class_name FluxTransformer2DModel, patch_size 1, in_channels, ... */
int fx_model_config_to_json(const struct fx_model_config *c, char **out, struct fx_err *err);

/* Fused groups, double blocks first (block order, then the order of
 * design.md §2), then single blocks. Borrowed. */
size_t fx_model_ngroups(const struct fx_model *m);
const struct fx_group *fx_model_group(const struct fx_model *m, size_t i);
const struct fx_group *fx_model_find_group(const struct fx_model *m, const char *name);

/* Materialises a fused group in f32: w (n*k, row-major), b (n; zeros where a
 * member has no bias). Either may be NULL. Non-finite values are an error
 * naming the source tensor and index. */
/* Rows [r0, r0+nr) of g (members stacked as in fx_model_group_f32), or with
 * rows non-NULL the rows rows[0..nr), widened into dst (nr, k). NaN/Inf:
 * FX_E_VALUE naming the tensor and the element. */
int fx_model_group_rows_f32(const struct fx_model *m, const struct fx_group *g, int64_t r0,
			    int64_t nr, const int64_t *rows, float *dst, struct fx_err *err);
int fx_model_group_f32(const struct fx_model *m, const struct fx_group *g,
		       float *w, float *b, struct fx_err *err);
/* The same with w in BF16 (F32/F16 sources rounded to nearest even). */
int fx_model_group_bf16(const struct fx_model *m, const struct fx_group *g, uint16_t *w,
			float *b, struct fx_err *err);

/* Drops the mapped pages of a group's source tensors (or one tensor) once a
 * stage is done with them, so resident memory stays near one layer however
 * large the model; later reads fault the data back in. */
void fx_model_group_release(const struct fx_model *m, const struct fx_group *g);

/* Non-block-linear tensors under diffusers names ("x_embedder.weight",
 * "transformer_blocks.0.attn.norm_q.weight", "norm_out.linear.weight", ...):
 * top-level ones first (the order of flux-transformer.md §2.2), then each
 * block's norm scales. fx_model_plain gives the source view (its name is
 * the file's name; BFL norm_out data is in BFL order); the converters write
 * numel elements in diffusers order (BFL norm_out halves swapped back) and
 * report NaN/Inf as FX_E_VALUE naming the source tensor and index. */
size_t fx_model_nplain(const struct fx_model *m);
const char *fx_model_plain_name(const struct fx_model *m, size_t i);
const struct fx_tensor *fx_model_plain(const struct fx_model *m, const char *name);
int fx_model_plain_bf16(const struct fx_model *m, const char *name, uint16_t *dst,
			struct fx_err *err);
/* Same as f32. */
int fx_model_plain_f32(const struct fx_model *m, const char *name, float *dst,
		       struct fx_err *err);

/* Checks every value the model's tensors hold (scales applied) for NaN/Inf;
 * weights: the fused groups' weights too (every byte of the model; else
 * the biases, norms and unquantized tensors, a few MB). Pages are dropped
 * as it goes. Without bad: the first bad tensor is the FX_E_VALUE error
 * naming it and the element. With bad: each bad tensor's message goes to
 * bad(ctx, msg) and the count of bad tensors is returned. */
int fx_model_scan_values(const struct fx_model *m, bool weights,
			 void (*bad)(void *ctx, const char *msg), void *ctx, struct fx_err *err);

/* Name of a block prefix: "transformer_blocks.3" / "single_transformer_blocks.3". */
const char *fx_block_prefix(char *buf, size_t cap, bool single, int block);

#endif
