/* Linked when CUDA=0: the CUDA backend reports itself unavailable. */
#include "fx-device.h"

bool fx_cuda_built(void) { return false; }
int fx_cuda_device_count(void) { return 0; }

int fx_cuda_describe(int index, char *buf, size_t cap)
{
	(void)index;
	if (cap)
		buf[0] = '\0';
	return FX_E_UNSUPPORTED;
}

int fx_cuda_sgemm_nt(int index, const float *a, const float *b, float *c,
		     int64_t m, int64_t n, int64_t k, struct fx_err *err)
{
	(void)index; (void)a; (void)b; (void)c; (void)m; (void)n; (void)k;
	return fx_error(err, FX_E_UNSUPPORTED, "built without CUDA (make CUDA=1)");
}

/* kernels/fx-ops-cuda.h: the forward's ops on a GPU. */
#include "fx-ops-cuda.h"

static int no_cuda(struct fx_err *err)
{
	return fx_error(err, FX_E_UNSUPPORTED, "built without CUDA (make CUDA=1)");
}

int fx_cuda_ctx_new(struct fx_cuda_ctx **out, int device, struct fx_err *err)
{
	(void)device;
	*out = NULL;
	return no_cuda(err);
}

void fx_cuda_ctx_free(struct fx_cuda_ctx *cx) { (void)cx; }
int fx_cuda_ctx_device(const struct fx_cuda_ctx *cx) { (void)cx; return -1; }

int fx_cuda_buf_reserve(struct fx_cuda_ctx *cx, struct fx_dev_buf *b, size_t nbytes,
			struct fx_err *err)
{
	(void)cx; (void)b; (void)nbytes;
	return no_cuda(err);
}

void fx_cuda_buf_release(struct fx_dev_buf *b)
{
	if (b) {
		b->data_dev = NULL;
		b->nbytes = 0;
	}
}

int fx_cuda_upload(struct fx_cuda_ctx *cx, void *dst_dev, const void *src, size_t nbytes,
		   struct fx_err *err)
{
	(void)cx; (void)dst_dev; (void)src; (void)nbytes;
	return no_cuda(err);
}

int fx_cuda_download(struct fx_cuda_ctx *cx, void *dst, const void *src_dev, size_t nbytes,
		     struct fx_err *err)
{
	(void)cx; (void)dst; (void)src_dev; (void)nbytes;
	return no_cuda(err);
}

int fx_cuda_sync(struct fx_cuda_ctx *cx, struct fx_err *err)
{
	(void)cx;
	return no_cuda(err);
}

int fx_ops_linear_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev,
		       const float *w_dev, const float *b_dev, int64_t m, int64_t n, int64_t k,
		       struct fx_err *err)
{
	(void)cx; (void)y_dev; (void)x_dev; (void)w_dev; (void)b_dev; (void)m; (void)n; (void)k;
	return no_cuda(err);
}

int fx_ops_linear_bf16_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev,
			    const void *w_dev, const float *b_dev, int64_t m, int64_t n, int64_t k,
			    struct fx_err *err)
{
	(void)cx; (void)y_dev; (void)x_dev; (void)w_dev; (void)b_dev; (void)m; (void)n; (void)k;
	return no_cuda(err);
}

int fx_ops_layernorm_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev, int64_t m,
			  int64_t d, float eps, struct fx_err *err)
{
	(void)cx; (void)y_dev; (void)x_dev; (void)m; (void)d; (void)eps;
	return no_cuda(err);
}

int fx_ops_layernorm_mod_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev, int64_t m,
			      int64_t d, const float *shift_dev, const float *scale_dev, float eps,
			      struct fx_err *err)
{
	(void)cx; (void)y_dev; (void)x_dev; (void)m; (void)d; (void)shift_dev; (void)scale_dev;
	(void)eps;
	return no_cuda(err);
}

int fx_ops_rmsnorm_heads_cuda(struct fx_cuda_ctx *cx, float *x_dev, int64_t ld, int64_t m,
			      int heads, int hd, const float *g_dev, float eps, struct fx_err *err)
{
	(void)cx; (void)x_dev; (void)ld; (void)m; (void)heads; (void)hd; (void)g_dev; (void)eps;
	return no_cuda(err);
}

int fx_ops_rope_table_cuda(struct fx_cuda_ctx *cx, float *cs_dev, float *sn_dev,
			   const float *ids_dev, int64_t n, const int axes[3], double theta,
			   struct fx_err *err)
{
	(void)cx; (void)cs_dev; (void)sn_dev; (void)ids_dev; (void)n; (void)axes; (void)theta;
	return no_cuda(err);
}

int fx_ops_rope_apply_cuda(struct fx_cuda_ctx *cx, float *x_dev, int64_t ld, int64_t n, int heads,
			   int hd, const float *cs_dev, const float *sn_dev, struct fx_err *err)
{
	(void)cx; (void)x_dev; (void)ld; (void)n; (void)heads; (void)hd; (void)cs_dev; (void)sn_dev;
	return no_cuda(err);
}

int fx_ops_attention_cuda(struct fx_cuda_ctx *cx, float *o_dev, int64_t ldo, const float *q_dev,
			  const float *k_dev, const float *v_dev, int64_t ld, int64_t n, int heads,
			  int hd, struct fx_err *err)
{
	(void)cx; (void)o_dev; (void)ldo; (void)q_dev; (void)k_dev; (void)v_dev; (void)ld; (void)n;
	(void)heads; (void)hd;
	return no_cuda(err);
}

int fx_ops_gelu_tanh_cuda(struct fx_cuda_ctx *cx, float *x_dev, size_t n, struct fx_err *err)
{
	(void)cx; (void)x_dev; (void)n;
	return no_cuda(err);
}

int fx_ops_silu_cuda(struct fx_cuda_ctx *cx, float *y_dev, const float *x_dev, size_t n,
		     struct fx_err *err)
{
	(void)cx; (void)y_dev; (void)x_dev; (void)n;
	return no_cuda(err);
}

int fx_ops_timestep_embed_cuda(struct fx_cuda_ctx *cx, float *out_dev, float t, int dim,
			       struct fx_err *err)
{
	(void)cx; (void)out_dev; (void)t; (void)dim;
	return no_cuda(err);
}

int fx_ops_gated_add_cuda(struct fx_cuda_ctx *cx, float *x_dev, const float *y_dev,
			  const float *gate_dev, int64_t m, int64_t d, struct fx_err *err)
{
	(void)cx; (void)x_dev; (void)y_dev; (void)gate_dev; (void)m; (void)d;
	return no_cuda(err);
}

int fx_ops_add_cuda(struct fx_cuda_ctx *cx, float *a_dev, const float *b_dev, size_t n,
		    struct fx_err *err)
{
	(void)cx; (void)a_dev; (void)b_dev; (void)n;
	return no_cuda(err);
}
