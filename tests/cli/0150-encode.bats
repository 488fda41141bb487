#!/usr/bin/env bats
# fx-encode: the conditioning file of the fixture encoders (tests/fixtures/text),
# caching per prompt, tokenizer lookup, bad inputs, man page.

load helper

setup() {
	FIX=$BATS_TEST_DIRNAME/../fixtures/text
	REF=$BATS_TEST_DIRNAME/../fixtures/text-ref.safetensors
	P=$BATS_TEST_TMPDIR/prompts.txt
	O=$BATS_TEST_TMPDIR/cond.safetensors
	printf '%s\n' '# a comment' 'a photo of a cat' '' 'Café au lait, naïve résumé 🐱🚀' >"$P"
	ARGS=(--t5 "$FIX/t5" --clip "$FIX/clip" --max-len 48)
}

# json_field JSON EXPR: a field of a one-line JSON document
json_field() {
	python3 -c "import json,sys; d=json.loads(sys.argv[1]); print($2)" "$1"
}

@test "fx-encode --help lists every option" {
	run -0 fx-encode --help
	assert_line --index 0 --partial "usage: fx-encode --t5 T5DIR --clip CLIPDIR --prompts FILE"
	for o in --t5 --clip --prompts --max-len --blocks-of --tokenizer-t5 --tokenizer-clip --output --force \
		--json --threads --device; do
		assert_output --partial -- "$o"
	done
}

@test "usage errors exit 2" {
	run -2 --separate-stderr fx-encode --clip "$FIX/clip" --prompts "$P" -o "$O"
	[[ "$stderr" == *"--t5, --clip and --prompts are required"* ]]
	run -2 fx-encode "${ARGS[@]}" --prompts "$P"
	run -2 fx-encode "${ARGS[@]}" --prompts "$P" --max-len 0 -o "$O"
	run -2 fx-encode "${ARGS[@]}" --prompts "$P" --blocks-of x -o "$O"
	run -2 fx-encode "${ARGS[@]}" --prompts "$P" -o "$O" extra
	[ ! -e "$O" ]
}

@test "encodes the fixture prompts: shapes, dtypes, ids and values of transformers" {
	have_py_safetensors || skip "python safetensors not installed"
	run -0 --separate-stderr fx-encode "${ARGS[@]}" --prompts "$P" -o "$O" --json
	[ "$(json_field "$output" 'd["computed"]')" = "['prompt.0', 'prompt.1']" ]
	[ "$(json_field "$output" 'd["up_to_date"]')" = False ]
	python3 - "$O" "$REF" <<'PY'
import json, sys
import numpy as np
from safetensors import safe_open
with safe_open(sys.argv[1], "np") as f:
    meta = f.metadata()
    assert meta["fx.format"] == "fx.cond", meta
    assert json.loads(meta["fx.prompts"]) == ["a photo of a cat", "Café au lait, naïve résumé 🐱🚀"]
    assert sorted(json.loads(meta["fx.layers"])) == ["prompt.0", "prompt.1"]
    ids5, idsc = f.get_tensor("t5_input_ids"), f.get_tensor("clip_input_ids")
    assert ids5.shape == (2, 48) and ids5.dtype == np.int32
    assert idsc.shape == (2, 77) and idsc.dtype == np.int32
    sl = f.get_slice("prompt_embeds")
    assert sl.get_shape() == [2, 48, 64] and sl.get_dtype() == "BF16", (sl.get_shape(), sl.get_dtype())
    sl = f.get_slice("pooled_prompt_embeds")
    assert sl.get_shape() == [2, 64] and sl.get_dtype() == "BF16"
with safe_open(sys.argv[2], "np") as r:
    assert json.loads(r.metadata()["prompts"])[0] == "a photo of a cat"
    assert (ids5[0] == r.get_tensor("t5.ids")[0]).all()
    assert (idsc[0] == r.get_tensor("clip.ids")[0]).all()
    want5, wantc = r.get_tensor("t5.out")[0], r.get_tensor("clip.pooled")[0]
# BF16 values against the f32 reference: relative error within bf16 rounding
import struct
raw = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
hdr = json.loads(raw[8:8 + n])
def bf16(name, count):
    a, b = hdr[name]["data_offsets"]
    u = np.frombuffer(raw[8 + n + a:8 + n + a + 2 * count], np.uint16).astype(np.uint32) << 16
    return u.view(np.float32)
got5, gotc = bf16("prompt_embeds", 48 * 64).reshape(48, 64), bf16("pooled_prompt_embeds", 64)
for g, w in ((got5, want5), (gotc, wantc)):
    e = np.abs(g - w).max() / np.abs(w).max()
    assert e < 8e-3, e
PY
}

