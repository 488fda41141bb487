/* safetensors reader/writer/sets: round trips, hostile headers, shards, golden files. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <glob.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "fx-st.h"

static char tmpdir[256];

static char *tpath(const char *name)
{
	static char buf[4][512];
	static int k;

	k = (k + 1) % 4;
	snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
	return buf[k];
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb; (void)flag; (void)ftw;
	return remove(p);
}

static int setup(void **state)
{
	(void)state;
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/fx-test-st.XXXXXX");
	return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state)
{
	(void)state;
	return nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
}

static uint8_t *read_all(const char *path, size_t *len)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long n;

	assert_non_null(f);
	fseek(f, 0, SEEK_END);
	n = ftell(f);
	fseek(f, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	fclose(f);
	*len = (size_t)n;
	return buf;
}

static void write_bytes(const char *path, const void *buf, size_t len)
{
	FILE *f = fopen(path, "wb");

	assert_non_null(f);
	assert_int_equal(fwrite(buf, 1, len, f), len);
	fclose(f);
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (uint8_t)(i * 31u + seed * 7u + (i >> 8));
}

/* ---- a writer spec ------------------------------------------------------ */

struct spec {
	const char *name;
	enum fx_dtype dt;
	int ndim;
	int64_t shape[FX_MAX_DIMS];
};

static const struct spec all_dtypes[] = {
	{ "t.bf16", FX_BF16, 2, { 3, 5 } },
	{ "t.f16", FX_F16, 1, { 7 } },
	{ "t.f32", FX_F32, 3, { 2, 3, 4 } },
	{ "t.f64", FX_F64, 1, { 5 } },
	{ "t.e4m3", FX_F8_E4M3, 1, { 9 } },
	{ "t.i8", FX_I8, 2, { 4, 4 } },
	{ "t.u8", FX_U8, 1, { 13 } },
	{ "t.i16", FX_I16, 1, { 3 } },
	{ "t.u16.empty", FX_U16, 2, { 0, 3 } },
	{ "t.i32.scalar", FX_I32, 0, { 0 } },
	{ "t.i64", FX_I64, 8, { 2, 1, 1, 1, 1, 1, 1, 2 } },
};

static size_t spec_bytes(const struct spec *s)
{
	uint64_t n;

	assert_true(fx_shape_numel(s->ndim, s->shape, &n));
	return (size_t)n * fx_dtype_size(s->dt);
}

/* Writes the tensors (declared in order `perm`, written back to front in 3-byte chunks). */
static void write_spec(const char *path, const struct spec *sp, size_t n, bool reverse_add,
		       size_t spare)
{
	struct fx_err err = { 0 };
	struct fx_stw *w = NULL;
	size_t i, j;
	int fd;

	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	for (i = 0; i < n; i++) {
		const struct spec *s = &sp[reverse_add ? n - 1 - i : i];
		assert_int_equal(fx_stw_add(w, s->name, s->dt, s->ndim, s->shape, &err), 0);
	}
	assert_int_equal(fx_stw_meta(w, "fx.format", "fx.test", &err), 0);
	assert_int_equal(fx_stw_meta(w, "note", "h\xc3\xa9llo \"quoted\" \\ /", &err), 0);
	fx_stw_reserve(w, spare + 64);   /* room for "late" */
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	for (i = n; i-- > 0; ) {
		size_t nb = spec_bytes(&sp[i]);
		uint8_t *buf = malloc(nb + 1);

		fill(buf, nb, (unsigned)i);
		for (j = 0; j < nb; j += 3) {
			size_t k = nb - j < 3 ? nb - j : 3;
			assert_int_equal(fx_stw_write(w, sp[i].name, buf + j, k, &err), 0);
		}
		free(buf);
	}
	/* metadata set after begin lands in the reserved space */
	assert_int_equal(fx_stw_meta(w, "late", "set after begin", &err), 0);
	if (fx_stw_finish(w, &err) != 0)
		fail_msg("finish: %s", err.msg);
	fx_stw_free(w);
	close(fd);
}

static void test_dtype_table(void **state)
{
	int64_t big[2] = { INT64_C(1) << 62, 8 }, neg[2] = { 3, -1 }, sh[3] = { 3072, 64, 0 };
	uint64_t n = 0;
	char buf[64];
	int i;

	(void)state;
	for (i = 0; i < FX_DTYPE_COUNT; i++) {
		assert_int_equal(fx_dtype_from_name(fx_dtype_name((enum fx_dtype)i)), i);
		assert_true(fx_dtype_size((enum fx_dtype)i) >= 1);
	}
	assert_int_equal(fx_dtype_from_name("F8_E4M3"), FX_F8_E4M3);
	assert_int_equal(fx_dtype_size(FX_BF16), 2);
	assert_int_equal(fx_dtype_size(FX_I64), 8);
	assert_int_equal(fx_dtype_from_name("BOOL"), -1);
	assert_int_equal(fx_dtype_from_name("bf16"), -1);
	assert_int_equal(fx_dtype_from_name(NULL), -1);
	assert_true(fx_shape_numel(2, sh, &n));
	assert_int_equal(n, 3072 * 64);
	assert_true(fx_shape_numel(0, NULL, &n));
	assert_int_equal(n, 1);
	assert_true(fx_shape_numel(3, sh, &n));
	assert_int_equal(n, 0);
	assert_false(fx_shape_numel(2, big, &n));
	assert_false(fx_shape_numel(2, neg, &n));
	assert_false(fx_shape_numel(FX_MAX_DIMS + 1, sh, &n));
	assert_string_equal(fx_shape_str(buf, sizeof(buf), 2, sh), "[3072,64]");
	assert_string_equal(fx_shape_str(buf, sizeof(buf), 0, sh), "[]");
	assert_string_equal(fx_shape_str(buf, 5, 2, sh), "[307");
}

static void test_to_f32(void **state)
{
	const uint8_t bf16[4] = { 0x80, 0x3f, 0x00, 0xc0 };   /* 1, -2 */
	const uint8_t f16[4] = { 0x00, 0x3c, 0x00, 0xb8 };    /* 1, -0.5 */
	const uint8_t e4m3[3] = { 0x38, 0x7e, 0x00 };          /* 1, 448, 0 */
	const double f64[2] = { 1.5, -3.25 };
	const float f32[2] = { 0.25f, 7.0f };
	const int32_t i32[1] = { 1 };
	float out[4];

	(void)state;
	assert_int_equal(fx_to_f32(out, bf16, FX_BF16, 2), 0);
	assert_true(out[0] == 1.0f && out[1] == -2.0f);
	assert_int_equal(fx_to_f32(out, f16, FX_F16, 2), 0);
	assert_true(out[0] == 1.0f && out[1] == -0.5f);
	assert_int_equal(fx_to_f32(out, e4m3, FX_F8_E4M3, 3), 0);
	assert_true(out[0] == 1.0f && out[1] == 448.0f && out[2] == 0.0f);
	assert_int_equal(fx_to_f32(out, f64, FX_F64, 2), 0);
	assert_true(out[0] == 1.5f && out[1] == -3.25f);
	assert_int_equal(fx_to_f32(out, f32, FX_F32, 2), 0);
	assert_true(out[0] == 0.25f && out[1] == 7.0f);
	assert_int_equal(fx_to_f32(out, i32, FX_I32, 1), FX_E_UNSUPPORTED);
	assert_int_equal(fx_to_f32(out, i32, FX_U8, 1), FX_E_UNSUPPORTED);
}

