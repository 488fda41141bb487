# The SVDQuant pipeline with fx-lowrank and fx-quant split into block ranges
# that run as parallel jobs (make -j). fx-pack merges the shards and checks
# that they neither overlap nor leave gaps. The result is byte-identical to
# pipelines/flux-svdq.mk with the same GPTQ.
#
#   make -j4 -f pipelines/sharded.mk MODEL=... COND=... SHARDS="0-9 10-29 30-56" \
#        [OUT=out] [PRECISION=fp4|int4] [RANK=32] [PROMPTS= STEPS= RES= SAMPLES= GRID=] [LORA=...]
#        [GPTQ=0] [HESSIAN_MEM=16G] [SCALE_SEARCH=1]
#
# With GPTQ (the default, as in flux-svdq.mk) each shard calibrates its own
# blocks with fx-calib --hessian --blocks (the XᵀX of a whole FLUX.1-dev is
# ~108 GiB; a shard's file holds its share), searches with --for-gptq and
# quantizes with --gptq;
# GPTQ=0 calibrates once over the whole model and rounds to nearest.
#
# Block numbering: double blocks 0..18, then single blocks 19..56 (FLUX.1).
include $(dir $(lastword $(MAKEFILE_LIST)))common.mk

MODEL  ?= $(error MODEL=<FLUX model folder or file> is required)
COND   ?= $(error COND=<conditioning .safetensors> is required)
SHARDS ?= $(error SHARDS="A-B C-D ..." is required: block ranges covering the model)
RANK   ?= 32
NAME   ?= $(call model_name,$(MODEL))
PROMPTS ?=
STEPS  ?=
RES    ?=
SAMPLES ?=
GRID   ?=
GPTQ   ?= 1
SCALE_SEARCH ?= 0
HESSIAN_MEM ?=
ifeq ($(filter 0 1,$(GPTQ)),)
$(error GPTQ must be 0 or 1, not '$(GPTQ)')
endif

CALIB := $(OUT)/calib.safetensors
FINAL := $(OUT)/svdq-$(PRECISION)_r$(RANK)-$(NAME).safetensors
AUDIT := $(FINAL:.safetensors=.audit.txt)
branch_of = $(OUT)/branch-r$(RANK)-$(PRECISION).b$(1).safetensors
quant_of  = $(OUT)/quant-r$(RANK)-$(PRECISION).b$(1).safetensors
# with GPTQ, each shard's own calibration
calib_of  = $(if $(filter 1,$(GPTQ)),$(OUT)/calib.b$(1).safetensors,$(CALIB))

CALIB_OPTS = $(if $(PROMPTS),--prompts $(PROMPTS)) $(if $(STEPS),--steps $(STEPS)) \
	$(if $(RES),--res $(RES)) $(if $(SAMPLES),--samples $(SAMPLES))

.PHONY: all calib pack meta verify $(addprefix shard-,$(SHARDS))
all: verify

calib: | $(OUT)
ifeq ($(GPTQ),0)
	$(FX)/fx-calib $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --cond $(COND) $(CALIB_OPTS) -o $(CALIB)
endif

# one job per block range: its branch, then its quantized residual
define SHARD_RULE
shard-$(1): calib
	$$(if $$(filter 1,$$(GPTQ)),$$(FX)/fx-calib $$(FXFLAGS) --model $$(MODEL) $$(LORA_OPTS) --cond $$(COND) \
		$$(CALIB_OPTS) --hessian $$(if $$(HESSIAN_MEM),--hessian-mem $$(HESSIAN_MEM)) --blocks $(1) \
		-o $$(call calib_of,$(1)))
	$$(FX)/fx-lowrank $$(FXFLAGS) --model $$(MODEL) $$(LORA_OPTS) --calib $$(call calib_of,$(1)) --rank $$(RANK) \
		--precision $$(PRECISION) $$(if $$(GRID),--alpha-grid $$(GRID)) $$(if $$(filter 1,$$(GPTQ)),--for-gptq) \
		--blocks $(1) \
		-o $$(call branch_of,$(1))
	$$(FX)/fx-quant $$(FXFLAGS) --model $$(MODEL) $$(LORA_OPTS) --branch $$(call branch_of,$(1)) \
		--precision $$(PRECISION) $$(if $$(filter 1,$$(GPTQ) $$(SCALE_SEARCH)),--calib $$(call calib_of,$(1))) \
		$$(if $$(filter 1,$$(GPTQ)),--gptq) $$(if $$(filter 1,$$(SCALE_SEARCH)),--search) \
		--blocks $(1) -o $$(call quant_of,$(1))
endef
$(foreach s,$(SHARDS),$(eval $(call SHARD_RULE,$(s))))

pack: $(addprefix shard-,$(SHARDS))
	$(FX)/fx-pack $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) $(foreach s,$(SHARDS),--quant $(call quant_of,$(s)) \
		--branch $(call branch_of,$(s))) -o $(FINAL)

meta: pack
	$(FX)/fx-meta $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) $(FINAL)

verify: meta
	$(FX)/fx-verify $(VERIFYFLAGS) $(FINAL) > $(AUDIT); st=$$?; tail -n 3 $(AUDIT); exit $$st
