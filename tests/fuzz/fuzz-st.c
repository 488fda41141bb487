/* libFuzzer target: the safetensors header parser. On success every tensor
 * and metadata entry is touched, and the header is rebuilt and re-parsed. */
#include <stdlib.h>
#include <string.h>

#include "fx-st.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
	if (!ok)
		abort();
}

/* Rebuilds the header with fx_st_header_build and parses the result again. */
static void reparse(const struct fx_st *st, const uint8_t *data, size_t size)
{
	size_t n = fx_st_meta_count(st), i, hl = (size_t)fx_st_header_len(st);
	const char **keys = calloc(n + 1, sizeof(*keys)), **vals = calloc(n + 1, sizeof(*vals));
	struct fx_st *st2 = NULL;
	char *hdr = NULL;
	uint8_t *buf;

	check(keys && vals);
	for (i = 0; i < n; i++)
		fx_st_meta_at(st, i, &keys[i], &vals[i]);
	if (fx_st_header_build(&hdr, hl, st, n, keys, vals, NULL) == 0) {
		check(strlen(hdr) == hl);
		buf = malloc(size);
		check(buf != NULL);
		memcpy(buf, data, 8);
		memcpy(buf + 8, hdr, hl);
		memcpy(buf + 8 + hl, data + 8 + hl, size - 8 - hl);
		check(fx_st_open_mem(&st2, buf, size, "rebuilt", NULL) == 0);
		check(fx_st_count(st2) == fx_st_count(st));
		check(fx_st_meta_count(st2) == n);
		for (i = 0; i < fx_st_count(st); i++) {
			const struct fx_tensor *a = fx_st_at(st, i), *b = fx_st_at(st2, i);

			check(!strcmp(a->name, b->name) && a->dtype == b->dtype && a->nbytes == b->nbytes);
			check((const uint8_t *)a->data - data == (const uint8_t *)b->data - buf);
		}
		fx_st_close(st2);
		free(buf);
	}
	free(hdr);
	free(keys);
	free(vals);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct fx_st *st = NULL;
	struct fx_err err;
	volatile unsigned acc = 0;
	float f[16];
	size_t i, j;

	if (fx_st_open_mem(&st, data, size, "fuzz.safetensors", &err) != 0) {
		check(st == NULL && err.code < 0 && err.msg[0]);
		return 0;
	}
	check(fx_st_header_len(st) + 8 <= size && fx_st_file_size(st) == size);
	for (i = 0; i < fx_st_count(st); i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		const uint8_t *p = t->data;
		uint64_t numel;

		check(fx_st_find(st, t->name) == t);
		check(fx_shape_numel(t->ndim, t->shape, &numel));
		check(numel * fx_dtype_size(t->dtype) == t->nbytes);
		check(p >= data + 8 + fx_st_header_len(st) && p + t->nbytes <= data + size);
		for (j = 0; j < t->nbytes; j++)
			acc += p[j];
		numel = numel < 16 ? numel : 16;
		fx_to_f32(f, t->data, t->dtype, (size_t)numel);
	}
	for (i = 0; i < fx_st_meta_count(st); i++) {
		const char *k, *v;

		fx_st_meta_at(st, i, &k, &v);
		check(k && v && fx_st_meta(st, k) == v);
		acc += (unsigned)strlen(v);
	}
	reparse(st, data, size);
	fx_st_close(st);
	(void)acc;
	return 0;
}
