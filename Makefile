# fx: plain GNU make. `make` builds every tool and runs the built-in example;
# `make check` runs the tests. CUDA=1, SANITIZE=1, DEVELOPER=1, PREFIX=...
.DEFAULT_GOAL := all
SHELL := /bin/bash

CC      ?= cc
NVCC    ?= nvcc
PREFIX  ?= /usr/local
CUDA    ?= 0
SANITIZE ?= 0

CONFIG := build
ifeq ($(SANITIZE),1)
CONFIG := $(CONFIG)/sanitize
endif
ifeq ($(CUDA),1)
CONFIG := $(CONFIG)/cuda
endif
ifeq ($(CONFIG),build)
B ?= build
else
B ?= $(CONFIG)
endif
BIN := $(B)/bin

# Library folders, lowest first: each includes only folders before it
# (a family in tools/lib/<name> includes text/ and formats/; tools/lib the
# families; audit/ and stages/ all of them).
LIB_DIRS := common kernels kernels/ref kernels/cpu formats tools/lib/text tools/lib/dit \
            tools/lib/flux tools/lib/qwenimage tools/lib tools/lib/audit tools/lib/stages
CPPFLAGS += -D_GNU_SOURCE $(addprefix -I,$(filter-out kernels/ref kernels/cpu,$(LIB_DIRS))) -MMD -MP
CFLAGS   ?= -O2 -g
CFLAGS   += -std=c11 -Wall -Wextra -fopenmp
LDLIBS   += -llapacke -lopenblas -ljansson -lcrypto -lisal -lxxhash -lz -lm
LDFLAGS  += -fopenmp

ifeq ($(DEVELOPER),1)
CFLAGS += -Werror -Wshadow -Wstrict-prototypes -Wmissing-prototypes -Wvla \
          -Wpointer-arith -Wformat=2 -Wundef -Wwrite-strings -fno-common
endif
ifeq ($(SANITIZE),1)
CFLAGS  += -fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer
LDFLAGS += -fsanitize=address,undefined
endif

