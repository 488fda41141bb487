/* The registry of model families: every family fx knows, in detection
 * order, and the model opening that uses them (fx-model.h's fx_model_open
 * and fx_model_open_loras are defined here). */
#ifndef FX_FAMILIES_H
#define FX_FAMILIES_H

#include "fx-family.h"

/* NULL-terminated, detection order. */
extern const struct fx_family *const fx_families[];

/* The family named name ("flux", "qwenimage"), or NULL. */
const struct fx_family *fx_family_find(const char *name);
/* "flux, qwenimage" for usage messages. */
const char *fx_family_names(void);

#endif
