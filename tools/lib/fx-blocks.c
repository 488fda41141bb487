#include "fx-blocks.h"

#include <string.h>

#include "fx-family.h"

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

	/* FLUX, the first family, is the default: its files name none */
	bool flux = !c->family || !strcmp(c->family->name, "flux");

	if (asprintf(&s, "{%s%s%s\"num_double\":%d,\"num_single\":%d,\"hidden\":%d,\"mlp_hidden\":%d}",
		     flux ? "" : "\"family\":\"", flux ? "" : c->family->name, flux ? "" : "\",",
		     c->num_double, c->num_single, c->hidden, c->mlp_hidden) < 0)
		return NULL;
	return s;
}
