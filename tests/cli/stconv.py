#!/usr/bin/env python3
"""Rewrites a safetensors model the way fine-tunes are shared, for the input
tests: FP8 (E4M3/E5M2, optionally with per-tensor scale companions), F16,
ComfyUI all-in-one files. numpy only; FP8 rounding by table (independent of
fx's converters).

  stconv.py grid IN OUT FMT SCALE     BF16 copy with every float value on
                                      the FMT grid times SCALE (exact in FMT)
  stconv.py fp8 IN OUT FMT SCALE      weights ("*.weight") as FMT codes of
                                      value/SCALE; SCALE != 1 adds
                                      "<base>.scale_weight" (F32) per weight
                                      and "<base>.scale_input" beside it
  stconv.py fp8all IN OUT FMT         every float tensor as FMT codes
  stconv.py f16 IN OUT                every float tensor as F16
  stconv.py allinone IN OUT PREFIX    names prefixed, plus vae.* and
                                      text_encoders.* tensors (and a
                                      PREFIXscaled_fp8 marker when asked by
                                      PREFIX ending in '+marker')
  stconv.py diff A B                  prints names whose values differ
"""
import json
import struct
import sys

import numpy as np


def load(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        hdr = json.loads(f.read(n))
        data = f.read()
    meta = hdr.pop("__metadata__", None)
    out = {}
    for name, d in hdr.items():
        a, b = d["data_offsets"]
        out[name] = (d["dtype"], d["shape"], data[a:b])
    return out, meta


def save(path, tensors, meta=None):
    hdr, blobs, off = {}, [], 0
    if meta:
        hdr["__metadata__"] = meta
    for name, (dt, shape, raw) in tensors.items():
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(hdr).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def fp8_table(fmt):
    """All 256 codes' values (NaN for the NaN codes), by the format's rules."""
    ebits, mbits, bias = (4, 3, 7) if fmt == "e4m3" else (5, 2, 15)
    vals = np.zeros(256, dtype=np.float64)
    for c in range(256):
        s = -1.0 if c & 0x80 else 1.0
        e = (c >> mbits) & ((1 << ebits) - 1)
        m = c & ((1 << mbits) - 1)
        if fmt == "e4m3" and e == 15 and m == 7:
            vals[c] = np.nan
        elif fmt == "e5m2" and e == 31:
            vals[c] = np.nan if m else s * np.inf
        elif e == 0:
            vals[c] = s * m * 2.0 ** (1 - bias - mbits)
        else:
            vals[c] = s * (1 + m / (1 << mbits)) * 2.0 ** (e - bias)
    return vals


def fp8_encode(x, fmt):
    """Nearest code (ties: the even code) of each value; saturating."""
    t = fp8_table(fmt)
    codes = np.array([c for c in range(128) if np.isfinite(t[c])])
    pos = t[codes]
    order = np.argsort(pos)
    codes, pos = codes[order], pos[order]
    a = np.abs(x.astype(np.float64)).ravel()
    i = np.clip(np.searchsorted(pos, a), 1, len(pos) - 1)
    lo, hi = pos[i - 1], pos[i]
    pick_hi = (a - lo > hi - a) | ((a - lo == hi - a) & (codes[i] % 2 == 0))
    c = np.where(pick_hi, codes[i], codes[i - 1])
    c = np.where(a >= pos[-1], codes[-1], c)
    c = c | np.where(np.signbit(x.ravel()), 0x80, 0)
    return c.astype(np.uint8).reshape(x.shape)


def to_f64(dt, shape, raw):
    if dt == "BF16":
        u = np.frombuffer(raw, dtype="<u2").astype(np.uint32) << 16
        return u.view(np.float32).astype(np.float64).reshape(shape)
    if dt == "F16":
        return np.frombuffer(raw, dtype="<f2").astype(np.float64).reshape(shape)
    if dt == "F32":
        return np.frombuffer(raw, dtype="<f4").astype(np.float64).reshape(shape)
    if dt in ("F8_E4M3", "F8_E5M2"):
        t = fp8_table("e4m3" if dt == "F8_E4M3" else "e5m2")
        return t[np.frombuffer(raw, dtype=np.uint8)].reshape(shape)
    return None


def bf16_bytes(x):
    """Exact values only (the callers make them so); checked."""
    f = x.astype(np.float32)
    u = f.view(np.uint32)
    assert not np.any(u & 0xFFFF), "value not exact in BF16"
    return (u >> 16).astype("<u2").tobytes()


def main():
    cmd = sys.argv[1]
    if cmd == "diff":
        a, _ = load(sys.argv[2])
        b, _ = load(sys.argv[3])
        bad = [n for n in sorted(set(a) | set(b)) if a.get(n) != b.get(n)]
        print("\n".join(bad))
        return 1 if bad else 0
    src, meta = load(sys.argv[2])
    out = {}
    if cmd == "grid":
        fmt, scale = sys.argv[4], float(sys.argv[5])
        t = fp8_table(fmt)
        for n, (dt, sh, raw) in src.items():
            x = to_f64(dt, sh, raw)
            if x is None:
                out[n] = (dt, sh, raw)
                continue
            v = t[fp8_encode(x / scale, fmt)] * scale
            out[n] = ("BF16", sh, bf16_bytes(v))
    elif cmd == "fp8":
        fmt, scale = sys.argv[4], float(sys.argv[5])
        dtn = "F8_E4M3" if fmt == "e4m3" else "F8_E5M2"
        for n, (dt, sh, raw) in src.items():
            x = to_f64(dt, sh, raw)
            if x is None or not n.endswith(".weight") or len(sh) != 2:
                out[n] = (dt, sh, raw)
                continue
            out[n] = (dtn, sh, fp8_encode(x / scale, fmt).tobytes())
            if scale != 1.0:
                base = n[: -len(".weight")]
                out[base + ".scale_weight"] = ("F32", [], np.float32(scale).tobytes())
                out[base + ".scale_input"] = ("F32", [], np.float32(1.0).tobytes())
    elif cmd == "fp8all":
        fmt = sys.argv[4]
        dtn = "F8_E4M3" if fmt == "e4m3" else "F8_E5M2"
        for n, (dt, sh, raw) in src.items():
            x = to_f64(dt, sh, raw)
            out[n] = (dt, sh, raw) if x is None else (dtn, sh, fp8_encode(x, fmt).tobytes())
    elif cmd == "f16":
        for n, (dt, sh, raw) in src.items():
            x = to_f64(dt, sh, raw)
            if x is None:
                out[n] = (dt, sh, raw)
                continue
            h = x.astype("<f2")
            assert np.array_equal(h.astype(np.float64), x), n + ": not exact in F16"
            out[n] = ("F16", sh, h.tobytes())
    elif cmd == "allinone":
        prefix = sys.argv[4]
        marker = prefix.endswith("+marker")
        prefix = prefix[: -len("+marker")] if marker else prefix
        rng = np.random.default_rng(3)
        out["vae.decoder.conv_in.weight"] = ("F32", [4, 4], rng.standard_normal(16).astype("<f4").tobytes())
        out["vae.encoder.conv_in.bias"] = ("BF16", [4], bf16_bytes(np.zeros(4)))
        out["text_encoders.clip_l.transformer.text_model.embeddings.position_ids"] = (
            "I64", [1, 4], np.arange(4, dtype="<i8").tobytes())
        out["text_encoders.t5xxl.transformer.shared.weight"] = (
            "F16", [8, 4], rng.standard_normal(32).astype("<f2").tobytes())
        for n, v in src.items():
            out[prefix + n] = v
        if marker:
            out[prefix + "scaled_fp8"] = ("F8_E4M3", [0], b"")
    else:
        print(__doc__, file=sys.stderr)
        return 2
    save(sys.argv[3], out, meta)
    return 0


if __name__ == "__main__":
    sys.exit(main())
