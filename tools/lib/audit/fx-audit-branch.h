/* Audit of an fx.branch file (fx-lowrank's output), any family: every W4A4
 * fused group of every block in its range present under its fused name,
 * shapes, values. */
#ifndef FX_AUDIT_BRANCH_H
#define FX_AUDIT_BRANCH_H

#include "fx-audit.h"
#include "fx-st.h"

/* One line per fused group ("[OK] qkv_proj (block 0): down=[32,3072]
 * up=[9216,32]", "[MISSING] ...", "[BAD] ..."), a summary line, and
 * findings for missing or misshapen tensors, NaN/Inf, smooth <= 0, an
 * all-zero branch, tensors outside the fused groups, and (warnings) groups
 * whose error is worse than plain RTN. The expected groups are the W4A4
 * modules of the file's family (fx.model's "family", absent: FLUX) sized by
 * fx.model's widths and block counts, in the "blocks" range of fx.params. */
void fx_audit_branch(struct fx_audit *a, const struct fx_st *st);

#endif
