/* The fx-encode stage: a prompts file -> the conditioning file fx-calib
 * reads (fx.cond): prompt_embeds (P, L, d_t5) and pooled_prompt_embeds
 * (P, d_clip) in BF16, plus the token ids t5_input_ids (P, L) and
 * clip_input_ids (P, 77) in I32. Each prompt is a "layer" of the stage
 * cache: its recipe hashes the prompt text, the encoders, tokenizers and
 * parameters, so that adding prompts to the file encodes only the new ones
 * (the other rows are copied from the previous output). */
#ifndef FX_COND_H
#define FX_COND_H

#include "fx-err.h"

#define FX_COND_MAX_LEN_DEFAULT 512
#define FX_COND_BLOCKS_OF_DEFAULT 16
#define FX_COND_BLOCKS_OF_CUDA 64

struct fx_cond_opts {
	const char *t5;          /* text_encoder_2/ folder, or the FLUX folder holding it */
	const char *clip;        /* text_encoder/ folder, or the FLUX folder holding it */
	const char *t5_tok;      /* NULL, or the T5 tokenizer's folder (or its file) */
	const char *clip_tok;    /* NULL, or the folder of vocab.json + merges.txt */
	const char *prompts;     /* UTF-8, one prompt a line */
	const char *output;
	int max_len;             /* T5 tokens per prompt; 0: 512 */
	int blocks_of;           /* prompts encoded per pass over the layers; 0: 16 (CUDA: 64) */
	const char *device;      /* NULL/"cpu", "cuda", "cuda:N" (fx_device_select); not part
				  * of the recipe: the devices agree within f32 rounding */
	bool force;
};

/* Where the encoders and tokenizers of o->t5 / o->clip are: the folder
 * itself when it holds text_encoder_2/ (text_encoder/) then that, and the
 * tokenizer next to the weights (tokenizer.json or spiece.model; vocab.json
 * + merges.txt) or else in the sibling folder tokenizer_2/ (tokenizer/).
 * A non-NULL t5_tok (a folder, or the tokenizer.json / spiece.model file)
 * or clip_tok (a folder) is the only place looked at for that tokenizer.
 * Strings are malloc'ed. */
struct fx_cond_paths {
	char *t5_dir, *t5_tok, *clip_dir, *clip_tok;
};
int fx_cond_locate(struct fx_cond_paths *p, const char *t5, const char *clip, const char *t5_tok,
		   const char *clip_tok, struct fx_err *err);
void fx_cond_paths_release(struct fx_cond_paths *p);

/* Reads the prompts: one a line, CR LF or LF; empty lines and lines whose
 * first character is '#' are skipped, a line of only spaces or tabs is a
 * prompt (FluxPipeline encodes it as the empty prompt); invalid UTF-8 is an
 * error naming the line. *prompts is a malloc'ed array of malloc'ed
 * strings. */
int fx_cond_read_prompts(char ***prompts, int *n, const char *path, struct fx_err *err);
void fx_cond_prompts_free(char **prompts, int n);

struct fx_stage;

int fx_cond_run(const struct fx_cond_opts *o, bool *up_to_date, struct fx_stage **stage_out,
		struct fx_err *err);

#endif
