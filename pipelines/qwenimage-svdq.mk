# Qwen-Image -> Nunchaku SVDQuant: fx-calib -> fx-lowrank -> fx-quant ->
# fx-pack -> fx-meta -> fx-verify.
#
#   make -f pipelines/qwenimage-svdq.mk MODEL=~/Qwen-Image COND=cond.safetensors \
#        [OUT=out] [PRECISION=fp4|int4] [RANK=32] [PROMPTS=] [STEPS=] [RES=WxH] \
#        [CFG=4.0] [SAMPLES=] [GRID=] [BLOCKS=A-B] [NAME=qwen-image] [GPTQ=1 [HESSIAN_MEM=16G]]
#        [SCALE_SEARCH=1]  (fx-quant --search: group scales searched on the
#                   calibration rows; +0.18 dB layer SNR with GPTQ on fx-synth models,
#                   about 4 min more for FLUX.1-dev on 2 cores: fx-quant(1) NUMERICS)
#   make -f pipelines/qwenimage-svdq.mk ... compare [EVAL_STEPS=4] [EVAL_RES=256x256] [EVAL_SEED=1000]
#        fx-eval of the checkpoint (and, with GPTQ=1, the same branch without
#        GPTQ) against plain RTN: OUT/compare-<precision>_r<rank>-<name>.txt
#
# GPTQ=1 adds fx-calib --hessian, fx-lowrank --for-gptq and fx-quant --gptq.
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
GPTQ  ?= 0
PROMPTS ?=
STEPS ?=
RES   ?=
CFG   ?=
SAMPLES ?=

CALIB_OPTS = $(if $(PROMPTS),--prompts $(PROMPTS)) $(if $(STEPS),--steps $(STEPS)) \
	$(if $(RES),--res $(RES)) $(if $(CFG),--guidance $(CFG)) $(if $(SAMPLES),--samples $(SAMPLES)) \
	$(if $(filter 1,$(GPTQ)),--hessian $(if $(HESSIAN_MEM),--hessian-mem $(HESSIAN_MEM)))

.PHONY: calib

calib: | $(OUT)
	$(FX)/fx-calib $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --cond $(COND) $(CALIB_OPTS) -o $(CALIB)

include $(PIPELINES_DIR)svdq.mk
