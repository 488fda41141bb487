/* The one list of model families. */
#include "fx-families.h"

#include <string.h>

#include "fx-flux-family.h"
#include "fx-model.h"
#include "fx-qwen-family.h"

/* Qwen-Image first: its img_in would otherwise read as BFL FLUX. FLUX last,
 * so its messages are the ones a model of no known family gets. */
const struct fx_family *const fx_families[] = { &fx_family_qwenimage, &fx_family_flux, NULL };

const struct fx_family *fx_family_find(const char *name)
{
	size_t i;

	for (i = 0; fx_families[i]; i++)
		if (!strcmp(fx_families[i]->name, name))
			return fx_families[i];
	return NULL;
}

const char *fx_family_names(void)
{
	return "flux, qwenimage";
}

int fx_model_open(struct fx_model **out, const char *path, struct fx_err *err)
{
	return fx_model_open_families(out, path, fx_families, err);
}

int fx_model_open_loras(struct fx_model **out, const char *path, const struct fx_loras *l,
			struct fx_err *err)
{
	return fx_model_open_loras_families(out, path, l, fx_families, err);
}
