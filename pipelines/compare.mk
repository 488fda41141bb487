# The compare target of the SVDQuant pipelines (included after their
# stages): samples with the checkpoint, the same branch with round-to-nearest
# codes (SVDQ without GPTQ) and plain RTN (no smoothing, no branch) against
# the source weights (fx-eval), report in OUT/compare-<precision>_r<rank>-<name>.txt.
# Needs MODEL, COND, BRANCH, FINAL, GPTQ and PROMPTS from the pipeline.
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

.PHONY: compare
# Without GPTQ the checkpoint is already the SVDQ-without-GPTQ one.
compare: verify
ifeq ($(GPTQ),1)
	$(FX)/fx-quant $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --branch $(BRANCH) --precision $(PRECISION) \
		-o $(NOGPTQ_QUANT)
	$(FX)/fx-pack $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --quant $(NOGPTQ_QUANT) --branch $(BRANCH) -o $(NOGPTQ)
endif
	$(FX)/fx-quant $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --precision $(PRECISION) -o $(RTN_QUANT)
	$(FX)/fx-pack $(FXFLAGS) --model $(MODEL) $(LORA_OPTS) --quant $(RTN_QUANT) -o $(RTN)
	$(FX)/fx-eval -q --model $(MODEL) $(LORA_OPTS) --cond $(COND) $(if $(PROMPTS),--prompts $(PROMPTS)) \
		--steps $(EVAL_STEPS) --res $(EVAL_RES) --seed $(EVAL_SEED) \
		$(FINAL) $(if $(filter 1,$(GPTQ)),$(NOGPTQ)) $(RTN) > $(COMPARE).tmp || { rm -f $(COMPARE).tmp; exit 1; }
	@mv $(COMPARE).tmp $(COMPARE)
	@cat $(COMPARE)
