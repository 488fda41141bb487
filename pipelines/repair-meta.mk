# Repair the loader metadata of an existing Nunchaku checkpoint (one written
# by another tool that loaders reject for missing metadata), then audit it.
#
#   make -f pipelines/repair-meta.mk FILE=svdq-int4-flux.1-dev.safetensors [MODEL=~/FLUX.1-dev]
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

FILE  ?= $(error FILE=<checkpoint .safetensors> is required)
MODEL ?=

.PHONY: all
all:
	$(FX)/fx-meta --check $(FILE) || $(FX)/fx-meta $(FXFLAGS) $(if $(MODEL),--model $(MODEL)) $(FILE)
	$(FX)/fx-verify $(FILE) | tail -n 3
