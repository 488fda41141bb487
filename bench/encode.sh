#!/usr/bin/env bash
# fx-encode benchmark (issue 8), run by bench/run.sh or alone:
#
#   FX_BIN=$PWD/build/bin bash bench/encode.sh
#
# Model: a T5 encoder of T5-XXL width (d_model 4096, 64 heads x d_kv 64,
# gated-GELU d_ff 10240, vocabulary 32128) with FX_BENCH_ENC_LAYERS layers
# (default 2) of random BF16 weights, generated once into the cache with
# python3 + numpy (~1.1 GB); the tokenizers and the CLIP text model are the
# small fixtures of tests/fixtures/text (CLIP costs nothing here).
# Work: FX_BENCH_ENC_PROMPTS prompts (default 4, in one pass over the layers) of pipelines/prompts/calib-128.txt
# padded to 512 tokens, as FluxPipeline encodes them for FLUX.1-dev.
#
# Measured in the same run:
#   C       fx-encode's own T5 time (it logs "T5 encoder: ... in S s"), as
#           tokens per second (prompts x 512 / S)
#   torch   transformers' T5EncoderModel in float32 on the CPU, same weights,
#           same ids, same threads, best of 2 forwards (FX_BENCH_PYTHON, default
#           python3; skipped with a message when torch or transformers is missing)
# Target: C >= torch. Projection: 128 prompts with the real T5-XXL (24 layers)
# = 128 x 512 x 24 / (measured tokens x layers per second); CLIP-L adds seconds.
set -euo pipefail
export LC_ALL=C
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

ENC_LAYERS=${FX_BENCH_ENC_LAYERS:-2}
ENC_PROMPTS=${FX_BENCH_ENC_PROMPTS:-4}
ENC_LEN=512
REAL_LAYERS=24
REAL_PROMPTS=128
PY=${FX_BENCH_PYTHON:-python3}
SRC=$(cd "$BENCH_DIR/.." && pwd)

[[ $ENC_LAYERS =~ ^[1-9][0-9]*$ ]] || die "FX_BENCH_ENC_LAYERS must be a positive integer"
[[ $ENC_PROMPTS =~ ^[1-9][0-9]*$ ]] || die "FX_BENCH_ENC_PROMPTS must be a positive integer"
if [[ ! -x $FX_BIN/fx-encode ]]; then
	note "fx-encode: skipped ($FX_BIN/fx-encode not built yet)"
	row "fx-encode T5" "-" "-" "-" "n/a" "skipped: fx-encode not built" "-" ">= 1"
	[[ ${BENCH_ROWS_OWNER:-} == "$$" ]] && print_table
	exit 0
fi
python3 -c 'import numpy' 2>/dev/null || die "the T5 benchmark model is generated with python3 + numpy (pip install numpy)"

need_space 2
dir=$CACHE/t5xxl-width-l$ENC_LAYERS
if [[ ! -f $dir/.bench-stamp ]]; then
	rm -rf -- "$dir"
	forget_hashes "$dir/"
	mkdir -p "$dir"
	printf '  generating %s (once; cached in %s) ...\n' "t5xxl-width-l$ENC_LAYERS" "$CACHE" >&2
	python3 - "$dir" "$ENC_LAYERS" <<'PY' || die "generating the T5 benchmark model failed"
import json, struct, sys
import numpy as np
out, layers = sys.argv[1], int(sys.argv[2])
D, H, DK, F, V = 4096, 64, 64, 10240, 32128
cfg = {"architectures": ["T5EncoderModel"], "model_type": "t5", "d_model": D, "d_kv": DK,
       "num_heads": H, "d_ff": F, "num_layers": layers, "vocab_size": V,
       "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
       "feed_forward_proj": "gated-gelu", "layer_norm_epsilon": 1e-6, "is_encoder_decoder": False,
       "use_cache": False, "dense_act_fn": "gelu_new", "is_gated_act": True}
json.dump(cfg, open(out + "/config.json", "w"), indent=1)
shapes = {"shared.weight": (V, D), "encoder.final_layer_norm.weight": (D,),
          "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": (32, H)}
