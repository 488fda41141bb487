/* Provenance: the audited file's own fx.inputs against the inputs given,
 * the chain of the given inputs, and the groups an intermediate must hold
 * for the model given with --model. */
#ifndef FX_AUDIT_PROV_H
#define FX_AUDIT_PROV_H

#include "fx-audit.h"
#include "fx-st.h"

/* Group findings listed one by one before a summary finding. */
#define FX_AUDIT_PROV_MAX_LISTED 16

/* With --model/--calib/--branch: their identities against the audited
 * file's fx.inputs; a mismatch names the stage to rerun. <0 when an input
 * cannot be read. */
int fx_audit_provenance(struct fx_audit *a, const struct fx_st *st, const struct fx_audit_opts *o,
			struct fx_err *err);

/* With the inputs given:
 * - chain: a --branch file's own fx.inputs against --model and --calib, a
 *   --calib file's against --model; a mismatch is a "stale" finding naming
 *   the input and the stage to rerun ("rerun fx-lowrank, then the stages
 *   after it");
 * - groups, for an fx.calib, fx.quant or fx.branch file with --model: every
 *   fused group of the model in the block range of fx.params "blocks"
 *   (fx.branch: the W4A4 ones) has each tensor its stage writes, with the
 *   dtype and shape the model gives; findings "missing", "shape" and
 *   "unexpected" name the group and the stage to rerun, and one line sums
 *   up ("[OK] groups: 30 of 30 fused groups of blocks 0-3 present for ...").
 * <0 only when an input cannot be read (the model, a --branch or --calib
 * file). */
int fx_audit_prov(struct fx_audit *a, const struct fx_st *st, const struct fx_audit_opts *o,
		  struct fx_err *err);

#endif
