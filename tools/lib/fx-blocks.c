#include "fx-blocks.h"

#include <stdio.h>
#include <stdlib.h>

int fx_blocks_resolve(const struct fx_model_config *c, int first_in, int last_in,
		      int *first, int *last, char *label, size_t cap, struct fx_err *err)
{
	*first = first_in < 0 ? 0 : first_in;
	*last = last_in < 0 ? fx_num_blocks(c) - 1 : last_in;
	if (*first > *last || *last >= fx_num_blocks(c))
		return fx_error(err, FX_E_ARG, "--blocks %d-%d outside the model's blocks 0-%d "
				"(%d double, then %d single)", *first, *last, fx_num_blocks(c) - 1,
				c->num_double, c->num_single);
	snprintf(label, cap, "%d-%d", *first, *last);
	return 0;
}

char *fx_model_brief_json(const struct fx_model_config *c)
{
	char *s = NULL;

	if (asprintf(&s, "{\"num_double\":%d,\"num_single\":%d,\"hidden\":%d,\"mlp_hidden\":%d}",
		     c->num_double, c->num_single, c->hidden, c->mlp_hidden) < 0)
		return NULL;
	return s;
}