@test "a second run is up to date; --force recomputes every prompt" {
	run -0 fx-encode -q "${ARGS[@]}" --prompts "$P" -o "$O"
	cp "$O" "$BATS_TEST_TMPDIR/first"
	run -0 --separate-stderr fx-encode "${ARGS[@]}" --prompts "$P" -o "$O" --json
	[[ "$stderr" == *"up to date"* ]]
	[ "$(json_field "$output" 'd["up_to_date"]')" = True ]
	cmp "$O" "$BATS_TEST_TMPDIR/first"
	run -0 --separate-stderr fx-encode "${ARGS[@]}" --prompts "$P" -o "$O" --json --force
	[ "$(json_field "$output" 'len(d["computed"]), len(d["reused"])')" = "2 0" ]
	cmp "$O" "$BATS_TEST_TMPDIR/first"
}

@test "adding a prompt encodes only the new one; the old rows stay byte-identical" {
	have_py_safetensors || skip "python safetensors not installed"
	run -0 fx-encode -q "${ARGS[@]}" --prompts "$P" -o "$O"
	cp "$O" "$BATS_TEST_TMPDIR/before"
	echo 'a lighthouse in a storm' >>"$P"
	run -0 --separate-stderr fx-encode "${ARGS[@]}" --prompts "$P" -o "$O" --json
	[ "$(json_field "$output" 'd["computed"]')" = "['prompt.2']" ]
	[ "$(json_field "$output" 'd["reused"]')" = "['prompt.0', 'prompt.1']" ]
	[[ "$stderr" == *"1 to encode, 2 reused"* ]]
	# a prompt inserted at the top shifts the others: still only it is encoded
	{ echo 'an owl at night'; cat "$P"; } >"$P.new" && mv "$P.new" "$P"
	run -0 --separate-stderr fx-encode "${ARGS[@]}" --prompts "$P" -o "$O" --json
	[ "$(json_field "$output" 'd["computed"]')" = "['prompt.0']" ]
	[ "$(json_field "$output" 'd["reused"]')" = "['prompt.1', 'prompt.2', 'prompt.3']" ]
	# the result equals a fresh encoding of the same file
	run -0 fx-encode -q "${ARGS[@]}" --prompts "$P" -o "$BATS_TEST_TMPDIR/fresh.safetensors"
	cmp "$O" "$BATS_TEST_TMPDIR/fresh.safetensors"
	python3 - "$BATS_TEST_TMPDIR/before" "$O" <<'PY'
import sys
from safetensors import safe_open
import numpy as np
a, b = safe_open(sys.argv[1], "np"), safe_open(sys.argv[2], "np")
for name in ("t5_input_ids", "clip_input_ids"):
    assert (a.get_tensor(name) == b.get_tensor(name)[1:3]).all(), name
PY
}

