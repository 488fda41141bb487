#!/usr/bin/env python3
"""LoRAs for a diffusers-layout model, and the model merged the slow way,
for tests/cli/0600-lora.bats. numpy only (stconv.py's reader/writer).

  mklora.py make MODEL OUT KIND [--exact] [--dtype F32|BF16] [--seed N] [--only SUBSTR]
      KIND: peft (transformer.<module>.lora_A/lora_B + .alpha), kohya
      (lora_unet_<BFL layer>.lora_down/lora_up + .alpha, fused qkv and
      linear1), xlabs (double_blocks.N.processor.qkv_lora1.down.weight ...).
      --exact: values on a coarse dyadic grid and alpha = rank, so every
      product and sum of the merge is exact in f32.
  mklora.py bad MODEL OUT WHAT
      WHAT: shape (lora_A one column short), unknown (a key naming no
      layer), sdxl (a kohya key of another architecture), nan (a NaN in a
      lora_B), te (a text-encoder key beside good ones), dora (a DoRA
      magnitude), orphan (a lora_A without its lora_B)
  mklora.py merge MODEL OUTDIR LORA:SCALE...
      the model with every LoRA merged: W + Σ f32(scale·alpha/r)·(B·A), the
      products summed over the rank in order, one LoRA after the other, all
      in float32 (the order fx documents); merged tensors are written F32,
      the others as they were. config.json is copied.
"""
import json
import os
import shutil
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import stconv  # noqa: E402

DOUBLE_BFL = {"img_attn_qkv": ["attn.to_q", "attn.to_k", "attn.to_v"],
              "txt_attn_qkv": ["attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj"],
              "img_attn_proj": ["attn.to_out.0"], "txt_attn_proj": ["attn.to_add_out"],
              "img_mlp_0": ["ff.net.0.proj"], "img_mlp_2": ["ff.net.2"],
              "txt_mlp_0": ["ff_context.net.0.proj"], "txt_mlp_2": ["ff_context.net.2"],
              "img_mod_lin": ["norm1.linear"], "txt_mod_lin": ["norm1_context.linear"]}
SINGLE_BFL = {"linear1": ["attn.to_q", "attn.to_k", "attn.to_v", "proj_mlp"],
              "linear2": ["proj_out"], "modulation_lin": ["norm.linear"]}


def model_file(model):
    return os.path.join(model, "diffusion_pytorch_model.safetensors") if os.path.isdir(model) else model


def shapes(model):
    t, _ = stconv.load(model_file(model))
    return {k[:-7]: s for k, (d, s, r) in t.items() if k.endswith(".weight") and len(s) == 2}


def nblocks(sh, kind):
    return 1 + max(int(k.split(".")[1]) for k in sh if k.startswith(kind + "."))


def enc(x, dt):
    x = np.ascontiguousarray(x, dtype=np.float32)
    if dt == "F32":
        return ("F32", list(x.shape), x.astype("<f4").tobytes())
    return ("BF16", list(x.shape), stconv.bf16_bytes(x))


def rnd(rng, shape, exact, scale):
    if exact:   # multiples of 1/16 in [-1/4, 1/4]: exact products and sums
        return rng.integers(-4, 5, size=shape).astype(np.float32) / 16
    x = (rng.standard_normal(shape) * scale).astype(np.float32)
    return x


def bf16_round(x):
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    one, sh = np.uint64(1), np.uint64(16)
    u = (u + np.uint64(0x7FFF) + ((u >> sh) & one)) >> sh << sh
    return u.astype(np.uint32).view(np.float32)


def layers(sh, kind):
    """(key base, [(module, rows)]) for every layer of the model."""
    out = []
    nd, ns = nblocks(sh, "transformer_blocks"), nblocks(sh, "single_transformer_blocks")
    if kind == "peft":
        return [("transformer." + m, [(m, s[0])]) for m, s in sorted(sh.items())
                if "blocks" in m]
    if kind == "xlabs":
        for i in range(nd):
            p = f"transformer_blocks.{i}."
            for nm, mods in [("qkv_lora1", DOUBLE_BFL["img_attn_qkv"]),
                             ("qkv_lora2", DOUBLE_BFL["txt_attn_qkv"]),
                             ("proj_lora1", ["attn.to_out.0"]), ("proj_lora2", ["attn.to_add_out"])]:
                out.append((f"double_blocks.{i}.processor.{nm}", [(p + m, sh[p + m][0]) for m in mods]))
        return out
    for i in range(nd):
        p = f"transformer_blocks.{i}."
        for nm, mods in DOUBLE_BFL.items():
            out.append((f"lora_unet_double_blocks_{i}_{nm}", [(p + m, sh[p + m][0]) for m in mods]))
    for i in range(ns):
        p = f"single_transformer_blocks.{i}."
        for nm, mods in SINGLE_BFL.items():
            out.append((f"lora_unet_single_blocks_{i}_{nm}", [(p + m, sh[p + m][0]) for m in mods]))
    return out


