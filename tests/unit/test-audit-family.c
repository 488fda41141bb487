/* The audit and the loader metadata ask the model's family: each family's
 * file tables (struct fx_family_file) agree with the groups and unquantized
 * tensors its model declares; a packed file's family from fx.model or its
 * names (fx_meta_family); an fx.branch file of Qwen-Image audited by its
 * family's modules. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <fcntl.h>
#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "fx-audit-branch.h"
#include "fx-audit.h"
#include "fx-families.h"
#include "fx-family.h"
#include "fx-file.h"
#include "fx-log.h"
#include "fx-meta.h"
#include "fx-model.h"
#include "fx-st.h"
#include "fx-synth.h"

static char tmpdir[256];

static char *tpath(const char *name)
{
	static char buf[8][512];
	static int k;

	k = (k + 1) % 8;
	snprintf(buf[k], sizeof(buf[k]), "%s/%s", tmpdir, name);
	return buf[k];
}

static int rm_cb(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
	(void)sb; (void)flag; (void)ftw;
	return remove(p);
}

/* ---- a small writer: tensors of one dtype family, filled by role ------- */

struct wt {
	char name[160];
	enum fx_dtype dt;
	int ndim;
	int64_t shape[2];
};

struct wfile {
	struct wt t[128];
	size_t n;
	const char *meta[8][2];
	size_t nmeta;
};

static void wadd(struct wfile *f, const char *name, enum fx_dtype dt, int ndim, int64_t d0, int64_t d1)
{
	struct wt *t = &f->t[f->n++];

	assert_true(f->n <= FX_ARRAY_SIZE(f->t));
	snprintf(t->name, sizeof(t->name), "%s", name);
	t->dt = dt;
	t->ndim = ndim;
	t->shape[0] = d0;
	t->shape[1] = d1;
}

/* Values a branch audit accepts: smooth and stats > 0 (ERR_FINAL below
 * ERR_RTN), down/up nonzero, splits 0, N/m, ..., N. */
static void fill(const struct wt *t, void *buf, size_t nbytes)
{
	size_t i, n = nbytes / fx_dtype_size(t->dt);

	if (t->dt == FX_F32) {
		float *v = buf;

		for (i = 0; i < n; i++)
			v[i] = 0.5f + (float)(i % 7) * 0.25f;
		if (strstr(t->name, ".stats")) {
			v[FX_BRANCH_STAT_ERR_RTN] = 0.2f;
			v[FX_BRANCH_STAT_ERR_FINAL] = 0.1f;
		}
	} else if (t->dt == FX_I64) {
		int64_t *v = buf, step = t->shape[1];   /* the group's rows / members */

		for (i = 0; i < n; i++)
			v[i] = (int64_t)i * step;
	} else {
		memset(buf, 0x11, nbytes);
	}
}

static void wfile_write(const struct wfile *f, const char *path)
{
	struct fx_err err = {0};
	struct fx_stw *w = NULL;
	size_t i;
	int fd;

	assert_int_equal(fx_stw_new(&w, FX_STW_CRC32, &err), 0);
	for (i = 0; i < f->nmeta; i++)
		assert_int_equal(fx_stw_meta(w, f->meta[i][0], f->meta[i][1], &err), 0);
	for (i = 0; i < f->n; i++)
		assert_int_equal(fx_stw_add(w, f->t[i].name, f->t[i].dt, f->t[i].ndim, f->t[i].shape,
					    &err), 0);
	fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	assert_true(fd >= 0);
	assert_int_equal(fx_stw_begin(w, fd, &err), 0);
	for (i = 0; i < f->n; i++) {
		const struct wt *t = &f->t[i];
		size_t nb = (size_t)t->shape[0] * (t->ndim > 1 ? (size_t)t->shape[1] : 1) *
			    fx_dtype_size(t->dt);
		void *b = calloc(1, nb ? nb : 1);

		/* splits: the step rides in shape[1] of the spec, written 1-D */
		fill(t, b, nb);
		assert_int_equal(fx_stw_write(w, t->name, b, nb, &err), 0);
		free(b);
	}
	assert_int_equal(fx_stw_finish(w, &err), 0);
	close(fd);
	fx_stw_free(w);
}

/* ---- the family tables against the model's own groups ------------------ */