for l in range(layers):
    p = "encoder.block.%d.layer." % l
    for n in "qkv":
        shapes[p + "0.SelfAttention.%s.weight" % n] = (H * DK, D)
    shapes[p + "0.SelfAttention.o.weight"] = (D, H * DK)
    shapes[p + "0.layer_norm.weight"] = (D,)
    shapes[p + "1.layer_norm.weight"] = (D,)
    shapes[p + "1.DenseReluDense.wi_0.weight"] = (F, D)
    shapes[p + "1.DenseReluDense.wi_1.weight"] = (F, D)
    shapes[p + "1.DenseReluDense.wo.weight"] = (D, F)
names = sorted(shapes)
hdr, off = {}, 0
for n in names:
    nb = 2 * int(np.prod(shapes[n]))
    hdr[n] = {"dtype": "BF16", "shape": list(shapes[n]), "data_offsets": [off, off + nb]}
    off += nb
h = json.dumps(hdr).encode()
h += b" " * (-(8 + len(h)) % 64)
rng = np.random.default_rng(8)
with open(out + "/model.safetensors", "wb") as f:
    f.write(struct.pack("<Q", len(h)) + h)
    for n in names:
        shp = shapes[n]
        std = 1.0 if n.endswith("norm.weight") else (0.5 if "relative" in n or n == "shared.weight"
                                                      else 1.0 / np.sqrt(shp[-1]))
        for r0 in range(0, shp[0], 1024):
            a = rng.standard_normal((min(1024, shp[0] - r0),) + shp[1:], dtype=np.float32) * np.float32(std)
            if n.endswith("norm.weight"):
                a = 1.0 + 0.1 * a
            u = a.view(np.uint32)
            u = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)   # round to nearest even
            f.write(u.tobytes())
PY
	cp "$SRC/tests/fixtures/text/t5/tokenizer.json" "$dir/"
	date -u >"$dir/.bench-stamp"
fi
clip=$SRC/tests/fixtures/text/clip
prompts=$BENCH_WORK/encode-prompts.txt
grep -v '^#' "$SRC/pipelines/prompts/calib-128.txt" | grep . | head -n "$ENC_PROMPTS" >"$prompts"
out=$BENCH_WORK/encode.safetensors
warm "$dir"/model.safetensors
# hash the weights once (as after a first run), outside the timed run
"$FX_BIN/fx-encode" -q --t5 "$dir" --clip "$clip" --prompts "$prompts" --max-len 8 \
	-o "$BENCH_WORK/prime.safetensors" --force >/dev/null 2>&1 || true
rm -f -- "$BENCH_WORK/prime.safetensors"
cpu_mark
note "T5 of T5-XXL width: d_model 4096, 64 heads, d_ff 10240 (gated GELU), $ENC_LAYERS layer(s), random BF16 weights; $ENC_PROMPTS prompt(s) x $ENC_LEN tokens"

measure encode "$FX_BIN/fx-encode" --t5 "$dir" --clip "$clip" --prompts "$prompts" --max-len $ENC_LEN \
	--blocks-of "$ENC_PROMPTS" -o "$out" --force
