#!/usr/bin/env bats
# fx-synth: options, outputs in both layouts, refusal to overwrite,
# determinism, and a cross-read with Python's safetensors.
load '/usr/lib/bats/bats-support/load'
load '/usr/lib/bats/bats-assert/load'
bats_require_minimum_version 1.5.0

@test "fx-synth --help exits 0 and lists every option" {
	run -0 fx-synth --help
	assert_line --partial 'usage: fx-synth'
	for o in --layout --double --single --hidden --txt-dim --in-channels --seed \
		--schnell --shards --cond --prompts --txt-len --force --output --help; do
		assert_output --partial -- "$o"
	done
}

@test "fx-synth --version exits 0" {
	run -0 fx-synth --version
	assert_output --partial 'fx-synth'
}

@test "fx-synth: bad usage exits 2" {
	local m=$BATS_TEST_TMPDIR/m
	run -2 --separate-stderr fx-synth --bogus -o "$m"
	run -2 --separate-stderr fx-synth --layout foo -o "$m"
	[[ $stderr == *"fx-synth: error:"*"--layout"* ]]
	run -2 --separate-stderr fx-synth --hidden 200 -o "$m"
	[[ $stderr == *"multiple of 128"* ]]
	run -2 --separate-stderr fx-synth --double x -o "$m"
	run -2 --separate-stderr fx-synth
	[[ $stderr == *"-o OUT"* ]]
	run -2 --separate-stderr fx-synth -o "$m" extra
	run -2 --separate-stderr fx-synth --prompts 2 -o "$m"
	run -2 --separate-stderr fx-synth --layout bfl --shards 2 -o "$m"
	[ ! -e "$m" ]
}

@test "fx-synth: default run writes a diffusers folder" {
	local m=$BATS_TEST_TMPDIR/m
	run -0 --separate-stderr fx-synth -o "$m"
	assert_output ''
	[ -d "$m" ]
	[ -s "$m/config.json" ]
	[ -s "$m/diffusion_pytorch_model.safetensors" ]
	run -0 grep -c '"num_layers": 2' "$m/config.json"
	run -0 grep -c '"guidance_embeds": true' "$m/config.json"
	run -0 grep -c '"_class_name": "FluxTransformer2DModel"' "$m/config.json"
	run -1 bash -c "ls '$m' | grep -e '\.tmp\.'"
}

@test "fx-synth --schnell has no guidance embedder" {
	local m=$BATS_TEST_TMPDIR/m
	run -0 fx-synth -q --schnell -o "$m"
	run -0 grep -c '"guidance_embeds": false' "$m/config.json"
	run -1 grep -c guidance_embedder "$m/diffusion_pytorch_model.safetensors"
}

@test "fx-synth --layout bfl writes one file" {
	local f=$BATS_TEST_TMPDIR/flux.safetensors
	run -0 fx-synth -q --layout bfl -o "$f"
	[ -f "$f" ]
	[ -s "$f" ]
	run -0 grep -c 'double_blocks.1.img_attn.qkv.weight' "$f"
}

@test "fx-synth --shards writes shards and an index" {
	local m=$BATS_TEST_TMPDIR/m
	run -0 fx-synth -q --shards 3 -o "$m"
	[ -s "$m/diffusion_pytorch_model-00001-of-00003.safetensors" ]
	[ -s "$m/diffusion_pytorch_model-00003-of-00003.safetensors" ]
	[ -s "$m/diffusion_pytorch_model.safetensors.index.json" ]
	[ ! -e "$m/diffusion_pytorch_model.safetensors" ]
	run -0 grep -c weight_map "$m/diffusion_pytorch_model.safetensors.index.json"
}

@test "fx-synth refuses an existing output without --force" {
	local m=$BATS_TEST_TMPDIR/m f=$BATS_TEST_TMPDIR/f.safetensors
	run -0 fx-synth -q -o "$m"
	run -2 --separate-stderr fx-synth -o "$m"
	[[ $stderr == *"fx-synth: error:"*"--force"* ]]
	run -0 fx-synth -q --force -o "$m"
	run -0 fx-synth -q --layout bfl -o "$f"
	cp "$f" "$f.orig"
	run -2 --separate-stderr fx-synth --layout bfl --seed 9 -o "$f"
	cmp "$f" "$f.orig"
	run -0 fx-synth -q --layout bfl --seed 9 --force -o "$f"
	run -1 cmp -s "$f" "$f.orig"
}