LIB_SRC := $(foreach d,$(LIB_DIRS),$(wildcard $(d)/*.c))
CUDA_SRC := $(wildcard kernels/cuda/*.cu)
ifeq ($(CUDA),1)
LIB_SRC := $(filter-out kernels/cuda-stub.c,$(LIB_SRC))
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(shell command -v $(NVCC)))
CPPFLAGS += -DFX_CUDA=1
LDLIBS   += -L$(CUDA_HOME)/lib64 -lcusolver -lcublas -lcudart -lstdc++
NVCCFLAGS ?= -O2 -std=c++17 -Icommon -Iformats -Ikernels -DFX_CUDA=1 \
	--compiler-options -fPIC,-Wall -Wno-deprecated-gpu-targets \
	-gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90
else
CUDA_SRC :=
endif
LIB_OBJ := $(LIB_SRC:%.c=$(B)/obj/%.o) $(CUDA_SRC:%.cu=$(B)/obj/%.cu.o)
LIB     := $(B)/libfx.a

TOOL_SRC := $(wildcard tools/fx-*.c)
TOOLS    := $(TOOL_SRC:tools/%.c=$(BIN)/%)
TOOL_HELPERS := $(filter-out $(TOOL_SRC),$(wildcard tools/*.c))
TOOL_HOBJ := $(TOOL_HELPERS:%.c=$(B)/obj/%.o)

UNIT_SRC := $(wildcard tests/unit/test-*.c)
UNITS    := $(UNIT_SRC:tests/unit/%.c=$(B)/tests/%)
UNIT_HELPERS := $(filter-out $(UNIT_SRC),$(wildcard tests/unit/*.c))
UNIT_HOBJ := $(UNIT_HELPERS:%.c=$(B)/obj/%.o)
GPU_SRC  := $(wildcard tests/gpu/test-*.c)
UNITS    += $(GPU_SRC:tests/gpu/%.c=$(B)/tests/%)
FUZZ_SRC := $(wildcard tests/fuzz/fuzz-*.c)
FUZZ_REPLAY := $(FUZZ_SRC:tests/fuzz/%.c=$(B)/tests/%-replay)

.SECONDARY:
.PHONY: all tools example check check-build check-unit check-cli bench install clean fuzz man-lint deps deps-test

# `make` and `make check` first install what a fresh machine lacks (.ci/deps:
# the one package list; apt-get as root or with password-less sudo, else the
# line to run). FX_DEPS=0 skips the check.
FX_DEPS ?= 1
deps:
ifneq ($(FX_DEPS),0)
	@bash .ci/deps build
endif
deps-test:
ifneq ($(FX_DEPS),0)
	@bash .ci/deps test
endif

all: deps
	@$(MAKE) --no-print-directory tools
	@$(MAKE) --no-print-directory example

tools: $(TOOLS)

$(B)/obj/%.o: %.c
	@mkdir -p $(dir $@)
	$(CC) $(CPPFLAGS) $(CFLAGS) -c -o $@ $<

$(B)/obj/%.cu.o: %.cu
	@mkdir -p $(dir $@)
	$(NVCC) $(NVCCFLAGS) -c -o $@ $<

$(LIB): $(LIB_OBJ)
	@mkdir -p $(dir $@)
	rm -f $@ && ar rcs $@ $^

$(BIN)/%: $(B)/obj/tools/%.o $(TOOL_HOBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(TOOL_HOBJ) $(LIB) $(LDLIBS)

$(B)/tests/test-%: $(B)/obj/tests/unit/test-%.o $(UNIT_HOBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(UNIT_HOBJ) $(LIB) -lcmocka $(LDLIBS)

# test-clones: kernels/cpu/ops.c once more without target clones, its global
# symbols renamed plain_*, beside the library's copy
$(B)/obj/plain/ops.o: kernels/cpu/ops.c
	@mkdir -p $(dir $@)
	$(CC) $(filter-out -MMD -MP,$(CPPFLAGS)) $(CFLAGS) -DFX_NO_CLONES -c -o $@.tmp $<
	nm -g --defined-only $@.tmp | awk '{ print $$3, "plain_" $$3 }' >$@.syms
	objcopy --redefine-syms=$@.syms $@.tmp $@
	rm -f $@.tmp $@.syms

$(B)/tests/test-clones: $(B)/obj/tests/unit/test-clones.o $(B)/obj/plain/ops.o $(UNIT_HOBJ) $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(B)/obj/plain/ops.o $(UNIT_HOBJ) $(LIB) -lcmocka $(LDLIBS)

# GPU tests: CUDA against the CPU; they say "skip" and pass without a device
$(B)/tests/test-gpu-%: $(B)/obj/tests/gpu/test-gpu-%.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(B)/tests/fuzz-%-replay: $(B)/obj/tests/fuzz/fuzz-%.o $(B)/obj/tests/fuzz/replay.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $^ $(LDLIBS)

example: tools
	+@FX_BIN=$(abspath $(BIN)) bash pipelines/example.sh $(B)/example

check: deps-test
	@$(MAKE) --no-print-directory check-build
	@FX_BIN=$(abspath $(BIN)) FX_TESTS=$(abspath $(B)/tests) bash tests/run.sh

check-build: tools $(UNITS) $(FUZZ_REPLAY)

check-unit: $(UNITS)
	@FX_BIN=$(abspath $(BIN)) FX_TESTS=$(abspath $(B)/tests) bash tests/run.sh unit

check-cli: tools
	@FX_BIN=$(abspath $(BIN)) FX_TESTS=$(abspath $(B)/tests) bash tests/run.sh cli

bench: tools $(B)/bench/fx-forward-bench $(B)/bench/fx-gptq-bench
	@FX_BIN=$(abspath $(BIN)) FX_FORWARD_BENCH=$(abspath $(B)/bench/fx-forward-bench) \
	  FX_GPTQ_BENCH=$(abspath $(B)/bench/fx-gptq-bench) bash bench/run.sh

$(B)/bench/fx-gptq-bench: $(B)/obj/bench/gptq.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

$(B)/bench/fx-forward-bench: $(B)/obj/bench/forward.o $(LIB)
	@mkdir -p $(dir $@)
	$(CC) $(LDFLAGS) -o $@ $< $(LIB) $(LDLIBS)

# libFuzzer builds (clang); `make check` replays the corpus with a plain driver.
fuzz: $(LIB_SRC) $(FUZZ_SRC)
	@mkdir -p $(B)/fuzz
	for f in $(FUZZ_SRC); do \
	  clang -g -O1 -fsanitize=fuzzer,address,undefined $(CPPFLAGS) -std=c11 -fopenmp \
	    -o $(B)/fuzz/$$(basename $$f .c) $$f $(LIB_SRC) $(LDLIBS) || exit 1; done

install: tools
	install -d $(DESTDIR)$(PREFIX)/bin $(DESTDIR)$(PREFIX)/share/man/man1 \
	  $(DESTDIR)$(PREFIX)/share/man/man5 $(DESTDIR)$(PREFIX)/share/man/man7
	install -m 755 $(TOOLS) $(DESTDIR)$(PREFIX)/bin/
	for m in man/*.1; do [ -e "$$m" ] && install -m 644 $$m $(DESTDIR)$(PREFIX)/share/man/man1/; done; true
	for m in man/*.5; do [ -e "$$m" ] && install -m 644 $$m $(DESTDIR)$(PREFIX)/share/man/man5/; done; true
	for m in man/*.7; do [ -e "$$m" ] && install -m 644 $$m $(DESTDIR)$(PREFIX)/share/man/man7/; done; true

man-lint:
	mandoc -Tlint -W warning man/* 

clean:
	rm -rf build

-include $(shell find $(B)/obj -name '*.d' 2>/dev/null)