static void check_crc(const struct fx_st *st)
{
	const char *s = fx_st_meta(st, "fx.crc32");
	json_t *m;
	size_t i;

	assert_non_null(s);
	m = json_loads(s, 0, NULL);
	assert_non_null(m);
	assert_int_equal(json_object_size(m), fx_st_count(st));
	for (i = 0; i < fx_st_count(st); i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		char hex[16];

		snprintf(hex, sizeof(hex), "%08lx",
			 crc32(0, t->data, (uInt)t->nbytes) & 0xffffffffUL);
		assert_string_equal(json_string_value(json_object_get(m, t->name)), hex);
	}
	json_decref(m);
}

static void test_roundtrip(void **state)
{
	struct fx_err err = { 0 };
	struct fx_st *st = NULL;
	const char *p = tpath("all.safetensors");
	const size_t n = FX_ARRAY_SIZE(all_dtypes);
	const uint8_t *base;
	uint64_t prev = 0;
	size_t i, len;
	uint8_t *raw;

	(void)state;
	write_spec(p, all_dtypes, n, false, 0);
	if (fx_st_open(&st, p, &err) != 0)
		fail_msg("open: %s", err.msg);
	assert_string_equal(fx_st_path(st), p);
	assert_int_equal(fx_st_count(st), n);
	raw = read_all(p, &len);
	assert_int_equal(fx_st_file_size(st), len);
	assert_int_equal((8 + fx_st_header_len(st)) % 64, 0);
	base = (const uint8_t *)fx_st_at(st, 0)->data - 8 - fx_st_header_len(st);
	for (i = 0; i < n; i++) {
		const struct spec *s = &all_dtypes[i];
		const struct fx_tensor *t = fx_st_find(st, s->name);
		size_t nb = spec_bytes(s), off;
		uint8_t *want = malloc(nb + 1);

		assert_non_null(t);
		assert_string_equal(t->name, s->name);
		assert_int_equal(t->dtype, s->dt);
		assert_int_equal(t->ndim, s->ndim);
		assert_memory_equal(t->shape, s->shape, (size_t)s->ndim * sizeof(int64_t));
		assert_int_equal(t->nbytes, nb);
		fill(want, nb, (unsigned)i);
		if (nb)
			assert_memory_equal(t->data, want, nb);
		off = (size_t)((const uint8_t *)t->data - base);
		assert_int_equal(off % fx_dtype_size(t->dtype), 0);
		/* the mapped bytes are the file's bytes */
		if (nb)
			assert_memory_equal(raw + off, want, nb);
		free(want);
	}
	/* file order: ascending offsets, larger dtypes first */
	for (i = 0; i < n; i++) {
		const struct fx_tensor *t = fx_st_at(st, i);
		uint64_t off = (uint64_t)((const uint8_t *)t->data - base);

		assert_true(off >= prev);
		prev = off + t->nbytes;
		if (i)
			assert_true(fx_dtype_size(t->dtype) <= fx_dtype_size(fx_st_at(st, i - 1)->dtype));
	}
	assert_int_equal(prev, len);
	assert_null(fx_st_find(st, "nope"));
	assert_null(fx_st_at(st, n));
	assert_string_equal(fx_st_meta(st, "fx.format"), "fx.test");
	assert_string_equal(fx_st_meta(st, "note"), "h\xc3\xa9llo \"quoted\" \\ /");
	assert_string_equal(fx_st_meta(st, "late"), "set after begin");
	assert_null(fx_st_meta(st, "absent"));
	assert_int_equal(fx_st_meta_count(st), 4);
	{
		const char *k0, *k1, *v;
		fx_st_meta_at(st, 0, &k0, &v);
		fx_st_meta_at(st, 1, &k1, &v);
		assert_true(strcmp(k0, k1) < 0);
	}
	check_crc(st);
	/* the header is compact sorted JSON padded with spaces */
	assert_int_equal(raw[8], '{');
	assert_int_equal(raw[8 + fx_st_header_len(st) - 1], ' ');
	{
		const char *want = "\"t.bf16\":{\"data_offsets\":[";
		assert_non_null(memmem(raw + 8, fx_st_header_len(st), want, strlen(want)));
	}
	free(raw);
	fx_st_close(st);
}

static void test_determinism(void **state)
{
	const char *a = tpath("det-a.safetensors"), *b = tpath("det-b.safetensors");
	size_t la, lb;
	uint8_t *ra, *rb;

	(void)state;
	write_spec(a, all_dtypes, FX_ARRAY_SIZE(all_dtypes), false, 0);
	write_spec(b, all_dtypes, FX_ARRAY_SIZE(all_dtypes), true, 0);
	ra = read_all(a, &la);
	rb = read_all(b, &lb);
	assert_int_equal(la, lb);
	assert_memory_equal(ra, rb, la);
	free(ra);
	free(rb);
}

static void test_alignment(void **state)
{
	static const size_t spares[] = { 0, 1, 63, 64, 100, 4096 };
	struct fx_err err = { 0 };
	size_t i, j;

	(void)state;
	for (i = 0; i < FX_ARRAY_SIZE(spares); i++) {
		struct fx_st *st = NULL;
		const char *p = tpath("align.safetensors");
		const uint8_t *base;
		size_t hdr;

		write_spec(p, all_dtypes, FX_ARRAY_SIZE(all_dtypes), false, spares[i]);
		assert_int_equal(fx_st_open(&st, p, &err), 0);
		hdr = fx_st_header_len(st);
		assert_int_equal((8 + hdr) % 64, 0);
		base = (const uint8_t *)fx_st_at(st, 0)->data;
		/* mmap is page aligned: absolute alignment of the data start */
		assert_int_equal((uintptr_t)base % 64, 0);
		for (j = 0; j < fx_st_count(st); j++) {
			const struct fx_tensor *t = fx_st_at(st, j);
			assert_int_equal((uintptr_t)t->data % fx_dtype_size(t->dtype), 0);
		}
		/* spare bytes are really reserved */
		{
			json_t *m = json_object();
			char *txt;
			const char *k;
			size_t used, kk;

			for (kk = 0; kk < fx_st_meta_count(st); kk++) {
				const char *v;
				fx_st_meta_at(st, kk, &k, &v);
				json_object_set_new(m, k, json_string(v));
			}
			txt = json_dumps(m, JSON_COMPACT);
			used = strlen(txt);
			assert_true(hdr >= used + spares[i]);
			free(txt);
			json_decref(m);
		}
		fx_st_close(st);
	}
}

