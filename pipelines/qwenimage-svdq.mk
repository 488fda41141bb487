# Qwen-Image -> Nunchaku SVDQuant: fx-calib -> fx-lowrank -> fx-quant ->
# fx-pack -> fx-meta -> fx-verify.
#
#   make -f pipelines/qwenimage-svdq.mk MODEL=~/Qwen-Image COND=cond.safetensors \
#        [OUT=out] [PRECISION=fp4|int4] [RANK=32] [PROMPTS=] [STEPS=] [RES=WxH] \
#        [CFG=4.0] [SAMPLES=] [GRID=] [BLOCKS=A-B] [NAME=qwen-image] [GPTQ=1 [HESSIAN_MEM=16G]]
#   make -f pipelines/qwenimage-svdq.mk ... compare [EVAL_STEPS=4] [EVAL_RES=256x256] [EVAL_SEED=1000]
#        fx-eval of the checkpoint (and, with GPTQ=1, the same branch without
#        GPTQ) against plain RTN: OUT/compare-<precision>_r<rank>-<name>.txt
#
# GPTQ is off by default here (flux-svdq.mk has it on): a Qwen-Image block's
# XᵀX sums take ~3 GiB in f64 (two K=12288 MLP down-projections), so
# fx-calib --hessian reruns the sampling once per block or two at the
# default 4G budget (see fx-calib(1), Passes); give it memory with
# HESSIAN_MEM or run block ranges (BLOCKS) as separate jobs.
#
# COND holds prompt_embeds (P,L,3584), prompt_embeds_mask (P,L) and, for the
# pipeline's true classifier-free guidance, negative_prompt_embeds and its
# mask: fx-calib(1) CONDITIONING shows the few lines of Python (the
# diffusers QwenImagePipeline's own text encoder) that write it; fx has no
# Qwen2.5-VL encoder yet.
#
# Writes OUT/calib.safetensors, OUT/branch-r<rank>-<precision>.safetensors,
# OUT/quant-r<rank>-<precision>.safetensors, the checkpoint
# OUT/svdq-<precision>_r<rank>-<name>.safetensors (the single file Nunchaku's
# NunchakuQwenImageTransformer2DModel and ComfyUI-nunchaku load) and its
# audit OUT/svdq-<precision>_r<rank>-<name>.audit.txt. Rerun after any
# change: stages whose inputs did not change print "up to date".
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

MODEL ?= $(error MODEL=<Qwen-Image pipeline or transformer folder, or file> is required)
COND  ?= $(error COND=<conditioning .safetensors> is required (see fx-calib(1)))
RANK  ?= 32
GPTQ  ?= 0
NAME  ?= $(call model_name,$(MODEL))
PROMPTS ?=
STEPS ?=
RES   ?=
CFG   ?=
SAMPLES ?=
GRID  ?=

CALIB  := $(OUT)/calib.safetensors
BRANCH := $(OUT)/branch-r$(RANK)-$(PRECISION).safetensors
QUANT  := $(OUT)/quant-r$(RANK)-$(PRECISION).safetensors
FINAL  := $(OUT)/svdq-$(PRECISION)_r$(RANK)-$(NAME).safetensors
AUDIT  := $(FINAL:.safetensors=.audit.txt)

HESSIAN_MEM ?=
ifeq ($(filter 0 1,$(GPTQ)),)
$(error GPTQ must be 0 or 1, not '$(GPTQ)')
endif

CALIB_OPTS = $(if $(PROMPTS),--prompts $(PROMPTS)) $(if $(STEPS),--steps $(STEPS)) \
	$(if $(RES),--res $(RES)) $(if $(CFG),--guidance $(CFG)) $(if $(SAMPLES),--samples $(SAMPLES)) \
	$(if $(filter 1,$(GPTQ)),--hessian $(if $(HESSIAN_MEM),--hessian-mem $(HESSIAN_MEM)))

.PHONY: all calib lowrank quant pack meta verify
all: verify

calib: | $(OUT)
	$(FX)/fx-calib $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --cond $(COND) $(CALIB_OPTS) -o $(CALIB)

lowrank: calib
	$(FX)/fx-lowrank $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --calib $(CALIB) --rank $(RANK) \
		--precision $(PRECISION) $(if $(GRID),--alpha-grid $(GRID)) $(BLOCKS_OPT) -o $(BRANCH)

quant: lowrank
	$(FX)/fx-quant $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --branch $(BRANCH) --precision $(PRECISION) \
		$(if $(filter 1,$(GPTQ)),--calib $(CALIB) --gptq) $(BLOCKS_OPT) -o $(QUANT)

pack: quant
	$(FX)/fx-pack $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --quant $(QUANT) --branch $(BRANCH) -o $(FINAL)

meta: pack
	$(FX)/fx-meta $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) $(FINAL)

verify: meta
	$(FX)/fx-verify $(VERIFYFLAGS) $(FINAL) > $(AUDIT); st=$$?; tail -n 3 $(AUDIT); exit $$st

include $(PIPELINES_DIR)compare.mk