@test "--max-len changes every prompt; --blocks-of and --threads change nothing" {
	run -0 fx-encode -q "${ARGS[@]}" --prompts "$P" -o "$O"
	run -0 fx-encode -q "${ARGS[@]}" --prompts "$P" --blocks-of 1 --threads 1 -o "$BATS_TEST_TMPDIR/b1.safetensors"
	cmp "$O" "$BATS_TEST_TMPDIR/b1.safetensors"
	run -0 --separate-stderr fx-encode --t5 "$FIX/t5" --clip "$FIX/clip" --max-len 16 --prompts "$P" -o "$O" --json
	[ "$(json_field "$output" 'd["computed"]')" = "['prompt.0', 'prompt.1']" ]
}

@test "a FLUX-style folder: tokenizers in the sibling tokenizer_2/ (spiece.model) and tokenizer/" {
	F=$BATS_TEST_TMPDIR/flux
	mkdir -p "$F/text_encoder_2" "$F/tokenizer_2" "$F/text_encoder" "$F/tokenizer"
	cp "$FIX/t5/config.json" "$FIX/t5/model.safetensors" "$F/text_encoder_2/"
	cp "$FIX/t5/spiece.model" "$F/tokenizer_2/"
	cp "$FIX/clip/config.json" "$FIX/clip/model.safetensors" "$F/text_encoder/"
	cp "$FIX/clip/vocab.json" "$FIX/clip/merges.txt" "$FIX/clip/tokenizer_config.json" "$F/tokenizer/"
	run -0 fx-encode -q "${ARGS[@]}" --prompts "$P" -o "$O"
	run -0 fx-encode -q --t5 "$F" --clip "$F" --max-len 48 --prompts "$P" -o "$BATS_TEST_TMPDIR/flux.safetensors"
	run -0 fx-encode -q --t5 "$F/text_encoder_2" --clip "$F/text_encoder" --max-len 48 --prompts "$P" \
		-o "$BATS_TEST_TMPDIR/flux2.safetensors"
	cmp "$BATS_TEST_TMPDIR/flux.safetensors" "$BATS_TEST_TMPDIR/flux2.safetensors"
	if have_py_safetensors; then
		python3 - "$O" "$BATS_TEST_TMPDIR/flux.safetensors" <<'PY'
import sys
from safetensors import safe_open
a, b = safe_open(sys.argv[1], "np"), safe_open(sys.argv[2], "np")
for name in ("t5_input_ids", "clip_input_ids"):
    assert (a.get_tensor(name) == b.get_tensor(name)).all(), name
PY
	fi
	rm "$F/tokenizer_2/spiece.model"
	run -4 --separate-stderr fx-encode --t5 "$F" --clip "$F" --prompts "$P" -o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"no T5 tokenizer"* ]]
}

@test "--tokenizer-t5 and --tokenizer-clip name the tokenizers: a folder or the T5 file, nothing else searched" {
	F=$BATS_TEST_TMPDIR/flux
	T=$BATS_TEST_TMPDIR/toks
	mkdir -p "$F/text_encoder_2" "$F/text_encoder" "$T/t5" "$T/clip"
	cp "$FIX/t5/config.json" "$FIX/t5/model.safetensors" "$F/text_encoder_2/"
	cp "$FIX/clip/config.json" "$FIX/clip/model.safetensors" "$F/text_encoder/"
	cp "$FIX/t5/spiece.model" "$T/t5/"
	cp "$FIX/clip/vocab.json" "$FIX/clip/merges.txt" "$FIX/clip/tokenizer_config.json" "$T/clip/"
	run -0 fx-encode -q "${ARGS[@]}" --prompts "$P" -o "$O"
	run -4 --separate-stderr fx-encode --t5 "$F" --clip "$F" --max-len 48 --prompts "$P" -o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"no T5 tokenizer"* ]]
	run -0 fx-encode -q --t5 "$F" --clip "$F" --max-len 48 --tokenizer-t5 "$T/t5" --tokenizer-clip "$T/clip" \
		--prompts "$P" -o "$BATS_TEST_TMPDIR/a.safetensors"
	run -0 fx-encode -q --t5 "$F" --clip "$F" --max-len 48 --tokenizer-t5 "$FIX/t5/tokenizer.json" \
		--tokenizer-clip "$T/clip" --prompts "$P" -o "$BATS_TEST_TMPDIR/b.safetensors"
	# the tensors' bytes (BF16 included) are those of the fixture folders
	python3 - "$O" "$BATS_TEST_TMPDIR/a.safetensors" "$BATS_TEST_TMPDIR/b.safetensors" <<'PY'