line=$(grep 'T5 encoder:' "$BENCH_WORK/encode.log" || true)
[[ -n $line ]] || die "fx-encode printed no T5 timing: $(tail -n 3 "$BENCH_WORK/encode.log")"
t_c=$(sed -n 's/.* layers in \([0-9.]*\) s = .*/\1/p' <<<"$line")
tps_c=$(calc "$ENC_PROMPTS * $ENC_LEN / $t_c" '%.1f')
detail "fx-encode (whole run)" "T5 $t_c s = $tps_c tokens/s"
rss="$(kib_h "$M_RSS_KB") (anon $(kib_h "$M_ANON_KB"))"
cpu_report "the fx-encode run"
# FLOPs of the layers: 2 x (4 D^2 + 3 D F) per token + attention 4 L D per token
flops=$(calc "$ENC_PROMPTS * $ENC_LEN * $ENC_LAYERS * 2 * (4 * 4096 * 4096 + 3 * 4096 * 10240 + 2 * $ENC_LEN * 4096)" '%.0f')
note "C T5: $tps_c tokens/s ($(calc "$flops / $t_c / 1e9" '%.1f') GFLOP/s over $(calc "$flops / 1e12" '%.2f') TFLOP)"
proj=$(calc "$REAL_PROMPTS * $ENC_LEN * $REAL_LAYERS / ($ENC_PROMPTS * $ENC_LEN * $ENC_LAYERS / $t_c)")
note "projected: $REAL_PROMPTS prompts x $ENC_LEN tokens with the real T5-XXL ($REAL_LAYERS layers) on this machine: $(secs_h "$proj")"
row "fx-encode T5" "$ENC_PROMPTS x $ENC_LEN tok, $ENC_LAYERS XXL layers" "$(secs_h "$t_c")" "$tps_c tok/s" \
	"-" "-" "$rss" "-"

if "$PY" -c 'import torch, transformers' >/dev/null 2>&1; then
	# (measure runs its command in the background: the script goes to a file)
	cat >"$BENCH_WORK/torch-t5.py" <<'PY'
import sys, time, json, struct
import numpy as np
import torch
from transformers import T5EncoderModel
d, cond, threads = sys.argv[1], sys.argv[2], int(sys.argv[3])
torch.set_num_threads(threads)
raw = open(cond, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
a, b = hdr["t5_input_ids"]["data_offsets"]
ids = np.frombuffer(raw[8 + n + a:8 + n + b], np.int32).reshape(hdr["t5_input_ids"]["shape"])
m = T5EncoderModel.from_pretrained(d, torch_dtype=torch.float32).eval()
x = torch.from_numpy(ids.astype(np.int64))
best = 1e30
with torch.no_grad():
    for _ in range(2):
        t0 = time.perf_counter()
        m(input_ids=x)
        best = min(best, time.perf_counter() - t0)
print("torch_t5 sec=%.3f tokens=%d torch=%s transformers=%s" % (best, ids.size, torch.__version__,
      __import__("transformers").__version__))
PY
	cpu_mark
	measure torch-t5 "$PY" "$BENCH_WORK/torch-t5.py" "$dir" "$out" "$NPROC"
	tl=$(grep '^torch_t5' "$BENCH_WORK/torch-t5.log" || true)
	[[ -n $tl ]] || die "the torch T5 baseline printed no result: $(tail -n 3 "$BENCH_WORK/torch-t5.log")"
	t_t=$(sed -n 's/^torch_t5 sec=\([0-9.]*\).*/\1/p' <<<"$tl")
	tps_t=$(calc "$ENC_PROMPTS * $ENC_LEN / $t_t" '%.1f')
	detail "transformers T5 (whole run)" "${tl#torch_t5 }"
	cpu_report "the torch run"
	note "transformers T5EncoderModel, float32, $NPROC threads, best of 2: $tps_t tokens/s; fx is $(calc "$tps_c / $tps_t" '%.2f')x its speed (target >= 1)"
	row "fx-encode T5 vs torch" "same ids, weights" "$(secs_h "$t_c")" "$tps_c tok/s" "$(calc "$tps_c / $tps_t" '%.2f')" \
		"torch CPU $tps_t tok/s" "$(kib_h "$M_RSS_KB") (torch)" ">= 1"
else
	note "torch: skipped (not installed: '$PY -c \"import torch, transformers\"' fails; pip install torch transformers, or set FX_BENCH_PYTHON)"
	row "fx-encode T5 vs torch" "same ids, weights" "-" "-" "n/a" "torch: skipped (not installed)" "-" ">= 1"
fi
row "fx-encode projected" "$REAL_PROMPTS prompts, T5-XXL" "$(secs_h "$proj")" "$ENC_LEN tok/prompt" "-" \
	"at the measured rate" "-" "-"
rm -f -- "$out"
[[ ${BENCH_ROWS_OWNER:-} == "$$" ]] && print_table
exit 0
