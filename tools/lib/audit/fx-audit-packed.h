/* Audit of a Nunchaku checkpoint (fx.packed or written by another tool):
 * completeness per block and module, dtypes, shapes, values, metadata. */
#ifndef FX_AUDIT_PACKED_H
#define FX_AUDIT_PACKED_H

#include "fx-audit.h"
#include "fx-st.h"

/* True when the file looks like a Nunchaku checkpoint (block qweights). */
bool fx_audit_is_packed(const struct fx_st *st);
void fx_audit_packed(struct fx_audit *a, const struct fx_st *st);
/* The legacy two-file folder (spec §1.1): block tensors in blocks, the
 * unquantized layers in plain, loader config in config.json beside them. */
void fx_audit_packed_two(struct fx_audit *a, const struct fx_st *blocks, const struct fx_st *plain,
			 const char *dir);

#endif