static void test_reserve(void **state)
{
	struct fx_err err = { 0 };
	struct fx_stw *w = NULL;
	int64_t sh[1] = { 4 };
	uint8_t d[4] = { 1, 2, 3, 4 };
	char big[300];
	int fd;

	(void)state;
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	/* fits: 300 spare bytes, ~260 used */
	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	assert_int_equal(fx_stw_add(w, "a", FX_U8, 1, sh, &err), 0);
	fx_stw_reserve(w, 300);
	fd = open(tpath("res.safetensors"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	assert_int_equal(fx_stw_write(w, "a", d, 4, &err), 0);
	big[250] = '\0';
	assert_int_equal(fx_stw_meta(w, "k", big, &err), 0);
	assert_int_equal(fx_stw_finish(w, &err), 0);
	fx_stw_free(w);
	close(fd);
	{
		struct fx_st *st = NULL;
		assert_int_equal(fx_st_open(&st, tpath("res.safetensors"), &err), 0);
		assert_int_equal(strlen(fx_st_meta(st, "k")), 250);
		check_crc(st);
		fx_st_close(st);
	}
	/* does not fit: no spare */
	big[250] = 'x';
	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	assert_int_equal(fx_stw_add(w, "a", FX_U8, 1, sh, &err), 0);
	fd = open(tpath("res2.safetensors"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	assert_int_equal(fx_stw_write(w, "a", d, 4, &err), 0);
	assert_int_equal(fx_stw_meta(w, "k", big, &err), 0);
	assert_int_equal(fx_stw_finish(w, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "reserved at begin"));
	assert_non_null(strstr(err.msg, "res2.safetensors"));
	fx_stw_free(w);
	close(fd);
}

static void test_writer_misuse(void **state)
{
	struct fx_err err = { 0 };
	struct fx_stw *w = NULL;
	int64_t sh[2] = { 2, 2 }, bad[2] = { -1, 2 }, huge[2] = { INT64_C(1) << 62, 8 };
	uint8_t d[16] = { 0 };
	int fd;

	(void)state;
	assert_int_equal(fx_stw_new(&w, 0, &err), 0);
	assert_int_equal(fx_stw_add(w, "a", FX_F32, 2, bad, &err), FX_E_ARG);
	assert_int_equal(fx_stw_add(w, "a", FX_F32, 2, huge, &err), FX_E_ARG);
	assert_int_equal(fx_stw_add(w, "a", FX_F32, FX_MAX_DIMS + 1, sh, &err), FX_E_ARG);
	assert_int_equal(fx_stw_add(w, "__metadata__", FX_F32, 2, sh, &err), FX_E_ARG);
	assert_int_equal(fx_stw_add(w, "bad\xff", FX_F32, 2, sh, &err), FX_E_ARG);
	assert_int_equal(fx_stw_meta(w, "k", "bad\xff", &err), FX_E_ARG);
	assert_int_equal(fx_stw_add(w, "a", FX_F32, 2, sh, &err), 0);
	assert_int_equal(fx_stw_add(w, "b", FX_U8, 1, sh, &err), 0);
	assert_int_equal(fx_stw_write(w, "a", d, 4, &err), FX_E_ARG);   /* before begin */
	fd = open(tpath("misuse.safetensors"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	assert_int_equal(fx_stw_add(w, "c", FX_U8, 1, sh, &err), FX_E_ARG);
	assert_int_equal(fx_stw_write(w, "zz", d, 4, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "no tensor 'zz'"));
	assert_int_equal(fx_stw_write(w, "a", d, 12, &err), 0);
	assert_int_equal(fx_stw_write(w, "a", d, 8, &err), FX_E_ARG);    /* 20 > 16 */
	assert_int_equal(fx_stw_finish(w, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "tensor 'a' is incomplete: 12 of 16"));
	assert_int_equal(fx_stw_write(w, "a", d, 4, &err), 0);
	assert_int_equal(fx_stw_finish(w, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "tensor 'b' is incomplete"));
	assert_int_equal(fx_stw_write(w, "b", d, 2, &err), 0);
	assert_int_equal(fx_stw_finish(w, &err), 0);
	assert_int_equal(fx_stw_finish(w, &err), FX_E_ARG);
	fx_stw_free(w);
	close(fd);
	/* no fx.crc32 without the flag */
	{
		struct fx_st *st = NULL;
		assert_int_equal(fx_st_open(&st, tpath("misuse.safetensors"), &err), 0);
		assert_null(fx_st_meta(st, "fx.crc32"));
		assert_int_equal(fx_st_meta_count(st), 0);
		fx_st_close(st);
	}
	/* duplicates */
	assert_int_equal(fx_stw_new(&w, 0, &err), 0);
	assert_int_equal(fx_stw_add(w, "a", FX_F32, 2, sh, &err), 0);
	assert_int_equal(fx_stw_add(w, "a", FX_U8, 2, sh, &err), 0);
	fd = open(tpath("dup.safetensors"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_int_equal(fx_stw_begin(w, fd, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "tensor 'a' added twice"));
	fx_stw_free(w);
	close(fd);
	/* each tensor fits, their sum does not */
	huge[0] = INT64_C(1) << 62;
	assert_int_equal(fx_stw_new(&w, 0, &err), 0);
	assert_int_equal(fx_stw_add(w, "x", FX_U8, 1, huge, &err), 0);
	assert_int_equal(fx_stw_add(w, "y", FX_U8, 1, huge, &err), 0);
	assert_int_equal(fx_stw_add(w, "z", FX_U8, 1, huge, &err), 0);
	fd = open(tpath("dup.safetensors"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_int_equal(fx_stw_begin(w, fd, &err), FX_E_ARG);
	assert_non_null(strstr(err.msg, "total tensor size overflows"));
	fx_stw_free(w);
	close(fd);
	fx_stw_free(NULL);
}

static void test_write_enospc(void **state)
{
	struct fx_err err = { 0 };
	struct fx_stw *w = NULL;
	int64_t sh[1] = { 4 };
	int fd = open("/dev/full", O_WRONLY);

	(void)state;
	if (fd < 0)
		skip();
	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	assert_int_equal(fx_stw_add(w, "a", FX_U8, 1, sh, &err), 0);
	assert_int_equal(fx_stw_begin(w, fd, &err), FX_E_IO);
	assert_non_null(strstr(err.msg, "'/dev/full'"));
	assert_non_null(strstr(err.msg, strerror(ENOSPC)));
	fx_stw_free(w);
	close(fd);
}

static void test_empty(void **state)
{
	static const char hdr[] =
		"{\"a\":{\"dtype\":\"F32\",\"shape\":[0,4],\"data_offsets\":[0,0]},"
		"\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
		"\"c\":{\"dtype\":\"U8\",\"shape\":[3,0],\"data_offsets\":[8,8]}}";
	struct fx_err err = { 0 };
	struct fx_st *st = NULL;
	struct fx_stw *w = NULL;
	uint8_t buf[512] = { 0 };
	size_t hl = strlen(hdr), len;
	int64_t sh[2] = { 0, 7 };
	uint8_t *raw;
	int fd;

	(void)state;
	/* header only, no tensors */
	memcpy(buf, "\x02\0\0\0\0\0\0\0{}", 10);
	assert_int_equal(fx_st_open_mem(&st, buf, 10, "e.safetensors", &err), 0);
	assert_int_equal(fx_st_count(st), 0);
	assert_int_equal(fx_st_meta_count(st), 0);
	assert_null(fx_st_find(st, "a"));
	assert_null(fx_st_meta(st, "a"));
	fx_st_close(st);
	/* empty tensors around a real one */
	buf[0] = (uint8_t)hl;
	memcpy(buf + 8, hdr, hl);
	assert_int_equal(fx_st_open_mem(&st, buf, 8 + hl + 8, "e.safetensors", &err), 0);
	assert_int_equal(fx_st_count(st), 3);
	assert_string_equal(fx_st_at(st, 0)->name, "a");
	assert_string_equal(fx_st_at(st, 1)->name, "b");
	assert_string_equal(fx_st_at(st, 2)->name, "c");
	assert_int_equal(fx_st_find(st, "a")->nbytes, 0);
	assert_int_equal(fx_st_find(st, "c")->nbytes, 0);
	assert_int_equal(fx_st_find(st, "b")->nbytes, 8);
	fx_st_close(st);
	/* writer: only empty tensors, and no tensors at all */
	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	assert_int_equal(fx_stw_add(w, "z", FX_BF16, 2, sh, &err), 0);
	fd = open(tpath("empty.safetensors"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	assert_int_equal(fx_stw_finish(w, &err), 0);
	fx_stw_free(w);
	close(fd);
	assert_int_equal(fx_st_open(&st, tpath("empty.safetensors"), &err), 0);
	assert_int_equal(fx_st_count(st), 1);
	assert_int_equal(fx_st_file_size(st), 8 + fx_st_header_len(st));
	check_crc(st);
	fx_st_close(st);
	assert_int_equal(fx_stw_new(&w, 0, &err), 0);
	fd = open(tpath("none.safetensors"), O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	assert_int_equal(fx_stw_finish(w, &err), 0);
	fx_stw_free(w);
	close(fd);
	raw = read_all(tpath("none.safetensors"), &len);
	assert_int_equal(len, 64);
	assert_memory_equal(raw, "\x38\0\0\0\0\0\0\0{}", 10);
	free(raw);
	assert_int_equal(fx_st_open(&st, tpath("none.safetensors"), &err), 0);
	assert_int_equal(fx_st_count(st), 0);
	fx_st_close(st);
}

static void test_open_errors(void **state)
{
	struct fx_err err = { 0 };
	struct fx_st *st = NULL;

	(void)state;
	assert_int_equal(fx_st_open(&st, tpath("missing.safetensors"), &err), FX_E_IO);
	assert_null(st);
	assert_non_null(strstr(err.msg, "cannot open"));
	assert_non_null(strstr(err.msg, "missing.safetensors"));
	assert_int_equal(fx_st_open(&st, tmpdir, &err), FX_E_IO);
	assert_non_null(strstr(err.msg, "not a regular file"));
	write_bytes(tpath("zero.safetensors"), "", 0);
	assert_int_equal(fx_st_open(&st, tpath("zero.safetensors"), &err), FX_E_FORMAT);
	assert_non_null(strstr(err.msg, "file too small"));
	assert_non_null(strstr(err.msg, "zero.safetensors"));
	/* on disk, a hole is still a hole */
	write_bytes(tpath("hole.safetensors"),
		    "\x39\0\0\0\0\0\0\0{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}    ..", 67);
	assert_int_equal(fx_st_open(&st, tpath("hole.safetensors"), &err), FX_E_FORMAT);
	assert_non_null(strstr(err.msg, "hole of 1 bytes"));
}

static void test_header_build(void **state)
{
	const char *p = tpath("meta.safetensors");
	const char *keys[] = { "fx.format", "model_class", "fx.crc32" };
	const char *vals[] = { "fx.packed", "NunchakuFluxTransformer2dModel", NULL };
	struct fx_err err = { 0 };
	struct fx_st *st = NULL, *st2 = NULL;
	char *hdr = NULL;
	size_t len1, len2;
	uint8_t *r1, *r2;
	int fd;

	(void)state;
	write_spec(p, all_dtypes, FX_ARRAY_SIZE(all_dtypes), false, 512);
	r1 = read_all(p, &len1);
	assert_int_equal(fx_st_open(&st, p, &err), 0);
	vals[2] = fx_st_meta(st, "fx.crc32");
	assert_int_equal(fx_st_header_build(&hdr, 10, st, 3, keys, vals, &err), FX_E_ARG);
	assert_null(hdr);
	assert_int_equal(fx_st_header_build(&hdr, fx_st_header_len(st), st, 3, keys, vals, &err), 0);
	assert_int_equal(strlen(hdr), fx_st_header_len(st));
	fd = open(p, O_WRONLY);
	assert_int_equal(pwrite(fd, hdr, fx_st_header_len(st), 8), (ssize_t)fx_st_header_len(st));
	close(fd);
	free(hdr);
	assert_int_equal(fx_st_open(&st2, p, &err), 0);
	assert_string_equal(fx_st_meta(st2, "fx.format"), "fx.packed");
	assert_string_equal(fx_st_meta(st2, "model_class"), "NunchakuFluxTransformer2dModel");
	assert_null(fx_st_meta(st2, "note"));
	check_crc(st2);
	fx_st_close(st2);
	fx_st_close(st);
	/* data untouched */
	r2 = read_all(p, &len2);
	assert_int_equal(len1, len2);
	{
		uint64_t hl = 0;
		int i;
		for (i = 7; i >= 0; i--)
			hl = (hl << 8) | r1[i];
		assert_memory_equal(r1 + 8 + hl, r2 + 8 + hl, len1 - 8 - hl);
	}
	free(r1);
	free(r2);
}

/* ---- hostile headers --------------------------------------------------- */

struct bad {
	const char *hdr;        /* NULL: raw bytes below */
	size_t data;            /* data bytes after the header */
	const char *raw;
	size_t rawlen;
	int code;
	const char *want;
};

#define T1(dt, shape, b, e) "{\"a\":{\"dtype\":\"" dt "\",\"shape\":" shape ",\"data_offsets\":[" #b "," #e "]}}"

static struct bad bad_cases[] = {
	{ NULL, 0, "\x05\0\0", 3, FX_E_FORMAT, "file too small for a safetensors header (3 bytes)" },
	{ NULL, 0, "\xe8\x03\0\0\0\0\0\0{}", 10, FX_E_FORMAT, "header length 1000 runs past the end" },
	{ NULL, 0, "\0\0\0\0\0\0\0\x80{}", 10, FX_E_FORMAT, "header length 9223372036854775808 exceeds the 100 MiB limit" },
	{ NULL, 0, "\0\0\0\0\0\0\0\0", 8, FX_E_FORMAT, "header does not start with '{'" },
	{ " {}", 0, NULL, 0, FX_E_FORMAT, "header does not start with '{'" },
	{ "[1]", 0, NULL, 0, FX_E_FORMAT, "header does not start with '{'" },
	{ "{\"a\":", 0, NULL, 0, FX_E_FORMAT, "invalid header JSON" },
	{ "{} x", 0, NULL, 0, FX_E_FORMAT, "invalid header JSON" },
	{ "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	  "\"b\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}", 12, NULL, 0, FX_E_FORMAT,
	  "tensors 'a' [0,8] and 'b' [4,12] overlap" },
	{ "{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
	  "\"e\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,4]}}", 8, NULL, 0, FX_E_FORMAT,
	  "overlap" },
	{ T1("F32", "[4]", 0, 16), 8, NULL, 0, FX_E_FORMAT,
	  "tensor 'a' data_offsets [0,16] out of bounds (data area is 8 bytes)" },
	{ "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]},"
	  "\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", 12, NULL, 0, FX_E_FORMAT,
	  "hole of 4 bytes at data offset 4 before tensor 'b'" },
	{ T1("U8", "[4]", 2, 6), 6, NULL, 0, FX_E_FORMAT, "hole of 2 bytes at data offset 0 before tensor 'a'" },
	{ T1("F32", "[1]", 0, 4), 8, NULL, 0, FX_E_FORMAT, "4 trailing bytes after the last tensor" },
	{ "{}", 3, NULL, 0, FX_E_FORMAT, "3 trailing bytes" },
	{ T1("U8", "[4611686018427387904,8]", 0, 0), 0, NULL, 0, FX_E_FORMAT,
	  "tensor 'a' shape [4611686018427387904,8] of U8 overflows" },
	{ T1("I64", "[4611686018427387904]", 0, 0), 0, NULL, 0, FX_E_FORMAT, "overflows" },
	{ T1("U8", "[99999999999999999999]", 0, 0), 0, NULL, 0, FX_E_FORMAT, "invalid header JSON" },
	{ T1("F32", "[3,-2]", 0, 0), 0, NULL, 0, FX_E_FORMAT, "tensor 'a' has negative dimension -2" },
	{ T1("F32", "[3,2.0]", 0, 24), 24, NULL, 0, FX_E_FORMAT, "tensor 'a' has a shape entry that is not an integer" },
	{ T1("F32", "[1,1,1,1,1,1,1,1,1]", 0, 4), 4, NULL, 0, FX_E_UNSUPPORTED, "tensor 'a' has 9 dimensions" },
	{ T1("Q4_K", "[2]", 0, 2), 2, NULL, 0, FX_E_FORMAT, "tensor 'a' has unknown dtype 'Q4_K'" },
	{ "{\"a\":{\"shape\":[2],\"data_offsets\":[0,2]}}", 2, NULL, 0, FX_E_FORMAT, "tensor 'a' has no dtype" },
	{ "{\"a\":{\"dtype\":\"U8\",\"data_offsets\":[0,2]}}", 2, NULL, 0, FX_E_FORMAT, "tensor 'a' has no shape" },
	{ "{\"a\":{\"dtype\":\"U8\",\"shape\":[2]}}", 2, NULL, 0, FX_E_FORMAT, "tensor 'a' has no data_offsets" },
	{ "{\"a\":{\"dtype\":\"U8\",\"shape\":[2],\"data_offsets\":[0]}}", 2, NULL, 0, FX_E_FORMAT, "no data_offsets" },
	{ T1("U8", "[2]", 2, 0), 2, NULL, 0, FX_E_FORMAT, "tensor 'a' has bad data_offsets [2,0]" },
	{ T1("U8", "[2]", -2, 0), 2, NULL, 0, FX_E_FORMAT, "bad data_offsets [-2,0]" },
	{ "{\"a\":[1]}", 0, NULL, 0, FX_E_FORMAT, "tensor 'a' is not a JSON object" },
	{ T1("BF16", "[2,3]", 0, 10), 10, NULL, 0, FX_E_FORMAT,
	  "'x.safetensors': tensor 'a' has 10 bytes, shape [2,3] of BF16 needs 12" },
	{ "{\"__metadata__\":{\"k\":1}}", 0, NULL, 0, FX_E_FORMAT, "metadata 'k' is not a string" },
	{ "{\"__metadata__\":{\"k\":null}}", 0, NULL, 0, FX_E_FORMAT, "metadata 'k' is not a string" },
	{ "{\"__metadata__\":[\"k\"]}", 0, NULL, 0, FX_E_FORMAT, "__metadata__ is not an object" },
	{ "{\"__metadata__\":{\"k\":\"v\\u0000w\"}}", 0, NULL, 0, FX_E_FORMAT, "invalid header JSON" },
	{ "{\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]},"
	  "\"a\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[1,2]}}", 2, NULL, 0, FX_E_FORMAT,
	  "duplicate name in header" },
	{ "{\"__metadata__\":{\"k\":\"v\",\"k\":\"w\"}}", 0, NULL, 0, FX_E_FORMAT, "duplicate name in header" },
	{ "{\"a\xff\":{\"dtype\":\"U8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, NULL, 0, FX_E_FORMAT,
	  "header is not valid UTF-8" },
	{ "{\"__metadata__\":{\"k\":\"\xc3\x28\"}}", 0, NULL, 0, FX_E_FORMAT, "header is not valid UTF-8" },
};

static const char *const bad_names[] = {
	"truncated file (< 8 bytes)", "header length past the end", "header length 2^63",
	"empty header", "header starts with a space", "header is an array", "invalid JSON",
	"junk after the JSON", "offsets overlap", "empty tensor inside another",
	"offsets out of bounds", "hole between tensors", "hole at the start", "trailing bytes",
	"trailing bytes, no tensors", "shape product overflow", "byte size overflow",
	"dimension beyond 64 bits", "negative dim", "non-integer dim", "too many dims",
	"unknown dtype", "dtype missing", "shape missing", "data_offsets missing",
	"data_offsets of one entry", "data_offsets reversed", "negative data_offsets",
	"entry not an object", "byte length mismatch", "non-string metadata value",
	"null metadata value", "metadata not an object", "NUL in metadata",
	"duplicate tensor names", "duplicate metadata keys", "non-UTF-8 tensor name",
	"non-UTF-8 metadata value",
};

static void test_bad(void **state)
{
	const struct bad *c = *state;
	struct fx_err err = { 0 };
	struct fx_st *st = (struct fx_st *)(uintptr_t)1;
	uint8_t *buf;
	size_t len, hl;

	if (c->hdr) {
		hl = strlen(c->hdr);
		len = 8 + hl + c->data;
		buf = calloc(1, len);
		assert_non_null(buf);
		buf[0] = (uint8_t)hl;
		buf[1] = (uint8_t)(hl >> 8);
		memcpy(buf + 8, c->hdr, hl);
	} else {
		len = c->rawlen;
		buf = malloc(len);
		memcpy(buf, c->raw, len);
	}
	assert_int_equal(fx_st_open_mem(&st, buf, len, "x.safetensors", &err), c->code);
	assert_null(st);
	assert_int_equal(err.code, c->code);
	if (!strstr(err.msg, c->want))
		fail_msg("message '%s' lacks '%s'", err.msg, c->want);
	assert_non_null(strstr(err.msg, "'x.safetensors'"));
	assert_true(err.msg[0] != '\0' && err.msg[strlen(err.msg) - 1] != '.');
	free(buf);
}

/* ---- sharded sets ------------------------------------------------------- */

static void write_shard(const char *path, const char *const *names, size_t n)
{
	struct fx_err err = { 0 };
	struct fx_stw *w = NULL;
	int64_t sh[1] = { 3 };
	size_t i;
	int fd;

	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	for (i = 0; i < n; i++)
		assert_int_equal(fx_stw_add(w, names[i], FX_F32, 1, sh, &err), 0);
	fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	for (i = 0; i < n; i++) {
		float v[3] = { (float)i, (float)names[i][0], 1.5f };
		assert_int_equal(fx_stw_write(w, names[i], v, sizeof(v), &err), 0);
	}
	assert_int_equal(fx_stw_finish(w, &err), 0);
	fx_stw_free(w);
	close(fd);
}

static void write_index(const char *path, const char *map)
{
	char buf[1024];

	snprintf(buf, sizeof(buf), "{\"metadata\":{\"total_size\":60},\"weight_map\":{%s}}", map);
	write_bytes(path, buf, strlen(buf));
}

static void expect_set_fail(const char *path, int code, const char *want1, const char *want2)
{
	struct fx_err err = { 0 };
	struct fx_stset *set = NULL;

	if (fx_stset_open(&set, path, &err) != code)
		fail_msg("'%s': expected %d for '%s', got '%s'", path, code, want1, err.msg);
	assert_null(set);
	if (!strstr(err.msg, want1) || (want2 && !strstr(err.msg, want2)))
		fail_msg("message '%s' lacks '%s' / '%s'", err.msg, want1, want2 ? want2 : "");
}

static void test_sharded(void **state)
{
	static const char *const s1[] = { "b.weight", "a.weight" }, *const s2[] = { "c.bias" };
	static const char *const s3[] = { "a.weight", "d" };
	struct fx_err err = { 0 };
	struct fx_stset *set = NULL;
	char dir[300], p[400], idx[400];
	size_t i;

	(void)state;
	snprintf(dir, sizeof(dir), "%s/model", tmpdir);
	assert_int_equal(mkdir(dir, 0755), 0);
	snprintf(p, sizeof(p), "%s/m-00001-of-00002.safetensors", dir);
	write_shard(p, s1, 2);
	snprintf(p, sizeof(p), "%s/m-00002-of-00002.safetensors", dir);
	write_shard(p, s2, 1);
	snprintf(idx, sizeof(idx), "%s/m.safetensors.index.json", dir);
	write_index(idx, "\"c.bias\":\"m-00002-of-00002.safetensors\","
		    "\"a.weight\":\"m-00001-of-00002.safetensors\","
		    "\"b.weight\":\"m-00001-of-00002.safetensors\"");
	for (i = 0; i < 2; i++) {
		if (fx_stset_open(&set, i ? dir : idx, &err) != 0)
			fail_msg("stset: %s", err.msg);
		assert_int_equal(fx_stset_nfiles(set), 2);
		assert_int_equal(fx_stset_count(set), 3);
		assert_string_equal(fx_stset_at(set, 0)->name, "a.weight");
		assert_string_equal(fx_stset_at(set, 1)->name, "b.weight");
		assert_string_equal(fx_stset_at(set, 2)->name, "c.bias");
		assert_null(fx_stset_at(set, 3));
		assert_non_null(strstr(fx_stset_path_of(set, "c.bias"), "m-00002-of-00002.safetensors"));
		assert_non_null(strstr(fx_stset_path_of(set, "a.weight"), "m-00001-of-00002.safetensors"));
		assert_null(fx_stset_path_of(set, "zz"));
		assert_null(fx_stset_find(set, "zz"));
		assert_int_equal(fx_stset_find(set, "b.weight")->nbytes, 12);
		assert_int_equal(((const float *)fx_stset_find(set, "b.weight")->data)[1], 'b');
		assert_non_null(strstr(fx_st_path(fx_stset_file(set, 0)), "m-00001"));
		assert_null(fx_stset_file(set, 2));
		fx_stset_close(set);
		set = NULL;
	}
	/* a single file is a set of one */
	assert_int_equal(fx_stset_open(&set, p, &err), 0);
	assert_int_equal(fx_stset_nfiles(set), 1);
	assert_int_equal(fx_stset_count(set), 1);
	fx_stset_close(set);
	fx_stset_close(NULL);

	/* shard missing */
	snprintf(idx, sizeof(idx), "%s/bad1.safetensors.index.json", dir);
	write_index(idx, "\"a.weight\":\"m-00001-of-00002.safetensors\",\"b.weight\":\"m-00001-of-00002.safetensors\","
		    "\"c.bias\":\"gone.safetensors\"");
	expect_set_fail(idx, FX_E_IO, "gone.safetensors", "shard listed in");
	/* tensor not where the map says */
	write_index(idx, "\"a.weight\":\"m-00001-of-00002.safetensors\",\"b.weight\":\"m-00002-of-00002.safetensors\","
		    "\"c.bias\":\"m-00002-of-00002.safetensors\"");
	expect_set_fail(idx, FX_E_FORMAT, "index puts tensor 'b.weight' in", "(it is in '");
	/* tensor in two shards */
	snprintf(p, sizeof(p), "%s/m-extra.safetensors", dir);
	write_shard(p, s3, 2);
	write_index(idx, "\"a.weight\":\"m-00001-of-00002.safetensors\",\"b.weight\":\"m-00001-of-00002.safetensors\","
		    "\"c.bias\":\"m-00002-of-00002.safetensors\",\"d\":\"m-extra.safetensors\"");
	expect_set_fail(idx, FX_E_FORMAT, "tensor 'a.weight' is in two shards", "m-extra.safetensors");
	/* a shard tensor the map does not list */
	write_index(idx, "\"a.weight\":\"m-00001-of-00002.safetensors\"");
	expect_set_fail(idx, FX_E_FORMAT, "tensor 'b.weight' in shard", "missing from the weight_map");
	/* escapes, junk */
	write_index(idx, "\"a.weight\":\"../x.safetensors\"");
	expect_set_fail(idx, FX_E_FORMAT, "not a relative path", NULL);
	write_index(idx, "\"a.weight\":3");
	expect_set_fail(idx, FX_E_FORMAT, "weight_map entry 'a.weight' is not a string", NULL);
	write_bytes(idx, "{\"weight_map\":{\"a\":\"x\",\"a\":\"y\"}}", 33);
	expect_set_fail(idx, FX_E_FORMAT, "invalid index JSON", NULL);
	write_bytes(idx, "{\"metadata\":{}}", 15);
	expect_set_fail(idx, FX_E_FORMAT, "no weight_map", NULL);
	expect_set_fail(tpath("model/none.index.json"), FX_E_IO, "cannot open", NULL);
	/* a directory with two indexes */
	expect_set_fail(dir, FX_E_FORMAT, "directory holds 2 indexes", NULL);
	unlink(idx);
	snprintf(idx, sizeof(idx), "%s/m.safetensors.index.json", dir);
	/* several .safetensors and no index */
	unlink(idx);
	expect_set_fail(dir, FX_E_FORMAT, "3 .safetensors files and no index",
			"'m-00001-of-00002.safetensors', 'm-00002-of-00002.safetensors', 'm-extra.safetensors'");
	/* exactly one .safetensors */
	snprintf(dir, sizeof(dir), "%s/one", tmpdir);
	assert_int_equal(mkdir(dir, 0755), 0);
	expect_set_fail(dir, FX_E_FORMAT, "no .safetensors file or index", NULL);
	snprintf(p, sizeof(p), "%s/only.safetensors", dir);
	write_shard(p, s3, 2);
	assert_int_equal(fx_stset_open(&set, dir, &err), 0);
	assert_int_equal(fx_stset_count(set), 2);
	assert_string_equal(fx_stset_at(set, 1)->name, "d");
	fx_stset_close(set);
	expect_set_fail(tpath("nowhere"), FX_E_IO, "cannot open", NULL);
}

/* ---- golden files -------------------------------------------------------- */

static const struct fx_tensor *expect_tensor(const struct fx_st *st, const char *name,
					     enum fx_dtype dt, int ndim, int64_t d0, int64_t d1)
{
	const struct fx_tensor *t = fx_st_find(st, name);

	if (!t)
		fail_msg("'%s': no tensor '%s'", fx_st_path(st), name);
	assert_int_equal(t->dtype, dt);
	assert_int_equal(t->ndim, ndim);
	assert_int_equal(t->shape[0], d0);
	if (ndim > 1)
		assert_int_equal(t->shape[1], d1);
	return t;
}

static void test_golden(void **state)
{
	const char *dir = getenv("FX_GOLDEN");
	struct fx_err err = { 0 };
	char pat[512];
	glob_t g;
	size_t i, seen = 0;

	(void)state;
	if (!dir)
		skip();
	snprintf(pat, sizeof(pat), "%s/*.safetensors", dir);
	assert_int_equal(glob(pat, 0, NULL, &g), 0);
	assert_true(g.gl_pathc >= 6);
	for (i = 0; i < g.gl_pathc; i++) {
		const char *p = g.gl_pathv[i], *base = strrchr(p, '/') + 1;
		struct fx_st *st = NULL;

		if (fx_st_open(&st, p, &err) != 0)
			fail_msg("%s", err.msg);
		assert_non_null(fx_st_meta(st, "about"));
		assert_true(fx_st_count(st) >= 2);
		if (!strcmp(base, "pack_w4.safetensors")) {
			expect_tensor(st, "codes", FX_U8, 2, 256, 384);
			expect_tensor(st, "packed", FX_I8, 2, 256, 192);
			seen++;
		} else if (!strcmp(base, "codes.safetensors")) {
			const struct fx_tensor *t = expect_tensor(st, "e2m1.values", FX_F32, 1, 16, 0);
			float v[16];

			expect_tensor(st, "e4m3.input", FX_F32, 1, 422, 0);
			expect_tensor(st, "bf16.expected", FX_BF16, 1, 307, 0);
			assert_int_equal(fx_to_f32(v, t->data, t->dtype, 16), 0);
			assert_true(v[0] == 0.0f && v[2] == 1.0f && v[7] == 6.0f);
			seen++;
		} else if (!strcmp(base, "pack_scale_fp8.safetensors")) {
			expect_tensor(st, "codes", FX_F8_E4M3, 2, 256, 24);
			expect_tensor(st, "packed", FX_F8_E4M3, 1, 6144, 0);
			seen++;
		} else if (!strcmp(base, "pack_awq_w4.safetensors")) {
			expect_tensor(st, "codes", FX_U8, 2, 128, 256);
			expect_tensor(st, "packed", FX_I16, 2, 32, 256);
			seen++;
		} else if (!strcmp(base, "pack_lowrank.safetensors")) {
			expect_tensor(st, "down.packed", FX_BF16, 2, 384, 32);
			seen++;
		}
		fx_st_close(st);
		/* also as a set of one */
		{
			struct fx_stset *set = NULL;
			assert_int_equal(fx_stset_open(&set, p, &err), 0);
			assert_true(fx_stset_count(set) >= 2);
			fx_stset_close(set);
		}
	}
	assert_int_equal(seen, 5);
	globfree(&g);
}

/* The writer queues tensor bytes to a thread in 4 MiB slots: many writes of
 * odd sizes, tensors split across slots and larger than the whole ring must
 * land at the right offsets with the right CRCs. */
static void test_async_write(void **state)
{
	struct fx_err err = { 0 };
	struct fx_stw *w = NULL;
	struct fx_st *st = NULL;
	const char *p = tpath("async.safetensors");
	const size_t big = (size_t)37 << 20, small = 1000003;   /* big > the 32 MiB ring */
	int64_t sh1[1] = { (int64_t)big }, sh2[1] = { (int64_t)small };
	uint8_t *a = malloc(big), *b = malloc(small);
	size_t off;
	int fd;

	(void)state;
	assert_non_null(a);
	assert_non_null(b);
	for (size_t i = 0; i < big; i++)
		a[i] = (uint8_t)(i * 2654435761u >> 13);
	for (size_t i = 0; i < small; i++)
		b[i] = (uint8_t)(i * 40503u >> 7);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	assert_int_equal(fx_stw_add(w, "a", FX_U8, 1, sh1, &err), 0);
	assert_int_equal(fx_stw_add(w, "b", FX_U8, 1, sh2, &err), 0);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	/* uneven pieces, most of them spanning slots */
	for (off = 0; off < big; ) {
		size_t k = off % 3 ? 5 << 20 : 12345;

		if (k > big - off)
			k = big - off;
		assert_int_equal(fx_stw_write(w, "a", a + off, k, &err), 0);
		off += k;
	}
	assert_int_equal(fx_stw_write(w, "b", b, small / 2, &err), 0);
	assert_int_equal(fx_stw_write(w, "b", b + small / 2, small - small / 2, &err), 0);
	if (fx_stw_finish(w, &err) != 0)
		fail_msg("finish: %s", err.msg);
	fx_stw_free(w);
	assert_int_equal(close(fd), 0);
	if (fx_st_open(&st, p, &err) != 0)
		fail_msg("open: %s", err.msg);
	assert_memory_equal(fx_st_find(st, "a")->data, a, big);
	assert_memory_equal(fx_st_find(st, "b")->data, b, small);
	check_crc(st);
	fx_st_close(st);
	free(a);
	free(b);
}

/* A failed write inside the queue is reported by a later write or by finish,
 * with the file and the system's reason. */
static void test_async_enospc(void **state)
{
	struct fx_err err = { 0 };
	struct fx_stw *w = NULL;
	const size_t n = (size_t)48 << 20;
	int64_t sh[1] = { (int64_t)n };
	uint8_t *a = calloc(1, n);
	int fd = open("/dev/full", O_WRONLY), ret = 0;

	(void)state;
	if (fd < 0)
		skip();
	assert_non_null(a);
	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	assert_int_equal(fx_stw_add(w, "a", FX_U8, 1, sh, &err), 0);
	/* the header goes first and fails at once on /dev/full; a writer begun on
	 * a good fd and then pointed at /dev/full exercises the queued path */
	{
		int good = open(tpath("enospc.tmp"), O_WRONLY | O_CREAT | O_TRUNC, 0644);

		assert_true(good >= 0);
		assert_int_equal(fx_stw_begin(w, good, &err), 0);
		assert_int_equal(dup2(fd, good), good);
		for (size_t off = 0; off < n && ret == 0; off += 1 << 20)
			ret = fx_stw_write(w, "a", a + off, 1 << 20, &err);
		if (ret == 0)
			ret = fx_stw_finish(w, &err);
		assert_int_equal(ret, FX_E_IO);
		assert_non_null(strstr(err.msg, "write failed"));
		assert_non_null(strstr(err.msg, strerror(ENOSPC)));
		/* the failure sticks: neither a retried finish nor a write passes */
		memset(&err, 0, sizeof(err));
		assert_int_equal(fx_stw_finish(w, &err), FX_E_IO);
		assert_non_null(strstr(err.msg, strerror(ENOSPC)));
		assert_int_equal(fx_stw_write(w, "a", a, 1, &err), FX_E_IO);
		close(good);
	}
	fx_stw_free(w);
	close(fd);
	free(a);
}

/* Releasing a tensor's pages keeps its bytes: read again from the page
 * cache for a mapped file, untouched for a caller's buffer. */
static void test_release(void **state)
{
	struct fx_err err = { 0 };
	struct fx_st *st = NULL, *mem = NULL;
	const char *p = tpath("release.safetensors");
	const struct fx_tensor *t;
	uint8_t *raw, *copy;
	size_t len;

	(void)state;
	write_spec(p, all_dtypes, FX_ARRAY_SIZE(all_dtypes), false, 0);
	assert_int_equal(fx_st_open(&st, p, &err), 0);
	raw = read_all(p, &len);
	assert_int_equal(fx_st_open_mem(&mem, raw, len, "mem", &err), 0);
	copy = malloc(len);
	memcpy(copy, raw, len);
	for (size_t i = 0; i < fx_st_count(st); i++) {
		t = fx_st_at(st, i);
		fx_tensor_release(t);
		fx_tensor_release(fx_st_find(mem, t->name));
	}
	check_crc(st);
	check_crc(mem);
	assert_memory_equal(raw, copy, len);
	fx_st_close(mem);
	fx_st_close(st);
	free(raw);
	free(copy);
}

int main(void)
{
	struct CMUnitTest tests[16 + FX_ARRAY_SIZE(bad_cases)];
	size_t n = 0, i;
	static char names[FX_ARRAY_SIZE(bad_cases)][96];

#define ADD(f) tests[n++] = (struct CMUnitTest)cmocka_unit_test(f)
	ADD(test_dtype_table);
	ADD(test_to_f32);
	ADD(test_roundtrip);
	ADD(test_determinism);
	ADD(test_alignment);
	ADD(test_reserve);
	ADD(test_writer_misuse);
	ADD(test_write_enospc);
	ADD(test_async_write);
	ADD(test_async_enospc);
	ADD(test_release);
	ADD(test_empty);
	ADD(test_open_errors);
	ADD(test_header_build);
	ADD(test_sharded);
	ADD(test_golden);
	_Static_assert(FX_ARRAY_SIZE(bad_names) == FX_ARRAY_SIZE(bad_cases), "one name per case");
	for (i = 0; i < FX_ARRAY_SIZE(bad_cases); i++) {
		snprintf(names[i], sizeof(names[i]), "hostile: %s", bad_names[i]);
		tests[n++] = (struct CMUnitTest){ names[i], test_bad, NULL, NULL, &bad_cases[i] };
	}
	if (n != FX_ARRAY_SIZE(tests))
		return 1;
	return cmocka_run_group_tests_name("test-st", tests, setup, teardown);
}
