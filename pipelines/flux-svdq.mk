# FLUX.1 -> Nunchaku SVDQuant: fx-calib -> fx-lowrank -> fx-quant -> fx-pack
# -> fx-meta -> fx-verify.
#
#   make -f pipelines/flux-svdq.mk MODEL=~/FLUX.1-dev COND=cond.safetensors \
#        [OUT=out] [PRECISION=fp4|int4] [RANK=32] [PROMPTS=] [STEPS=] [RES=WxH] \
#        [SAMPLES=] [GRID=] [BLOCKS=A-B] [NAME=flux.1-dev] [LORA="a.safetensors:0.8 b.safetensors"]
#        [GPTQ=0]   (on by default: fx-calib --hessian, fx-lowrank --for-gptq,
#                   fx-quant --calib --gptq; GPTQ=0 for round-to-nearest codes and
#                   a calibration without XᵀX)
#        [SCALE_SEARCH=1]  (fx-quant --search: group scales searched on the
#                   calibration rows; +0.18 dB layer SNR with GPTQ on fx-synth models,
#                   about 4 min more for FLUX.1-dev on 2 cores: fx-quant(1) NUMERICS)
#        [HESSIAN_MEM=16G]  (fx-calib --hessian-mem: XᵀX memory per sampling pass,
#                   default 4G; FLUX.1-dev needs 108.7 GiB in all, so 30 passes
#                   of the sampling at 4G, 7 at 16G, 2 at 64G)
#        [PROMPTS_FILE=pipelines/prompts/calib-128.txt [T5=] [CLIP=] [MAX_LEN=]]  (instead of COND)
#
#   make -f pipelines/flux-svdq.mk ... compare [EVAL_STEPS=4] [EVAL_RES=256x256] [EVAL_SEED=1000]
#        samples with the checkpoint, the same branch with round-to-nearest codes
#        (SVDQ without GPTQ) and plain RTN (no smoothing, no branch) against the
#        source weights (fx-eval) and writes OUT/compare-<precision>_r<rank>-<name>.txt;
#        EVAL_SEED differs from the calibration's seeds so the rows are held out
#
# Writes OUT/calib.safetensors, OUT/branch-r<rank>-<precision>.safetensors,
# OUT/quant-r<rank>-<precision>.safetensors, the checkpoint
# OUT/svdq-<precision>_r<rank>-<name>.safetensors and its audit
# OUT/svdq-<precision>_r<rank>-<name>.audit.txt. Rerun after any change:
# stages whose inputs did not change print "up to date".
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

MODEL ?= $(error MODEL=<FLUX model folder or file> is required)
# conditioning: a ready file (COND=...) or prompts encoded here with fx-encode
PROMPTS_FILE ?=
T5   ?= $(MODEL)
CLIP ?= $(MODEL)
MAX_LEN ?=
ifneq ($(PROMPTS_FILE),)
COND := $(OUT)/cond.safetensors
endif
COND  ?= $(error COND=<conditioning .safetensors> or PROMPTS_FILE=<prompts.txt> is required)
GPTQ  ?= 1
PROMPTS ?=
STEPS ?=
RES   ?=
SAMPLES ?=

CALIB_OPTS = $(if $(PROMPTS),--prompts $(PROMPTS)) $(if $(STEPS),--steps $(STEPS)) \
	$(if $(RES),--res $(RES)) $(if $(SAMPLES),--samples $(SAMPLES)) \
	$(if $(filter 1,$(GPTQ)),--hessian $(if $(HESSIAN_MEM),--hessian-mem $(HESSIAN_MEM)))

.PHONY: encode calib

encode: | $(OUT)
ifneq ($(PROMPTS_FILE),)
	$(FX)/fx-encode $(FXFLAGS) --t5 $(T5) --clip $(CLIP) --prompts $(PROMPTS_FILE) \
		$(if $(MAX_LEN),--max-len $(MAX_LEN)) $(if $(DEVICE),--device $(DEVICE)) -o $(COND)
endif

calib: encode | $(OUT)
	$(FX)/fx-calib $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --cond $(COND) $(CALIB_OPTS) -o $(CALIB)

include $(PIPELINES_DIR)svdq.mk
