/* LoRAs merged into a FLUX model as it is read (fx(7), LORA): the files a
 * user gives with --lora FILE[:SCALE], their keys read in every common
 * naming and turned into products on the model's diffusers-named linears,
 * and the model identity that includes them. */
#ifndef FX_LORA_H
#define FX_LORA_H

#include "fx-err.h"
#include "fx-tensor.h"

#define FX_LORA_MAX 16

struct fx_lora_spec {
	char path[4096];
	double scale;          /* 1 when not given */
};

/* The --lora options of a tool, in the order given. */
struct fx_loras {
	struct fx_lora_spec v[FX_LORA_MAX];
	int n;
	bool ignore_unknown;   /* text-encoder keys: a note instead of an error */
};

/* Parses "FILE[:SCALE]" (SCALE a finite real; a ':' not followed by one
 * belongs to the file name) and appends it; FX_E_ARG naming the argument. */
int fx_loras_add(struct fx_loras *l, const char *arg, struct fx_err *err);

/* One product B·A on (some rows of) a diffusers-named linear of the model:
 * module rows [mrow0, mrow0+nrows) get factor · up[up_row0+i,:] · down;
 * mrows is the module's output width the file implies (checked).
 * up is (N, r), down (r, K); bias (N) when the file carries a bias delta
 * (rows as up). A LoRA on a BFL fused tensor (qkv, linear1) becomes one
 * entry per member, all sharing down. */
struct fx_lora_entry {
	char module[128];      /* "transformer_blocks.0.attn.to_q" */
	char key[192];         /* the file's key it came from (its base) */
	const struct fx_tensor *up, *down, *bias;   /* borrowed from the file */
	int64_t mrows, mrow0, nrows, up_row0;
	double factor;         /* scale · alpha / rank */
	char digest[65];       /* of its tensors' bytes, rows and factor */
};

struct fx_lora_file;

/* Opens and reads a LoRA file against a model of hidden size D and MLP
 * width F: diffusers/PEFT (lora_A/lora_B, optional .alpha, "transformer."
 * prefix or none; without .alpha the lora_alpha, alpha_pattern and
 * use_rslora of a "lora_adapter_metadata" entry, else the rank), kohya ("lora_unet_double_blocks_0_img_attn_qkv
 * .lora_down.weight", .lora_up.weight, .alpha), BFL and XLabs names
 * ("double_blocks.0.processor.qkv_lora1.down.weight"), ComfyUI's
 * "diffusion_model." prefix; F32, BF16, F16, F8 tensors. Text-encoder keys
 * are an error naming the key unless ignore_unknown (then a note); so is
 * any key that is no LoRA tensor of a FLUX transformer, a shape that does
 * not fit (rank, D, F), and a NaN/Inf value. The module names are checked
 * against the model by the caller (fx_model_open_loras). */
int fx_lora_file_open(struct fx_lora_file **out, const char *path, double scale,
		      bool ignore_unknown, int64_t hidden, int64_t mlp_hidden, struct fx_err *err);
void fx_lora_file_close(struct fx_lora_file *f);
size_t fx_lora_file_count(const struct fx_lora_file *f);
const struct fx_lora_entry *fx_lora_file_entry(const struct fx_lora_file *f, size_t i);
const char *fx_lora_file_path(const struct fx_lora_file *f);
/* "diffusers", "kohya", "xlabs" or "bfl": the naming its keys use. */
const char *fx_lora_file_kind(const struct fx_lora_file *f);

/* Identity of the model the stages see: fx_input_id(path) without LoRAs;
 * with them SHA-256 over that id and each LoRA's content hash and scale,
 * in the order given (the order of the merge). */
int fx_lora_model_id(char out[65], const char *path, const struct fx_loras *l,
		     struct fx_err *err);
/* What fx.loras records: a JSON array [{"file": base name, "sha256": ...,
 * "scale": ...}] (malloc'ed into *out), or NULL when l has none. */
int fx_lora_describe(char **out, const struct fx_loras *l, struct fx_err *err);

struct fx_stage;
/* For a stage: the model identity (role "model", into id) and, with
 * LoRAs, the fx.loras entry of its output. */
int fx_lora_stage_model(struct fx_stage *s, const char *path, const struct fx_loras *l,
			char id[65], struct fx_err *err);

#endif
