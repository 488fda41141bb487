/* One module of a packed Nunchaku checkpoint, unpacked into the forms the
 * runtime reference takes (kernels/fx-runtime.h). Shared by fx-verify's
 * numerics and fx-eval. */
#ifndef FX_PACKED_MODULE_H
#define FX_PACKED_MODULE_H

#include "fx-runtime.h"
#include "fx-model.h"
#include "fx-st.h"

struct fx_packed_module {
	const struct fx_group *g;
	bool adaln;
	struct fx_rt_w4a4 mod;       /* W4A4 */
	uint16_t *scales16, *zeros16;  /* W4A16 (n, k/64) */
	float *bias;                 /* as stored, plain order */
	/* owned buffers */
	uint8_t *codes;
	void *wscales;
	float *smooth, *ld, *lu, *wc;
};

/* Returns 1 when a tensor of the module is missing (nothing loaded), 0 on
 * success, <0 on error. fp4: the checkpoint's precision. */
int fx_packed_module_load(struct fx_packed_module *pm, const struct fx_st *st,
			  const struct fx_group *g, bool fp4, struct fx_err *err);
void fx_packed_module_release(struct fx_packed_module *pm);
/* The module's output for rows x (m, g->k) in the model's own (diffusers)
 * semantics: W4A4 through the runtime reference; adaLN de-interleaved, with
 * the +1 of the scale chunks taken back off. y (m, g->n). */
int fx_packed_module_forward(const struct fx_packed_module *pm, const float *x, int64_t m,
			     float *y, struct fx_err *err);
/* True when the file holds an F8_E4M3 tensor (NVFP4). */
bool fx_packed_is_fp4(const struct fx_st *st);

#endif
