#!/usr/bin/env bash
# Writes the seed corpus of fuzz-st into tests/fuzz/corpus/st (small valid
# and invalid safetensors files). Rerun only to change the seeds.
set -eu
export LC_ALL=C
out=$(cd "$(dirname "$0")" && pwd)/corpus/st
mkdir -p "$out"

le64() {  # value -> 8 little-endian bytes as printf escapes
	local v=$1 i s=
	for i in 0 1 2 3 4 5 6 7; do
		s+=$(printf '\\x%02x' $(( (v >> (8 * i)) & 255 )))
	done
	printf '%s' "$s"
}

# st NAME HEADER DATA_BYTES [LENGTH_FIELD]
st() {
	local name=$1 hdr=$2 n=$3 len=${4:-${#2}} i
	{
		printf "$(le64 "$len")"
		printf '%s' "$hdr"
		for ((i = 0; i < n; i++)); do printf "\\x$(printf %02x $(( (i * 37 + 11) & 255 )))"; done
	} >"$out/$name"
}

T='"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]}'
st valid-empty '{}' 0
st valid-padded '{"__metadata__":{"k":"v"}}                                    ' 0
st valid-two '{"__metadata__":{"fx.format":"fx.test"},'"$T"',"b":{"dtype":"BF16","shape":[3],"data_offsets":[16,22]}}' 22
st valid-empty-tensor '{"e":{"dtype":"U8","shape":[0,4],"data_offsets":[0,0]},'"$T"'}' 16
st valid-dtypes '{"d":{"dtype":"F64","shape":[1],"data_offsets":[0,8]},"e":{"dtype":"I64","shape":[],"data_offsets":[8,16]},"f":{"dtype":"F16","shape":[2],"data_offsets":[16,20]},"g":{"dtype":"F8_E4M3","shape":[3],"data_offsets":[20,23]},"h":{"dtype":"I8","shape":[1],"data_offsets":[23,24]},"i":{"dtype":"U16","shape":[1],"data_offsets":[24,26]},"j":{"dtype":"I16","shape":[1],"data_offsets":[26,28]},"k":{"dtype":"I32","shape":[1],"data_offsets":[28,32]},"l":{"dtype":"U8","shape":[1],"data_offsets":[32,33]}}' 33
st bad-overlap '{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}' 12
st bad-hole '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},"b":{"dtype":"F32","shape":[1],"data_offsets":[8,12]}}' 12
st bad-trailing "{$T}" 20
st bad-overflow '{"a":{"dtype":"U8","shape":[4611686018427387904,8],"data_offsets":[0,0]}}' 0
st bad-dtype '{"a":{"dtype":"Q4","shape":[2],"data_offsets":[0,2]}}' 2
st bad-dup '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},"a":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}}' 2
st bad-meta '{"__metadata__":{"k":1}}' 0
st bad-utf8 $'{"\xff":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}' 1
st bad-len-huge '{}' 0 9223372036854775807
st bad-len-past '{}' 0 100
printf '\x05\x00\x00' >"$out/bad-truncated"
