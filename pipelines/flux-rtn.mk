# FLUX.1 (or any family fx reads: Qwen-Image) -> plain round-to-nearest 4-bit Nunchaku checkpoint (no calibration,
# no smoothing, rank 0): the baseline SVDQuant is measured against.
#
#   make -f pipelines/flux-rtn.mk MODEL=~/FLUX.1-dev [OUT=out] [PRECISION=fp4|int4] [LORA=...]
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

MODEL ?= $(error MODEL=<FLUX or Qwen-Image model folder or file> is required)
NAME  ?= $(call model_name,$(MODEL))

QUANT := $(OUT)/quant-rtn-$(PRECISION).safetensors
FINAL := $(OUT)/rtn-$(PRECISION)-$(NAME).safetensors
AUDIT := $(FINAL:.safetensors=.audit.txt)

.PHONY: all quant pack meta verify
all: verify

quant: | $(OUT)
	$(FX)/fx-quant $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --precision $(PRECISION) -o $(QUANT)

pack: quant
	$(FX)/fx-pack $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --quant $(QUANT) -o $(FINAL)

meta: pack
	$(FX)/fx-meta $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) $(FINAL)

verify: meta
	$(FX)/fx-verify $(VERIFYFLAGS) $(FINAL) > $(AUDIT); st=$$?; tail -n 3 $(AUDIT); exit $$st