import json, struct, sys
def tensors(path):
    d = open(path, "rb").read()
    n = struct.unpack("<Q", d[:8])[0]
    h = json.loads(d[8:8 + n])
    return {k: d[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]]
            for k, v in h.items() if k != "__metadata__"}
a = tensors(sys.argv[1])
assert set(a) >= {"t5_input_ids", "clip_input_ids", "prompt_embeds", "pooled_prompt_embeds"}
for f in sys.argv[2:]:
    assert tensors(f) == a, f
PY
	# the named folder only: the tokenizer next to the weights is not used
	cp "$FIX/t5/tokenizer.json" "$F/text_encoder_2/"
	run -4 --separate-stderr fx-encode --t5 "$F" --clip "$F" --tokenizer-t5 "$T/clip" --prompts "$P" \
		-o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"no T5 tokenizer: no tokenizer.json or spiece.model in '$T/clip'"* ]]
	run -4 --separate-stderr fx-encode --t5 "$F" --clip "$F" --tokenizer-clip "$T/t5" --prompts "$P" \
		-o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"no CLIP tokenizer: no vocab.json and merges.txt in '$T/t5'"* ]]
	run -4 --separate-stderr fx-encode --t5 "$F" --clip "$F" --tokenizer-t5 "$T/nope" --prompts "$P" \
		-o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"nope"* ]]
	[ ! -e "$BATS_TEST_TMPDIR/x.safetensors" ]
}

