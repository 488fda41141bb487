#!/usr/bin/env python3
"""Writes a small Qwen-Image SVDQuant checkpoint the way Nunchaku's Python
loader wants it (nunchaku-qwenimage-zimage-format.md §1.3, §1.4, §2.5, §4),
independently of fx's packer: every tensor of every block under the
Python module names, the 13 top-level tensors, the metadata config,
quantization_config and model_class. Values are seeded random numbers of
the right dtypes and signs (no layout is meant: for the completeness audit).

  qwenpacked.py OUT [--precision int4|fp4] [--blocks N] [--hidden D]
                [--rank R] [--head-dim H] [--joint J] [--seed S]

NVFP4: the fused modules (attn.to_qkv, attn.add_qkv_proj) carry wcscales,
the others wtscale, as Nunchaku's convention; INT4 has neither.
"""
import argparse
import json

import numpy as np

from stconv import save

MODULES = [  # name, adaLN, N and K in units of (D, F): (nd, nf, kd, kf)
    ("img_mod.1", True, (6, 0, 1, 0)),
    ("txt_mod.1", True, (6, 0, 1, 0)),
    ("attn.to_qkv", False, (3, 0, 1, 0)),
    ("attn.add_qkv_proj", False, (3, 0, 1, 0)),
    ("attn.to_out.0", False, (1, 0, 1, 0)),
    ("attn.to_add_out", False, (1, 0, 1, 0)),
    ("img_mlp.net.0.proj", False, (0, 1, 1, 0)),
    ("img_mlp.net.2", False, (1, 0, 0, 1)),
    ("txt_mlp.net.0.proj", False, (0, 1, 1, 0)),
    ("txt_mlp.net.2", False, (1, 0, 0, 1)),
]
NORMS = ["attn.norm_q.weight", "attn.norm_k.weight", "attn.norm_added_q.weight",
         "attn.norm_added_k.weight"]


def bf16(x):
    u = np.asarray(x, dtype=np.float32).view(np.uint32)
    return ("BF16", list(np.shape(x)), ((u + 0x8000) >> 16).astype("<u2").tobytes())


def build(a):
    rng = np.random.default_rng(a.seed)
    D, F, r = a.hidden, 4 * a.hidden, a.rank
    fp4 = a.precision == "fp4"
    t = {}

    def rnd(*shape, scale=0.05):
        return rng.standard_normal(shape).astype(np.float32) * scale

    def pos(*shape):
        return rng.uniform(0.5, 2.0, shape).astype(np.float32)

    for i in range(a.blocks):
        p = "transformer_blocks.%d." % i
        for name, adaln, (nd, nf, kd, kf) in MODULES:
            n, k = nd * D + nf * F, kd * D + kf * F
            m = p + name + "."
            if adaln:
                t[m + "qweight"] = ("I32", [n // 4, k // 2],
                                    rng.integers(0, 256, n * k // 2, dtype=np.uint8).tobytes())
                t[m + "wscales"] = bf16(pos(k // 64, n) * 0.01)
                t[m + "wzeros"] = bf16(rnd(k // 64, n))
                t[m + "bias"] = bf16(rnd(n))
                continue
            t[m + "qweight"] = ("I8", [n, k // 2],
                                rng.integers(0, 256, n * k // 2, dtype=np.uint8).tobytes())
            if fp4:  # E4M3 codes 0x20..0x4f: positive, finite
                t[m + "wscales"] = ("F8_E4M3", [k // 16, n],
                                    rng.integers(0x20, 0x50, n * k // 16, dtype=np.uint8).tobytes())
                if name in ("attn.to_qkv", "attn.add_qkv_proj"):
                    t[m + "wcscales"] = bf16(pos(n))
                else:
                    t[m + "wtscale"] = bf16(pos(1))
            else:
                t[m + "wscales"] = bf16(pos(k // 64, n) * 0.01)
            t[m + "bias"] = bf16(rnd(n))
            t[m + "smooth_factor"] = bf16(pos(k))
            t[m + "smooth_factor_orig"] = bf16(pos(k))
            t[m + "proj_down"] = bf16(rnd(k, r))
            t[m + "proj_up"] = bf16(rnd(n, r))
        for nm in NORMS:
            t[p + nm] = bf16(pos(a.head_dim))
    top = [("img_in", D, 64), ("txt_in", D, a.joint),
           ("time_text_embed.timestep_embedder.linear_1", D, 256),
           ("time_text_embed.timestep_embedder.linear_2", D, D),
           ("norm_out.linear", 2 * D, D), ("proj_out", 64, D)]
    for name, n, k in top:
        t[name + ".weight"] = bf16(rnd(n, k))
        t[name + ".bias"] = bf16(rnd(n))
    t["txt_norm.weight"] = bf16(pos(a.joint))
    config = {"_class_name": "QwenImageTransformer2DModel", "patch_size": 2, "in_channels": 64,
              "out_channels": 16, "num_layers": a.blocks, "attention_head_dim": a.head_dim,
              "num_attention_heads": D // a.head_dim, "joint_attention_dim": a.joint,
              "guidance_embeds": False, "axes_dims_rope": [16, 56, 56]}
    if fp4:
        w = {"dtype": "fp4_e2m1_all", "scale_dtype": [None, "fp8_e4m3_nan"], "group_size": 16}
        act = {"dtype": "fp4_e2m1_all", "scale_dtype": "fp8_e4m3_nan", "group_size": 16}
    else:
        w = {"dtype": "int4", "scale_dtype": None, "group_size": 64}
        act = {"dtype": "int4", "scale_dtype": None, "group_size": 64}
    meta = {"config": json.dumps(config),
            "quantization_config": json.dumps({"method": "svdquant", "weight": w,
                                               "activation": act, "rank": r}),
            "model_class": "NunchakuQwenImageTransformer2DModel"}
    return t, meta


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--precision", choices=["int4", "fp4"], default="int4")
    ap.add_argument("--blocks", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--rank", type=int, default=32)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--joint", type=int, default=128)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    t, meta = build(a)
    save(a.out, t, meta)


if __name__ == "__main__":
    main()
