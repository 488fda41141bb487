/* Plain driver for a libFuzzer target: replays a corpus directory, then runs
 * a deterministic mutation test from a few valid buffers. Prints TAP. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define MUTATIONS 6000

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int run_file(const char *path)
{
	FILE *f = fopen(path, "rb");
	uint8_t *buf;
	long n;

	if (!f)
		return -1;
	if (fseek(f, 0, SEEK_END) || (n = ftell(f)) < 0 || fseek(f, 0, SEEK_SET)) {
		fclose(f);
		return -1;
	}
	buf = malloc(n ? (size_t)n : 1);
	if (!buf || fread(buf, 1, (size_t)n, f) != (size_t)n) {
		free(buf);
		fclose(f);
		return -1;
	}
	fclose(f);
	LLVMFuzzerTestOneInput(buf, (size_t)n);
	free(buf);
	return 0;
}

/* Returns the number of files run, or -1. */
static long run_corpus(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	char **names = NULL, path[4096];
	size_t n = 0, cap = 0, i;
	long ret = 0;

	if (!d)
		return -1;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (n == cap) {
			char **g = realloc(names, (cap = cap ? 2 * cap : 64) * sizeof(*names));
			if (!g)
				break;
			names = g;
		}
		names[n] = strdup(de->d_name);
		if (names[n])
			n++;
	}
	closedir(d);
	qsort(names, n, sizeof(*names), cmp_str);
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]);
		if (ret >= 0 && run_file(path) == 0)
			ret++;
		else
			ret = -1;
		free(names[i]);
	}
	free(names);
	return ret;
}

/* ---- mutation test ------------------------------------------------------ */

static uint64_t rng = 0x9e3779b97f4a7c15ull;

static uint64_t next(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return rng;
}

static size_t pick(size_t n)
{
	return n ? (size_t)(next() % n) : 0;
}

struct buf {
	uint8_t *p;
	size_t n;
};

/* 8-byte length + header padded to 64 + data bytes. */
static struct buf make_seed(const char *hdr, size_t data)
{
	size_t hl = strlen(hdr), pad = (8 + hl + 63) / 64 * 64 - 8, i;
	struct buf b;

	b.n = 8 + pad + data;
	b.p = malloc(b.n);
	for (i = 0; i < 8; i++)
		b.p[i] = (uint8_t)((uint64_t)pad >> (8 * i));
	memcpy(b.p + 8, hdr, hl);
	memset(b.p + 8 + hl, ' ', pad - hl);
	for (i = 0; i < data; i++)
		b.p[8 + pad + i] = (uint8_t)(i * 37 + 11);
	return b;
}

static void insert(struct buf *b, size_t at, const uint8_t *s, size_t k)
{
	uint8_t *p = realloc(b->p, b->n + k);

	if (!p)
		return;
	memmove(p + at + k, p + at, b->n - at);
	memcpy(p + at, s, k);
	b->p = p;
	b->n += k;
}

static void set_len(struct buf *b, uint64_t v)
{
	size_t i;

	for (i = 0; i < 8 && i < b->n; i++)
		b->p[i] = (uint8_t)(v >> (8 * i));
}

static uint64_t get_len(const struct buf *b)
{
	uint64_t v = 0;
	size_t i;

	for (i = b->n < 8 ? b->n : 8; i-- > 0; )
		v = (v << 8) | b->p[i];
	return v;
}