@test "--device cuda: the GPU agrees with the CPU; without a usable GPU, a note and the CPU's bytes" {
	run -0 fx-encode -q "${ARGS[@]}" --prompts "$P" -o "$O"
	run -0 --separate-stderr fx-encode "${ARGS[@]}" --device cuda --prompts "$P" -o "$BATS_TEST_TMPDIR/cuda.safetensors"
	if [[ "$stderr" == *"using the CPU"* ]]; then
		cmp "$O" "$BATS_TEST_TMPDIR/cuda.safetensors"
	else
		# BF16 rows of another summation order: within a few BF16 steps
		python3 - "$O" "$BATS_TEST_TMPDIR/cuda.safetensors" <<'PY'
import json, struct, sys
def tensors(path):
    d = open(path, "rb").read()
    n = struct.unpack("<Q", d[:8])[0]
    h = json.loads(d[8:8 + n])
    return {k: (v["dtype"], d[8 + n + v["data_offsets"][0]:8 + n + v["data_offsets"][1]])
            for k, v in h.items() if k != "__metadata__"}
def floats(dt, b):
    if dt == "BF16":
        return [struct.unpack("<f", b"\0\0" + b[i:i + 2])[0] for i in range(0, len(b), 2)]
    return list(struct.unpack("<%di" % (len(b) // 4), b))
a, b = tensors(sys.argv[1]), tensors(sys.argv[2])
for name in ("t5_input_ids", "clip_input_ids"):
    assert a[name] == b[name], name
for name in ("prompt_embeds", "pooled_prompt_embeds"):
    x, y = floats(*a[name]), floats(*b[name])
    e = max(abs(p - q) for p, q in zip(x, y)) / max(abs(p) for p in x)
    assert e <= 1e-2, (name, e)
PY
	fi
	run -2 fx-encode "${ARGS[@]}" --device gpu --prompts "$P" -o "$BATS_TEST_TMPDIR/x.safetensors"
}

@test "bad inputs: missing folder (4), bad prompts file (3), not an encoder (3), foreign output (2)" {
	run -4 --separate-stderr fx-encode --t5 "$BATS_TEST_TMPDIR/nope" --clip "$FIX/clip" --prompts "$P" -o "$O"
	[[ "$stderr" == *"nope"* ]]
	printf 'fine\n\xff\xfe broken\n' >"$BATS_TEST_TMPDIR/bad.txt"
	run -3 --separate-stderr fx-encode "${ARGS[@]}" --prompts "$BATS_TEST_TMPDIR/bad.txt" -o "$O"
	[[ "$stderr" == *"line 2: not valid UTF-8"* ]]
	printf '# only a comment\n\n' >"$BATS_TEST_TMPDIR/empty.txt"
	run -3 --separate-stderr fx-encode "${ARGS[@]}" --prompts "$BATS_TEST_TMPDIR/empty.txt" -o "$O"
	[[ "$stderr" == *"no prompts"* ]]
	# a T5 folder whose config is CLIP's
	mkdir "$BATS_TEST_TMPDIR/t5bad"
	cp "$FIX/t5/tokenizer.json" "$FIX/t5/model.safetensors" "$BATS_TEST_TMPDIR/t5bad/"
	cp "$FIX/clip/config.json" "$BATS_TEST_TMPDIR/t5bad/"
	run -3 --separate-stderr fx-encode --t5 "$BATS_TEST_TMPDIR/t5bad" --clip "$FIX/clip" --prompts "$P" -o "$O"
	[[ "$stderr" == *"config.json': 'd_model' missing"* ]]
	# a T5 folder whose weights are CLIP's
	cp "$FIX/t5/config.json" "$BATS_TEST_TMPDIR/t5bad/"
	cp "$FIX/clip/model.safetensors" "$BATS_TEST_TMPDIR/t5bad/"
	run -3 --separate-stderr fx-encode --t5 "$BATS_TEST_TMPDIR/t5bad" --clip "$FIX/clip" --prompts "$P" -o "$O"
	[[ "$stderr" == *"not a T5 encoder"* ]]
	# a tokenizer whose ids the encoder does not have
	cp "$FIX/t5/config.json" "$FIX/t5/model.safetensors" "$BATS_TEST_TMPDIR/t5bad/"
	rm "$BATS_TEST_TMPDIR/t5bad/tokenizer.json"
	python3 - "$FIX/t5/tokenizer.json" "$BATS_TEST_TMPDIR/t5bad/tokenizer.json" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
j["model"]["vocab"].append(["\u2581zzzz", 10.0])
json.dump(j, open(sys.argv[2], "w"))
PY
	echo 'zzzz cat' >"$BATS_TEST_TMPDIR/z.txt"
	run -3 --separate-stderr fx-encode --t5 "$BATS_TEST_TMPDIR/t5bad" --clip "$FIX/clip" --prompts "$BATS_TEST_TMPDIR/z.txt" -o "$O"
	[[ "$stderr" == *"do not belong together"* ]]
	[ ! -e "$O" ]
	echo 'not an fx file' >"$O"
	run -2 --separate-stderr fx-encode "${ARGS[@]}" --prompts "$P" -o "$O"
	[[ "$stderr" == *"--force"* ]]
	run -0 fx-encode -q "${ARGS[@]}" --prompts "$P" -o "$O" --force
	! ls "$BATS_TEST_TMPDIR" | grep -q '\.tmp\.'
}

# ids_vs_ref OUT TOKDIR_T5 TOKDIR_CLIP PROMPT...: the token id rows of OUT
# (fx-encode --max-len 24) are those of tests/fixtures/text-special-ref.json
# (transformers) for these tokenizers, one prompt per row; CLIP rows are 77
# long there, the reference's 24 then padding
ids_vs_ref() {
	python3 - "$BATS_TEST_DIRNAME/../fixtures/text-special-ref.json" "$@" <<'PY'
import json, struct, sys
ref, out, t5, clip, prompts = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5:]
cases = {(c["tokenizer"], c["prompt"]): c["ids"] for c in json.load(open(ref, encoding="utf-8"))["cases"]}
d = open(out, "rb").read()
n = struct.unpack("<Q", d[:8])[0]
h = json.loads(d[8:8 + n])
def rows(name, width):
    a, b = h[name]["data_offsets"]
    v = struct.unpack("<%di" % ((b - a) // 4), d[8 + n + a:8 + n + b])
    return [list(v[i:i + width]) for i in range(0, len(v), width)]
assert json.loads(h["__metadata__"]["fx.prompts"]) == prompts, h["__metadata__"]["fx.prompts"]
r5, rc = rows("t5_input_ids", 24), rows("clip_input_ids", 77)
for i, p in enumerate(prompts):
    w5, wc = cases[(t5, p)], cases[(clip, p)]
    assert r5[i] == w5, (p, "T5", r5[i], w5)
    assert rc[i][:24] == wc and set(rc[i][24:]) <= {wc[-1]}, (p, "CLIP", rc[i], wc)
PY
}

@test "special-token text: </s>, <pad>, <unk>, <|endoftext|> are one id each, as transformers" {
	printf '%s\n' '</s>' 'a</s>b' '  </s>  ' '<pad>a<unk>' 'a photo</s>of a cat' '<extra_id_0>' \
		'<|endoftext|>' 'a <|endoftext|> b' '<|startoftext|>x' '<|ENDOFTEXT|>' >"$P"
	run -0 fx-encode -q --t5 "$FIX/t5" --clip "$FIX/clip" --max-len 24 --prompts "$P" -o "$O"
	ids_vs_ref "$O" text/t5 text/clip '</s>' 'a</s>b' '  </s>  ' '<pad>a<unk>' 'a photo</s>of a cat' \
		'<extra_id_0>' '<|endoftext|>' 'a <|endoftext|> b' '<|startoftext|>x' '<|ENDOFTEXT|>'
}

@test "a pad token that is ordinary text (\"!\") is special text; FLUX.1's CLIP configuration" {
	printf '%s\n' 'hello!' 'hi ! there!!' '</s>' '<|ENDOFTEXT|>' >"$P"
	# T5: pad_token "!" in tokenizer_config.json only (the ids of <extra_id_N>
	# there are past this encoder's vocabulary, so no such prompt here)
	run -0 fx-encode -q --t5 "$FIX/t5" --clip "$FIX/clip" --tokenizer-t5 "$FIX/t5-added" \
		--tokenizer-clip "$FIX/clip-pad" --max-len 24 --prompts "$P" -o "$O"
	ids_vs_ref "$O" text/t5-added text/clip-pad 'hello!' 'hi ! there!!' '</s>' '<|ENDOFTEXT|>'
	run -0 fx-encode -q --t5 "$FIX/t5" --clip "$FIX/clip" --tokenizer-clip "$FIX/clip-flux" \
		--max-len 24 --prompts "$P" -o "$O" --force
	ids_vs_ref "$O" text/t5 text/clip-flux 'hello!' 'hi ! there!!' '</s>' '<|ENDOFTEXT|>'
	echo '<extra_id_0>' >"$P"
	run -3 --separate-stderr fx-encode --t5 "$FIX/t5" --clip "$FIX/clip" --tokenizer-t5 "$FIX/t5-added" \
		--prompts "$P" -o "$BATS_TEST_TMPDIR/x.safetensors"
	[[ "$stderr" == *"gives token id 699 (prompt 0)"*"do not belong together"* ]]
}

@test "a line of spaces is a prompt (the empty prompt's tokens), an empty line is not" {
	printf 'a photo of a cat\n\n   \n\t\r\n\r\n# note\n' >"$P"
	run -0 --separate-stderr fx-encode "${ARGS[@]}" --max-len 24 --prompts "$P" -o "$O" --json
	[ "$(json_field "$output" 'd["computed"]')" = "['prompt.0', 'prompt.1', 'prompt.2']" ]
	[[ "$stderr" == *"2 prompt(s) of only spaces or tabs (the first: prompt 1)"* ]]
	ids_vs_ref "$O" text/t5 text/clip 'a photo of a cat' '   ' $'\t'
	# FluxPipeline encodes "" the same way
	python3 - "$BATS_TEST_DIRNAME/../fixtures/text-special-ref.json" <<'PY'
import json, sys
c = {(x["tokenizer"], x["prompt"]): x["ids"] for x in json.load(open(sys.argv[1], encoding="utf-8"))["cases"]}
for t in ("text/t5", "text/clip"):
    assert c[(t, "   ")] == c[(t, "\t")] == c[(t, "")], t
PY
}

@test "the tokenizer configuration is part of the recipe: a new special token re-encodes" {
	C=$BATS_TEST_TMPDIR/clip
	cp -r "$FIX/clip" "$C"
	echo 'a photo of a cat' >"$P"
	run -0 fx-encode -q --t5 "$FIX/t5" --clip "$C" --max-len 24 --prompts "$P" -o "$O"
	python3 - "$C/tokenizer_config.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
c["additional_special_tokens"] = ["photo"]
json.dump(c, open(sys.argv[1], "w"))
PY
	run -0 --separate-stderr fx-encode --t5 "$FIX/t5" --clip "$C" --max-len 24 --prompts "$P" -o "$O" --json
	[ "$(json_field "$output" 'd["computed"]')" = "['prompt.0']" ]
	# "photo" is now one special token: its vocabulary id, not "photo</w>"
	python3 - "$O" "$C/vocab.json" <<'PY'
import json, struct, sys
d = open(sys.argv[1], "rb").read()
n = struct.unpack("<Q", d[:8])[0]
h = json.loads(d[8:8 + n])
a, b = h["clip_input_ids"]["data_offsets"]
ids = struct.unpack("<77i", d[8 + n + a:8 + n + b])
v = json.load(open(sys.argv[2], encoding="utf-8"))
assert ids[1:6] == (v["a</w>"], v["photo"], v["of</w>"], v["a</w>"], v["cat</w>"]), ids[:8]
PY
}

@test "man/fx-encode.1: every --help option has an OPTIONS entry, the SYNOPSIS is the usage line" {
	MAN=$BATS_TEST_DIRNAME/../../man/fx-encode.1
	[ -s "$MAN" ]
	run -0 fx-encode --help
	opts=$(printf '%s\n' "$output" | grep -o -- '--[a-z][a-z-]*' | sort -u)
	tags=$(sed 's/\\-/-/g' "$MAN" | awk '/^\.SH /{on = ($0 ~ /^\.SH OPTIONS/)} on && tp {print} {tp = ($0 == ".TP")}')
	for o in $opts; do
		printf '%s\n' "$tags" | grep -qE -- "${o}([^a-z-]|\$)" || { echo "no OPTIONS entry for $o"; return 1; }
	done
	command -v mandoc >/dev/null 2>&1 || skip "mandoc not installed"
	want=$(fx-encode --help | head -n 1 | sed 's/^usage: //' | tr -s ' ')
	got=$(mandoc -T ascii -O width=400 "$MAN" | sed 's/.\x08//g' |
		awk '/^[A-Z]/{on = ($0 == "SYNOPSIS"); next} on' | tr -s ' \n' '  ' | sed 's/^ //; s/ $//')
	[ "$got" = "$want" ] || { printf 'man:  %s\nhelp: %s\n' "$got" "$want"; return 1; }
	run -0 mandoc -Tlint -W warning "$MAN"
	[ -z "$output" ]
}