@test "fx-synth: same seed gives byte-identical output" {
	local t=$BATS_TEST_TMPDIR
	run -0 fx-synth -q --layout bfl --seed 5 -o "$t/a.safetensors"
	run -0 fx-synth -q --layout bfl --seed 5 -o "$t/b.safetensors"
	run -0 fx-synth -q --layout bfl --seed 6 -o "$t/c.safetensors"
	cmp "$t/a.safetensors" "$t/b.safetensors"
	run -1 cmp -s "$t/a.safetensors" "$t/c.safetensors"
	run -0 fx-synth -q --seed 5 --cond "$t/c1.safetensors" -o "$t/d1"
	run -0 fx-synth -q --seed 5 --cond "$t/c2.safetensors" -o "$t/d2"
	cmp "$t/d1/diffusion_pytorch_model.safetensors" "$t/d2/diffusion_pytorch_model.safetensors"
	cmp "$t/d1/config.json" "$t/d2/config.json"
	cmp "$t/c1.safetensors" "$t/c2.safetensors"
}

@test "fx-synth --cond writes conditioning and refuses to overwrite it" {
	local t=$BATS_TEST_TMPDIR
	run -0 fx-synth -q --cond "$t/cond.safetensors" --prompts 2 --txt-len 8 -o "$t/m"
	[ -s "$t/cond.safetensors" ]
	run -2 --separate-stderr fx-synth --cond "$t/cond.safetensors" -o "$t/m2"
	[ ! -e "$t/m2" ]
}

@test "fx-synth output reads back with python safetensors" {
	if ! python3 -c 'import safetensors' >/dev/null 2>&1; then
		skip "python safetensors not installed"
	fi
	local t=$BATS_TEST_TMPDIR
	run -0 fx-synth -q --cond "$t/cond.safetensors" --txt-dim 512 -o "$t/m"
	run -0 fx-synth -q --layout bfl --txt-dim 512 -o "$t/b.safetensors"
	run -0 fx-synth -q --shards 2 --schnell -o "$t/s"
	run -0 python3 - "$t" <<-'EOF'
		import json, sys
		from safetensors import safe_open
		t = sys.argv[1]
		def shapes(path):
		    with safe_open(path, framework="np") as f:
		        assert f.metadata() in (None, {}, {"format": "pt"}), f.metadata()
		        out = {}
		        for k in f.keys():
		            s = f.get_slice(k)
		            assert s.get_dtype() == "BF16", (k, s.get_dtype())
		            out[k] = s.get_shape()
		        return out
		d = shapes(t + "/m/diffusion_pytorch_model.safetensors")
		assert len(d) == 20 + 2 * 32 + 2 * 14, len(d)
		assert d["transformer_blocks.1.attn.add_q_proj.weight"] == [256, 256]
		assert d["single_transformer_blocks.0.proj_out.weight"] == [256, 1280]
		assert d["context_embedder.weight"] == [256, 512]
		assert d["norm_out.linear.weight"] == [512, 256]
		b = shapes(t + "/b.safetensors")
		assert len(b) == 20 + 2 * 24 + 2 * 8, len(b)
		assert b["double_blocks.0.img_attn.qkv.weight"] == [768, 256]
		assert b["single_blocks.1.linear1.weight"] == [1792, 256]
		assert b["single_blocks.1.linear2.weight"] == [256, 1280]
		assert b["guidance_in.in_layer.weight"] == [256, 256]
		idx = json.load(open(t + "/s/diffusion_pytorch_model.safetensors.index.json"))
		s = {}
		for f in sorted(set(idx["weight_map"].values())):
		    s.update(shapes(t + "/s/" + f))
		assert sorted(s) == sorted(idx["weight_map"]), "index does not match the shards"
		assert len(s) == 16 + 2 * 32 + 2 * 14, len(s)
		c = shapes(t + "/cond.safetensors")
		assert c == {"prompt_embeds": [4, 64, 512], "pooled_prompt_embeds": [4, 768]}, c
		print("ok")
	EOF
	assert_output 'ok'
}
