/* The group executor of the diffusion-transformer forwards (FLUX.1,
 * Qwen-Image): the linears of a struct fx_model on the CPU in f32. Fused
 * groups go through the hooks (capture, then linear) or the dense path;
 * plain linears ("<base>.weight"/"<base>.bias") are widened from their
 * stored dtype into one reusable weight and bias buffer, grown on demand,
 * so memory is about the largest linear. Also the model checks the
 * forwards share. A struct fx_dit_linear is not thread-safe. */
#ifndef FX_DIT_LINEAR_H
#define FX_DIT_LINEAR_H

#include <stddef.h>

#include "fx-err.h"
#include "fx-model.h"

struct fx_run_hooks;

/* Overrides for the fused-group linears. Any callback may be NULL. */
struct fx_dit_hooks {
	void *ctx;
	/* y (m, g->n) = x (m, g->k) · Wᵀ + b of fused group g, members
	 * concatenated along the output. NULL: fx_dit_linear_dense. */
	int (*linear)(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		      float *y, struct fx_err *err);
	/* The input of a fused group just before its linear; x is valid
	 * during the call only. */
	int (*capture)(void *ctx, const struct fx_group *g, const float *x, int64_t m,
		       struct fx_err *err);
};

struct fx_dit_linear {
	const struct fx_model *m;      /* borrowed */
	struct fx_dit_hooks hooks;
	/* widened weight (fx_ops_alloc) and bias, grown on demand */
	float *w, *b;
	size_t wcap, bcap;
};

void fx_dit_linear_init(struct fx_dit_linear *l, const struct fx_model *m);
void fx_dit_linear_release(struct fx_dit_linear *l);

/* Copies *h (NULL: none). */
void fx_dit_linear_set_hooks(struct fx_dit_linear *l, const struct fx_dit_hooks *h);
/* The linear and capture hooks of a runner's hooks (NULL: none). */
void fx_dit_linear_set_run_hooks(struct fx_dit_linear *l, const struct fx_run_hooks *h);

/* Grows l->w to at least nw floats and l->b to nb (contents undefined). */
int fx_dit_linear_reserve(struct fx_dit_linear *l, size_t nw, size_t nb, struct fx_err *err);

/* The dense f32 linear of fused group g: for one row (m = 1) of an
 * unmerged group whose members are all plain BF16 matrices, the BF16
 * weights are read in place (fx_ops_gemv_bf16), each once; otherwise the
 * group is widened into l->w (which then holds g->n · g->k floats). */
int fx_dit_linear_dense(struct fx_dit_linear *l, const struct fx_group *g, const float *x,
			int64_t m, float *y, struct fx_err *err);

/* Group g through the hooks: capture (if set), then the linear hook or
 * fx_dit_linear_dense. m <= 0: nothing. A hook's error without a message
 * gets "hook failed on '<group>'". */
int fx_dit_linear_group(struct fx_dit_linear *l, const struct fx_group *g, const float *x,
			int64_t m, float *y, struct fx_err *err);

/* Widens the plain linear "<base>.weight" (n, k) and "<base>.bias" (n),
 * which must exist (fx_dit_check_linear), into l->w and l->b;
 * n and k may be NULL. */
int fx_dit_linear_load_plain(struct fx_dit_linear *l, const char *base, int64_t *n, int64_t *k,
			     struct fx_err *err);

/* y (m, n) = x · Wᵀ + b of the plain linear "<base>.weight"/"<base>.bias",
 * which must exist (fx_dit_check_linear); W in l->w after. */
int fx_dit_linear_plain(struct fx_dit_linear *l, const char *base, const float *x, int64_t m,
			float *y, struct fx_err *err);

/* y = Linear2(SiLU(Linear1(u))) for one row: l1, l2 plain linear bases;
 * tmp holds Linear1's output (its n floats). */
int fx_dit_linear_embed_mlp(struct fx_dit_linear *l, const char *l1, const char *l2,
			    const float *u, float *tmp, float *y, struct fx_err *err);

/* Model checks: FX_E_FORMAT naming the tensor or group when m lacks it.
 * check_plain: tensor name of shape [n, k] (k = 0: [n]); check_linear:
 * "<base>.weight" [n, k] and "<base>.bias" [n]; check_group: fused group
 * name of n x k, into *g. */
int fx_dit_check_plain(const struct fx_model *m, const char *name, int64_t n, int64_t k,
		       struct fx_err *err);
int fx_dit_check_linear(const struct fx_model *m, const char *base, int64_t n, int64_t k,
			struct fx_err *err);
int fx_dit_check_group(const struct fx_model *m, const char *name, int64_t n, int64_t k,
		       const struct fx_group **g, struct fx_err *err);

#endif