static void tables_agree(const struct fx_family *fam)
{
	const struct fx_family_file *ff = fam->file;
	struct fx_synth_opts o;
	struct fx_model *m = NULL;
	const struct fx_model_config *c;
	struct fx_err err = {0};
	char path[512], buf[160];
	size_t i, g = 0, j, found;
	int kind, b;

	fx_synth_opts_init(&o);
	o.family = fam;
	o.txt_dim = 256;
	o.force = true;
	if (!fam->block_prefix[1])   /* one kind of block */
		o.num_single = 0;
	snprintf(path, sizeof(path), "%s", tpath(fam->name));
	if (fx_synth_model(path, &o, &err) < 0)
		print_message("# %s\n", err.msg);
	assert_int_equal(err.code, 0);
	assert_int_equal(fx_model_open(&m, path, &err), 0);
	c = fx_model_config(m);
	assert_ptr_equal(c->family, fam);
	/* the modules, in the order of the groups */
	for (kind = 0; kind < 2; kind++)
		for (b = 0; b < (kind ? c->num_single : c->num_double); b++)
			for (j = 0; j < ff->nmodules[kind]; j++, g++) {
				const struct fx_family_module *fm = &ff->modules[kind][j];
				const struct fx_group *gr = fx_model_group(m, g);
				int64_t D = c->hidden, F = c->mlp_hidden;

				assert_non_null(gr);
				assert_string_equal(gr->fused, fm->name);
				assert_int_equal(gr->single, kind == 1);
				assert_int_equal(gr->block, b);
				assert_int_equal(gr->kind == FX_GROUP_ADALN, fm->adaln);
				assert_int_equal(gr->n, fm->nd * D + fm->nf * F);
				assert_int_equal(gr->k, fm->kd * D + fm->kf * F);
				assert_int_equal(gr->gelu_input, fm->gelu);
				assert_int_equal(gr->nmembers, fm->members);
			}
	assert_int_equal(g, fx_model_ngroups(m));
	/* every top-level plain tensor of the tables is the model's (packed names) */
	for (i = 0; i < ff->nplain; i++) {
		for (found = 0, j = 0; j < fx_model_nplain(m); j++)
			found += !strcmp(fam->packed_plain_name(fx_model_plain_name(m, j), buf, sizeof(buf)),
					 ff->plain[i]);
		assert_int_equal(found, 1);
	}
	/* and every block norm */
	for (kind = 0; kind < 2; kind++)
		for (i = 0; i < ff->nnorms[kind]; i++) {
			snprintf(path, sizeof(path), "%s.0.%s", fam->block_prefix[kind], ff->norms[kind][i]);
			for (found = 0, j = 0; j < fx_model_nplain(m); j++)
				found += !strcmp(fam->packed_plain_name(fx_model_plain_name(m, j), buf,
									sizeof(buf)), path);
			assert_int_equal(found, 1);
		}
	fx_model_close(m);
}

static void test_tables_agree(void **state)
{
	size_t i;

	(void)state;
	for (i = 0; fx_families[i]; i++) {
		assert_non_null(fx_families[i]->file);
		tables_agree(fx_families[i]);
	}
}

/* ---- a packed file's family ------------------------------------------- */

static const struct fx_family *family_of(struct wfile *f, int want_ret, struct fx_err *err)
{
	const struct fx_family *fam = NULL;
	struct fx_st *st = NULL;

	wfile_write(f, tpath("fam.safetensors"));
	assert_int_equal(fx_st_open(&st, tpath("fam.safetensors"), err), 0);
	assert_int_equal(fx_meta_family(st, &fam, err), want_ret);
	fx_st_close(st);
	return fam;
}

static void test_family_of_file(void **state)
{
	const struct fx_family *flux = fx_family_find("flux"), *qwen = fx_family_find("qwenimage");
	struct fx_err err = {0};
	struct wfile f;

	(void)state;
	/* fx.model decides: its family, FLUX when it names none */
	memset(&f, 0, sizeof(f));
	wadd(&f, "transformer_blocks.0.qkv_proj.qweight", FX_I8, 2, 128, 64);
	f.meta[f.nmeta][0] = "fx.model";
	f.meta[f.nmeta++][1] = "{\"family\":\"qwenimage\",\"num_double\":1,\"num_single\":0,"
			       "\"hidden\":128,\"mlp_hidden\":512}";
	assert_ptr_equal(family_of(&f, 0, &err), qwen);
	f.meta[0][1] = "{\"num_double\":1,\"num_single\":0,\"hidden\":128,\"mlp_hidden\":512}";
	assert_ptr_equal(family_of(&f, 0, &err), flux);
	f.meta[0][1] = "{\"family\":\"zimage\",\"num_double\":1}";
	assert_ptr_equal(family_of(&f, FX_E_FORMAT, &err), flux);
	assert_non_null(strstr(err.msg, "'zimage'"));
	/* another tool's file: the names */
	f.nmeta = 0;
	assert_ptr_equal(family_of(&f, 0, &err), flux);
	f.n = 0;
	wadd(&f, "transformer_blocks.0.attn.to_qkv.qweight", FX_I8, 2, 128, 64);
	wadd(&f, "transformer_blocks.0.attn.to_qkv.proj_down", FX_BF16, 2, 128, 16);
	assert_ptr_equal(family_of(&f, 0, &err), qwen);
	f.n = 0;
	wadd(&f, "img_in.weight", FX_BF16, 2, 128, 64);
	assert_ptr_equal(family_of(&f, 0, &err), flux);   /* nothing tells: the default */
}

/* ---- a Qwen-Image fx.branch file --------------------------------------- */

