# The SVDQuant pipeline with fx-lowrank and fx-quant split into block ranges
# that run as parallel jobs (make -j). fx-calib runs once over the whole
# model; fx-pack merges the shards and checks that they neither overlap nor
# leave gaps. The result is byte-identical to pipelines/flux-svdq.mk.
#
#   make -j4 -f pipelines/sharded.mk MODEL=... COND=... SHARDS="0-9 10-29 30-56" \
#        [OUT=out] [PRECISION=fp4|int4] [RANK=32] [PROMPTS= STEPS= RES= SAMPLES= GRID=] [LORA=...]
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

CALIB := $(OUT)/calib.safetensors
FINAL := $(OUT)/svdq-$(PRECISION)_r$(RANK)-$(NAME).safetensors
AUDIT := $(FINAL:.safetensors=.audit.txt)
branch_of = $(OUT)/branch-r$(RANK)-$(PRECISION).b$(1).safetensors
quant_of  = $(OUT)/quant-r$(RANK)-$(PRECISION).b$(1).safetensors

CALIB_OPTS = $(if $(PROMPTS),--prompts $(PROMPTS)) $(if $(STEPS),--steps $(STEPS)) \
	$(if $(RES),--res $(RES)) $(if $(SAMPLES),--samples $(SAMPLES))

.PHONY: all calib pack meta verify $(addprefix shard-,$(SHARDS))
all: verify

calib: | $(OUT)
	$(FX)/fx-calib $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --cond $(COND) $(CALIB_OPTS) -o $(CALIB)

# one job per block range: its branch, then its quantized residual
define SHARD_RULE
shard-$(1): calib
	$$(FX)/fx-lowrank $$(FXFLAGS) --model $$(MODEL) $$(LORA_OPTS) --calib $$(CALIB) --rank $$(RANK) \
		--precision $$(PRECISION) $$(if $$(GRID),--alpha-grid $$(GRID)) --blocks $(1) \
		-o $$(call branch_of,$(1))
	$$(FX)/fx-quant $$(FXFLAGS) --model $$(MODEL) $$(LORA_OPTS) --branch $$(call branch_of,$(1)) \
		--precision $$(PRECISION) --blocks $(1) -o $$(call quant_of,$(1))
endef
$(foreach s,$(SHARDS),$(eval $(call SHARD_RULE,$(s))))

pack: $(addprefix shard-,$(SHARDS))
	$(FX)/fx-pack $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) $(foreach s,$(SHARDS),--quant $(call quant_of,$(s)) \
		--branch $(call branch_of,$(s))) -o $(FINAL)

meta: pack
	$(FX)/fx-meta $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) $(FINAL)

verify: meta
	$(FX)/fx-verify $(VERIFYFLAGS) $(FINAL) > $(AUDIT); st=$$?; tail -n 3 $(AUDIT); exit $$st