def suffixes(kind):
    return {"peft": (".lora_A.weight", ".lora_B.weight"),
            "kohya": (".lora_down.weight", ".lora_up.weight"),
            "xlabs": (".down.weight", ".up.weight")}[kind]


def make(model, out, kind, exact=False, dt="F32", seed=1, only=None):
    sh = shapes(model)
    rng = np.random.default_rng(seed)
    sa, sb = suffixes(kind)
    t = {}
    for j, (base, mods) in enumerate(layers(sh, kind)):
        if only and only not in base:
            continue
        k = sh[mods[0][0]][1]
        n = sum(r for _, r in mods)
        r = 4 if exact else 2 + j % 3
        a = rnd(rng, (r, k), exact, 1 / np.sqrt(k))
        b = rnd(rng, (n, r), exact, 0.3 / np.sqrt(r))
        if dt == "BF16":
            a, b = bf16_round(a), bf16_round(b)
        t[base + sa] = enc(a, dt)
        t[base + sb] = enc(b, dt)
        if kind != "xlabs":
            al = r if exact else r * 0.75
            t[base + ".alpha"] = enc(np.array(al, dtype=np.float32), "F32")
    stconv.save(out, t)


def bad(model, out, what):
    sh = shapes(model)
    m = "transformer_blocks.0.attn.to_q"
    n, k = sh[m]
    f4 = lambda x: enc(x, "F32")  # noqa: E731
    t = {f"transformer.{m}.lora_A.weight": f4(np.full((2, k), 0.01)),
         f"transformer.{m}.lora_B.weight": f4(np.full((n, 2), 0.01))}
    if what == "shape":
        t[f"transformer.{m}.lora_A.weight"] = f4(np.full((2, k - 1), 0.01))
    elif what == "unknown":
        t["transformer.transformer_blocks.0.attn.to_z.lora_A.weight"] = f4(np.zeros((2, k)))
        t["transformer.transformer_blocks.0.attn.to_z.lora_B.weight"] = f4(np.zeros((n, 2)))
    elif what == "sdxl":
        t = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": f4(np.zeros((2, 320))),
             "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": f4(np.zeros((320, 2)))}
    elif what == "nan":
        b = np.full((n, 2), 0.01, dtype=np.float32)
        b[3, 1] = np.nan
        t[f"transformer.{m}.lora_B.weight"] = f4(b)
    elif what == "te":
        t["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_down.weight"] = f4(np.zeros((2, 768)))
        t["lora_te1_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = f4(np.zeros((3072, 2)))
    elif what == "dora":
        t[f"transformer.{m}.lora_magnitude_vector"] = f4(np.ones((n,)))
    elif what == "orphan":
        del t[f"transformer.{m}.lora_B.weight"]
    else:
        raise SystemExit("unknown bad kind " + what)
    stconv.save(out, t)


def to_f32(d, s, r):
    return stconv.to_f64(d, s, r).astype(np.float32)


def merge(model, outdir, specs):
    """The slow way, in f32, in fx's documented order."""
    t, meta = stconv.load(model_file(model))
    w = {}
    for spec in specs:
        path, _, sc = spec.rpartition(":")
        scale = float(sc)
        lt, _ = stconv.load(path)
        kind = "kohya" if any(".lora_down." in x for x in lt) else \
            "xlabs" if any(".processor." in x for x in lt) else "peft"
        sa, sb = suffixes(kind)
        for base, mods in layers(shapes(model), kind):
            if base + sa not in lt:
                continue
            a = to_f32(*lt[base + sa])
            b = to_f32(*lt[base + sb])
            r = a.shape[0]
            al = float(to_f32(*lt[base + ".alpha"]).reshape(-1)[0]) if base + ".alpha" in lt else r
            f = np.float32(scale * al / r)
            row = 0
            for mod, rows in mods:
                name = mod + ".weight"
                if name not in w:
                    w[name] = to_f32(*t[name])
                acc = np.zeros((rows, a.shape[1]), dtype=np.float32)
                for j in range(r):
                    acc = acc + b[row:row + rows, j:j + 1] * a[j:j + 1, :]
                w[name] = w[name] + acc * f
                row += rows
    out = dict(t)
    for name, v in w.items():
        out[name] = enc(v, "F32")
    os.makedirs(outdir, exist_ok=True)
    stconv.save(os.path.join(outdir, "diffusion_pytorch_model.safetensors"), out, meta)
    shutil.copy(os.path.join(model, "config.json"), os.path.join(outdir, "config.json"))


def main():
    a = sys.argv[1:]
    if a[0] == "make":
        opts = a[4:]
        make(a[1], a[2], a[3], exact="--exact" in opts,
             dt=opts[opts.index("--dtype") + 1] if "--dtype" in opts else "F32",
             seed=int(opts[opts.index("--seed") + 1]) if "--seed" in opts else 1,
             only=opts[opts.index("--only") + 1] if "--only" in opts else None)
    elif a[0] == "bad":
        bad(a[1], a[2], a[3])
    elif a[0] == "merge":
        merge(a[1], a[2], a[3:])
    else:
        raise SystemExit(__doc__)


if __name__ == "__main__":
    main()
