/* The audit of a packed checkpoint against the model it was made from:
 * numerics (does it reproduce the source layers?). Provenance is in
 * fx-audit-prov.h. */
#ifndef FX_AUDIT_MODEL_H
#define FX_AUDIT_MODEL_H

#include "fx-audit.h"
#include "fx-st.h"

/* Relative Frobenius error of W_eff against the source weight above which a
 * packed layer is reported broken: 4-bit quantization of an outlier-heavy
 * layer stays well below it; a wrong layout, fusion order or smoothing
 * gives about 1 or more. */
#define FX_AUDIT_MAX_WEIGHT_ERR 0.5

/* A W4A4 module's weight error may be this many times that of the same
 * module re-quantized (round-to-nearest) from its own smoothing and branch:
 * fx-quant packs exactly that without --search, and the search changes it
 * little; half-swapped scales or smoothing pass the absolute bound above
 * but land at 3x or more. */
#define FX_AUDIT_MAX_REQUANT_RATIO 1.6
/* A GPTQ checkpoint's module whose weight error is over the limit passes
 * when its output SNR on the calibration rows is at least this (dB); a
 * wrong layout or fusion order gives about 0 dB. */
#define FX_AUDIT_MIN_GPTQ_SNR 10.0

/* With --model (and --calib for output SNR): every module of a packed file
 * unpacked and compared with the source layer, worst first. */
int fx_audit_numerics(struct fx_audit *a, const struct fx_st *st, const struct fx_audit_opts *o,
		      struct fx_err *err);

#endif