static void qwen_branch(struct wfile *f, const char *skip, const char *model)
{
	const struct fx_family_file *ff = fx_family_find("qwenimage")->file;
	const int64_t D = 128, F = 512, r = 16;
	char name[160];
	size_t j;
	int b;

	memset(f, 0, sizeof(*f));
	f->meta[f->nmeta][0] = "fx.model";
	f->meta[f->nmeta++][1] = model;
	f->meta[f->nmeta][0] = "fx.params";
	f->meta[f->nmeta++][1] = "{\"rank\":16}";
	for (b = 0; b < 2; b++)
		for (j = 0; j < ff->nmodules[0]; j++) {
			const struct fx_family_module *m = &ff->modules[0][j];
			int64_t n = m->nd * D + m->nf * F, k = m->kd * D + m->kf * F;

			snprintf(name, sizeof(name), "transformer_blocks.%d.%s", b, m->name);
			if (m->adaln || (skip && !strcmp(name, skip)))
				continue;
			snprintf(name, sizeof(name), "transformer_blocks.%d.%s.smooth", b, m->name);
			wadd(f, name, FX_F32, 1, k, 0);
			snprintf(name, sizeof(name), "transformer_blocks.%d.%s.down", b, m->name);
			wadd(f, name, FX_F32, 2, r, k);
			snprintf(name, sizeof(name), "transformer_blocks.%d.%s.up", b, m->name);
			wadd(f, name, FX_F32, 2, n, r);
			snprintf(name, sizeof(name), "transformer_blocks.%d.%s.splits", b, m->name);
			wadd(f, name, FX_I64, 1, m->members + 1, n / m->members);
			snprintf(name, sizeof(name), "transformer_blocks.%d.%s.stats", b, m->name);
			wadd(f, name, FX_F32, 1, FX_BRANCH_STAT_COUNT, 0);
		}
}

static size_t lines_with(const struct fx_audit *a, const char *what)
{
	size_t i, n = 0;

	for (i = 0; i < a->lines_n; i++)
		n += strstr(a->lines[i], what) != NULL;
	return n;
}

static void branch_audit(struct wfile *f, struct fx_audit *a)
{
	struct fx_err err = {0};
	struct fx_st *st = NULL;
	size_t i;

	wfile_write(f, tpath("b.safetensors"));
	assert_int_equal(fx_st_open(&st, tpath("b.safetensors"), &err), 0);
	fx_audit_init(a);
	fx_audit_branch(a, st);
	for (i = 0; i < a->lines_n; i++)
		print_message("# %s\n", a->lines[i]);
	for (i = 0; i < a->nfind; i++)
		print_message("# finding %s %s: %s\n", a->find[i].check, a->find[i].where, a->find[i].msg);
	fx_st_close(st);
}

#define QWEN_MODEL "{\"family\":\"qwenimage\",\"num_double\":2,\"num_single\":0,\"hidden\":128," \
		   "\"mlp_hidden\":512}"

static void test_branch_qwen(void **state)
{
	struct fx_audit a;
	struct wfile *f = calloc(1, sizeof(*f));

	(void)state;
	qwen_branch(f, NULL, QWEN_MODEL);
	branch_audit(f, &a);
	assert_int_equal(a.nfind, 0);
	assert_int_equal(lines_with(&a, "[OK] "), 16);
	assert_int_equal(lines_with(&a, "[OK] attn.to_qkv (block 1): down=[16,128] up=[384,16]"), 1);
	assert_int_equal(lines_with(&a, "[OK] txt_mlp.net.2 (block 0): down=[16,512] up=[128,16]"), 1);
	assert_int_equal(lines_with(&a, "16 of 16 layers complete, rank 16, blocks 0-1"), 1);
	fx_audit_release(&a);

	/* a module missing in block 1, a FLUX fused name */
	qwen_branch(f, "transformer_blocks.1.attn.to_add_out", QWEN_MODEL);
	wadd(f, "transformer_blocks.0.qkv_proj.smooth", FX_F32, 1, 128, 0);
	branch_audit(f, &a);
	assert_int_equal(lines_with(&a, "[MISSING] attn.to_add_out (block 1): smooth, down, up, splits, stats"), 1);
	assert_int_equal(lines_with(&a, "15 of 16 layers complete"), 1);
	assert_int_equal(fx_audit_failures(&a, false), 2);
	assert_string_equal(a.find[1].where, "transformer_blocks.0.qkv_proj.smooth");
	assert_string_equal(a.find[1].check, "unexpected");
	fx_audit_release(&a);

	/* the same tensors under a FLUX fx.model: none of FLUX's groups is there */
	qwen_branch(f, NULL, "{\"num_double\":2,\"num_single\":0,\"hidden\":128,\"mlp_hidden\":512}");
	branch_audit(f, &a);
	assert_int_equal(lines_with(&a, "[MISSING] qkv_proj (block 0)"), 1);
	assert_int_equal(lines_with(&a, "0 of 16 layers complete"), 1);
	fx_audit_release(&a);
	free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_tables_agree),
		cmocka_unit_test(test_family_of_file),
		cmocka_unit_test(test_branch_qwen),
	};
	int ret;

	fx_log_set_level(FX_LOG_WARN);
	snprintf(tmpdir, sizeof(tmpdir), "/tmp/fx-test-audit-family.XXXXXX");
	if (!mkdtemp(tmpdir))
		return 1;
	ret = cmocka_run_group_tests(tests, NULL, NULL);
	nftw(tmpdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
	return ret;
}
