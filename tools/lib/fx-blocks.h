/* Block numbering shared by every stage's --blocks A-B: double blocks are
 * 0..num_double-1, single blocks follow as num_double..num_double+num_single-1. */
#ifndef FX_BLOCKS_H
#define FX_BLOCKS_H

#include "fx-model.h"

static inline int fx_global_block(const struct fx_model_config *c, bool single, int block)
{
	return single ? c->num_double + block : block;
}

static inline int fx_num_blocks(const struct fx_model_config *c)
{
	return c->num_double + c->num_single;
}

static inline bool fx_group_in_range(const struct fx_model_config *c, const struct fx_group *g,
				     int first, int last)
{
	int b = fx_global_block(c, g->single, g->block);

	return b >= first && b <= last;
}

/* Resolves --blocks (-1: all) against the model into [*first, *last] and a
 * canonical "A-B" label for fx.params; FX_E_ARG when outside the model. */
int fx_blocks_resolve(const struct fx_model_config *c, int first_in, int last_in,
		      int *first, int *last, char *label, size_t cap, struct fx_err *err);
/* The fx.model metadata value: {"num_double":..,"num_single":..,"hidden":..,
 * "mlp_hidden":..}, with "family":".." first for families other than FLUX;
 * malloc'ed. */
char *fx_model_brief_json(const struct fx_model_config *c);

#endif
