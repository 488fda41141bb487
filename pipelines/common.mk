# Shared by the pipelines: tool location and naming. Every stage target is
# phony: the tools decide from content hashes whether there is work to do,
# so reruns stay cheap whatever make's timestamps say.
.DEFAULT_GOAL := all
PIPELINES_DIR := $(dir $(lastword $(MAKEFILE_LIST)))
FX      ?= $(abspath $(PIPELINES_DIR)../build/bin)
OUT     ?= out
PRECISION ?= fp4
FXFLAGS ?=
VERIFYFLAGS ?=
BLOCKS  ?=

BLOCKS_OPT = $(if $(BLOCKS),--blocks $(BLOCKS))
# LoRAs merged into the model by every stage that reads it, in order:
# LORA="a.safetensors:0.8 b.safetensors" (SCALE defaults to 1)
LORA    ?=
LORA_OPTS = $(foreach l,$(LORA),--lora $(l))
lc = $(shell printf '%s' '$(1)' | tr 'A-Z' 'a-z')
# the checkpoint's name from MODEL in any form (model-name.sh)
model_name = $(shell sh $(PIPELINES_DIR)model-name.sh '$(1)')

ifeq ($(filter fp4 int4,$(PRECISION)),)
$(error PRECISION must be fp4 or int4, not '$(PRECISION)')
endif

$(OUT):
	@mkdir -p $@
