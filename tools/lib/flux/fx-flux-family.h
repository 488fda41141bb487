/* The FLUX.1 family (fx-family.h): FLUX.1-dev, -schnell and fine-tunes. */
#ifndef FX_FLUX_FAMILY_H
#define FX_FLUX_FAMILY_H

#include "fx-family.h"

extern const struct fx_family fx_family_flux;
/* Its runner (fx-flux-run.c). */
extern const struct fx_runner_ops fx_flux_runner;

#endif
