#!/usr/bin/env bash
# Qwen-Image memory benchmark (issue 16), run by bench/run.sh or alone:
#
#   FX_BIN=$PWD/build/bin bash bench/qwenimage.sh
#
# Two synthetic Qwen-Images of the real width (hidden 3072 = 24 heads x 128,
# text width 3584, MLP 12288) with FX_BENCH_QWEN_BLOCKS blocks (default
# "2 4"; the real model has 60: ~0.68 GB of BF16 per block), generated once
# into the cache. For each: fx-calib (1 prompt with a negative prompt, true
# CFG, 2 steps at 256x256), fx-quant (NVFP4, no branch: plain RTN) and
# fx-pack, timed, with the peak RSS of each. The stages stream one fused
# layer at a time, so the memory they own (anonymous: heap) must stay flat
# in the number of blocks: the ratio of the larger model's peak to the
# smaller's is printed (1.00 = flat) next to the ratio of their sizes. RSS
# also counts the model's mapped pages, which the sampler of fx-calib
# touches in every step: clean page cache the kernel reclaims under
# pressure (a 41 GB Qwen-Image calibrates on a smaller machine by reading
# its weights again each step), shown beside it.
set -euo pipefail
export LC_ALL=C
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

read -r -a BLOCKS <<<"${FX_BENCH_QWEN_BLOCKS:-2 4}"
((${#BLOCKS[@]} == 2)) || die "FX_BENCH_QWEN_BLOCKS must name two block counts"
section "Qwen-Image (issue 16): hidden 3072, ${BLOCKS[0]} and ${BLOCKS[1]} blocks, peak memory per stage"
need_space 8
peaks=() anons=() sizes=() names=()
for nb in "${BLOCKS[@]}"; do
	key=qwen3072-b$nb
	dir=$(cached_model "$key" --family qwenimage --hidden 3072 --blocks "$nb" \
		--cond cond.safetensors --prompts 1 --txt-len 32)
	m=$dir/model
	in_b=$(file_bytes "$m"/*.safetensors)
	prime_hash "$m"
	note "$key: $nb blocks, input $(bytes_h "$in_b")"
	c=$BENCH_WORK/c-$key.safetensors q=$BENCH_WORK/q-$key.safetensors p=$BENCH_WORK/p-$key.safetensors
	peak=0 anon=0
	measure "calib-$key" "$FX_BIN/fx-calib" --model "$m" --cond "$dir/cond.safetensors" --steps 2 \
		--res 256x256 --samples 64 -o "$c" --force
	note "fx-calib $(secs_h "$M_SEC"), peak RSS $(kib_h "$M_RSS_KB") (anon $(kib_h "$M_ANON_KB"))"
	[[ $M_RSS_KB =~ ^[0-9]+$ ]] && ((M_RSS_KB > peak)) && peak=$M_RSS_KB
	[[ $M_ANON_KB =~ ^[0-9]+$ ]] && ((M_ANON_KB > anon)) && anon=$M_ANON_KB
	measure "quant-$key" "$FX_BIN/fx-quant" --model "$m" --precision fp4 -o "$q" --force
	note "fx-quant $(secs_h "$M_SEC"), peak RSS $(kib_h "$M_RSS_KB") (anon $(kib_h "$M_ANON_KB"))"
	[[ $M_RSS_KB =~ ^[0-9]+$ ]] && ((M_RSS_KB > peak)) && peak=$M_RSS_KB
	[[ $M_ANON_KB =~ ^[0-9]+$ ]] && ((M_ANON_KB > anon)) && anon=$M_ANON_KB
	measure "pack-$key" "$FX_BIN/fx-pack" --model "$m" --quant "$q" -o "$p" --force
	note "fx-pack $(secs_h "$M_SEC"), peak RSS $(kib_h "$M_RSS_KB") (anon $(kib_h "$M_ANON_KB"))"
	[[ $M_RSS_KB =~ ^[0-9]+$ ]] && ((M_RSS_KB > peak)) && peak=$M_RSS_KB
	[[ $M_ANON_KB =~ ^[0-9]+$ ]] && ((M_ANON_KB > anon)) && anon=$M_ANON_KB
	peaks+=("$peak") anons+=("$anon") sizes+=("$in_b") names+=("$key")
	row "Qwen-Image calib+quant+pack" "$nb blocks, $(bytes_h "$in_b") in" "-" "-" "-" \
		"peak of the three stages" "$(kib_h "$peak") (anon $(kib_h "$anon"))" "anon flat in blocks"
	rm -f -- "$c" "$q" "$p"
done
note "peak anon ${names[1]} / ${names[0]}: $(calc "${anons[1]} / ${anons[0]}" '%.2f') (1.00 = flat); peak RSS with mapped weights $(calc "${peaks[1]} / ${peaks[0]}" '%.2f'); input size ratio $(calc "${sizes[1]} / ${sizes[0]}" '%.2f')"
row "Qwen-Image memory" "${BLOCKS[1]} vs ${BLOCKS[0]} blocks" "-" "-" \
	"$(calc "${anons[1]} / ${anons[0]}" '%.2f')" "peak anon ratio (RSS $(calc "${peaks[1]} / ${peaks[0]}" '%.2f'), sizes $(calc "${sizes[1]} / ${sizes[0]}" '%.2f'))" "-" "<= 1.1"
[[ ${BENCH_ROWS_OWNER:-} == "$$" ]] && print_table
exit 0