static void mutate(struct buf *b)
{
	static const uint8_t sets[] = { 0, 0xff, '{', '"', ',', ']', '}', '-', '\\', 0x80 };
	size_t hend = 8, at, k;
	uint8_t digit;

	if (!b->n)
		return;
	if (b->n >= 8 && get_len(b) <= b->n - 8)
		hend = 8 + (size_t)get_len(b);
	switch (pick(9)) {
	case 0:   /* bit flip, mostly in the header */
		at = pick(100) < 80 && hend > 8 ? 8 + pick(hend - 8) : pick(b->n);
		b->p[at] ^= (uint8_t)(1u << pick(8));
		break;
	case 1:   /* byte set */
		at = hend > 8 ? 8 + pick(hend - 8) : pick(b->n);
		b->p[at] = sets[pick(sizeof(sets))];
		break;
	case 2:   /* truncation */
		b->n = pick(b->n);
		break;
	case 3:   /* header length edits */
		switch (pick(5)) {
		case 0: set_len(b, get_len(b) + 1 + pick(16)); break;
		case 1: set_len(b, get_len(b) - 1 - pick(16)); break;
		case 2: set_len(b, next()); break;
		case 3: set_len(b, (uint64_t)1 << pick(64)); break;
		default: set_len(b, b->n >= 8 ? b->n - 8 + pick(3) - 1 : 0); break;
		}
		break;
	case 4:   /* digits into a number */
		for (k = 0; k < 64; k++) {
			at = hend > 8 ? 8 + pick(hend - 8) : pick(b->n);
			if (b->p[at] >= '0' && b->p[at] <= '9')
				break;
		}
		for (k = 1 + pick(20); k-- > 0; ) {
			digit = (uint8_t)('0' + pick(10));
			insert(b, at, &digit, 1);
		}
		break;
	case 5:   /* delete a range */
		at = pick(b->n);
		k = pick(b->n - at + 1) % 32;
		memmove(b->p + at, b->p + at + k, b->n - at - k);
		b->n -= k;
		break;
	case 6:   /* duplicate a range */
		at = pick(b->n);
		k = pick(b->n - at + 1) % 48;
		if (k) {
			uint8_t tmp[48];
			memcpy(tmp, b->p + at, k);
			insert(b, pick(b->n + 1), tmp, k);
		}
		break;
	case 7:   /* append a byte, or change one in the data area */
		if (pick(2) && hend < b->n)
			b->p[hend + pick(b->n - hend)] = (uint8_t)next();
		else
			insert(b, b->n, &(uint8_t){ (uint8_t)next() }, 1);
		break;
	default:  /* a minus sign before a digit */
		for (k = 0; k < 64; k++) {
			at = hend > 8 ? 8 + pick(hend - 8) : pick(b->n);
			if (b->p[at] >= '0' && b->p[at] <= '9')
				break;
		}
		digit = '-';
		insert(b, at, &digit, 1);
		break;
	}
}

static void mutation_test(long count)
{
	static const char *const hdrs[] = {
		"{\"__metadata__\":{\"fx.format\":\"fx.test\",\"k\":\"v\"},"
		"\"a\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[0,16]},"
		"\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[16,22]},"
		"\"c\":{\"dtype\":\"U8\",\"shape\":[0,5],\"data_offsets\":[22,22]}}",
		"{}",
		"{\"d\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]},"
		"\"e\":{\"dtype\":\"I64\",\"shape\":[],\"data_offsets\":[8,16]},"
		"\"f\":{\"dtype\":\"F16\",\"shape\":[2,1,1],\"data_offsets\":[16,20]},"
		"\"g\":{\"dtype\":\"F8_E4M3\",\"shape\":[3],\"data_offsets\":[20,23]},"
		"\"h\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[23,24]}}",
		("{\"__metadata__\":{\"fx.crc32\":\"{\\\"x\\\":\\\"00000000\\\"}\"},"
		 "\"x\":{\"dtype\":\"I32\",\"shape\":[1,1,1,1,1,1,1,2],\"data_offsets\":[0,8]}}"),
	};
	static const size_t data[] = { 22, 0, 24, 8 };
	long i;

	for (i = 0; i < count; i++) {
		size_t s = (size_t)i % 4, k;
		struct buf b = make_seed(hdrs[s], data[s]);
		uint8_t *exact;

		for (k = 1 + pick(3); k-- > 0; )
			mutate(&b);
		/* an exactly sized copy so a sanitizer sees any over-read */
		exact = malloc(b.n ? b.n : 1);
		memcpy(exact, b.p, b.n);
		LLVMFuzzerTestOneInput(exact, b.n);
		free(exact);
		free(b.p);
	}
	for (i = 0; i < 4; i++) {
		struct buf b = make_seed(hdrs[i], data[i]);
		LLVMFuzzerTestOneInput(b.p, b.n);
		free(b.p);
	}
}

int main(int argc, char **argv)
{
	long n;
	int fail = 0;

	printf("1..2\n");
	n = argc > 1 ? run_corpus(argv[1]) : -1;
	if (n < 0) {
		printf("not ok 1 - corpus %s unreadable\n", argc > 1 ? argv[1] : "(none given)");
		fail = 1;
	} else {
		printf("ok 1 - corpus %ld files\n", n);
	}
	mutation_test(MUTATIONS);
	printf("ok 2 - %d mutations, no crash\n", MUTATIONS);
	return fail;
}
