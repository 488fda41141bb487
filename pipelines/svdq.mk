# The stages the SVDQuant pipelines share, included by each family's
# pipeline (flux-svdq.mk, qwenimage-svdq.mk) after it has set MODEL, COND,
# CALIB_OPTS, the GPTQ default and its calib target: fx-lowrank -> fx-quant
# -> fx-pack -> fx-meta -> fx-verify, and compare.
RANK  ?= 32
NAME  ?= $(call model_name,$(MODEL))
HESSIAN_MEM ?=
GRID  ?=
SCALE_SEARCH ?= 0
ifeq ($(filter 0 1,$(GPTQ)),)
$(error GPTQ must be 0 or 1, not '$(GPTQ)')
endif
ifeq ($(filter 0 1,$(SCALE_SEARCH)),)
$(error SCALE_SEARCH must be 0 or 1, not '$(SCALE_SEARCH)')
endif

CALIB  := $(OUT)/calib.safetensors
BRANCH := $(OUT)/branch-r$(RANK)-$(PRECISION).safetensors
QUANT  := $(OUT)/quant-r$(RANK)-$(PRECISION).safetensors
FINAL  := $(OUT)/svdq-$(PRECISION)_r$(RANK)-$(NAME).safetensors
AUDIT  := $(FINAL:.safetensors=.audit.txt)

.PHONY: all lowrank quant pack meta verify compare
all: verify

lowrank: calib
	$(FX)/fx-lowrank $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --calib $(CALIB) --rank $(RANK) \
		--precision $(PRECISION) $(if $(GRID),--alpha-grid $(GRID)) $(if $(filter 1,$(GPTQ)),--for-gptq) \
		$(BLOCKS_OPT) -o $(BRANCH)

quant: lowrank
	$(FX)/fx-quant $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --branch $(BRANCH) --precision $(PRECISION) \
		$(if $(filter 1,$(GPTQ) $(SCALE_SEARCH)),--calib $(CALIB)) $(if $(filter 1,$(GPTQ)),--gptq) \
		$(if $(filter 1,$(SCALE_SEARCH)),--search) $(BLOCKS_OPT) -o $(QUANT)

pack: quant
	$(FX)/fx-pack $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --quant $(QUANT) --branch $(BRANCH) -o $(FINAL)

meta: pack
	$(FX)/fx-meta $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) $(FINAL)

verify: meta
	$(FX)/fx-verify $(VERIFYFLAGS) $(FINAL) > $(AUDIT); st=$$?; tail -n 3 $(AUDIT); exit $$st

# compare: the checkpoint, the same branch with round-to-nearest codes (SVDQ
# without GPTQ; with GPTQ=1 that branch was searched for GPTQ, so this is not
# the best RTN checkpoint) and plain RTN (no smoothing, no branch) sampled
# against the source weights by fx-eval, on a seed the calibration did not use
NOGPTQ_QUANT := $(OUT)/quant-r$(RANK)-$(PRECISION)-nogptq.safetensors
NOGPTQ := $(OUT)/svdq-nogptq-$(PRECISION)_r$(RANK)-$(NAME).safetensors
RTN_QUANT := $(OUT)/quant-rtn-$(PRECISION).safetensors
RTN    := $(OUT)/rtn-$(PRECISION)-$(NAME).safetensors
COMPARE := $(OUT)/compare-$(PRECISION)_r$(RANK)-$(NAME).txt
EVAL_STEPS ?= 4
EVAL_RES   ?= 256x256
EVAL_SEED  ?= 1000
ifneq ($(filter compare,$(MAKECMDGOALS)),)
ifneq ($(BLOCKS),)
$(error compare samples with the whole model: run it without BLOCKS, after merging the shards)
endif
endif

# Without GPTQ the checkpoint is already the SVDQ-without-GPTQ one.
compare: verify
ifeq ($(GPTQ),1)
	$(FX)/fx-quant $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --branch $(BRANCH) --precision $(PRECISION) \
		$(if $(filter 1,$(SCALE_SEARCH)),--calib $(CALIB) --search) -o $(NOGPTQ_QUANT)
	$(FX)/fx-pack $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --quant $(NOGPTQ_QUANT) --branch $(BRANCH) -o $(NOGPTQ)
endif
	$(FX)/fx-quant $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --precision $(PRECISION) -o $(RTN_QUANT)
	$(FX)/fx-pack $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --quant $(RTN_QUANT) -o $(RTN)
	$(FX)/fx-eval -q --model $(MODEL) $(LORA_OPTS) --cond $(COND) $(if $(PROMPTS),--prompts $(PROMPTS)) \
		--steps $(EVAL_STEPS) --res $(EVAL_RES) --seed $(EVAL_SEED) \
		$(FINAL) $(if $(filter 1,$(GPTQ)),$(NOGPTQ)) $(RTN) > $(COMPARE).tmp || { rm -f $(COMPARE).tmp; exit 1; }
	@mv $(COMPARE).tmp $(COMPARE)
	@cat $(COMPARE)
