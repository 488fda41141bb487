/* Audit of a Nunchaku checkpoint (fx.packed or written by another tool) of
 * any family: completeness per block and module, dtypes, shapes, values,
 * metadata. */
#ifndef FX_AUDIT_PACKED_H
#define FX_AUDIT_PACKED_H

#include "fx-audit.h"
#include "fx-st.h"

struct fx_model;

/* True when the file looks like a Nunchaku checkpoint (block qweights under
 * a block prefix of some family). */
bool fx_audit_is_packed(const struct fx_st *st);
/* The file's family (fx.model, else its names; fx-meta.h) decides what it
 * should hold: with m (--model) of that family, m's groups and unquantized
 * tensors under the family's names; else the family's tables, sized by the
 * file (D from its input embedder; F and the block counts from fx.model,
 * else 4D and the highest block index). Every module complete (W4A4:
 * qweight, wscales, bias, smoothing, low-rank down and up, NVFP4's tensor
 * scales where the family needs them; W4A16: qweight, wscales, wzeros,
 * bias), dtypes, shapes, one rank, values; norms; layers left in BF16;
 * another family's names; for a family whose loader is strict, every key
 * it would refuse (INT4 wtscale/wcscales too). Then fx_meta_audit. */
void fx_audit_packed(struct fx_audit *a, const struct fx_st *st, const struct fx_model *m);
/* The legacy two-file folder (spec §1.1): block tensors in blocks, the
 * unquantized layers in plain, loader config in config.json beside them. */
void fx_audit_packed_two(struct fx_audit *a, const struct fx_st *blocks, const struct fx_st *plain,
			 const char *dir);

#endif
