#!/usr/bin/env python3
"""Loads a Qwen-Image SVDQuant checkpoint with Nunchaku's own Python loader
(NunchakuQwenImageTransformer2DModel.from_pretrained: _build_model,
_patch_model with SVDQW4A4Linear / AWQW4A16Linear, to_empty, patch_scale_key,
strict load_state_dict), on the CPU with empty tensors, and reports whether it
accepted the file.

  nunchaku_load.py [--precision int4|nvfp4] FILE...
  nunchaku_load.py --probe      is Nunchaku's Python code usable here?

What is not Nunchaku's own code, and why (nothing else is replaced):
  * nunchaku._C, the compiled CUDA extension, is a stub module: it does not
    load without CUDA and loading calls none of it (a call raises);
  * get_precision() asks the GPU; it answers the precision the file says
    (quantization_config.weight.dtype: int4, or fp4_e2m1_all = nvfp4), or
    --precision, i.e. the GPU the file is meant for;
  * the model is built at the FILE's size (spec section 2.6: Nunchaku's
    __init__(*args, **kwargs) hides diffusers' signature from from_config,
    which then builds the full-size Qwen-Image whatever `config` says): for
    the call, Nunchaku's __init__ carries diffusers' QwenImageTransformer2DModel
    signature as its __signature__, so from_config passes the file's
    `config` on; from_pretrained itself runs as it is;
  * patch_scale_key is wrapped to see its arguments (for the counts and, when
    the loader refuses, to name the offending keys); it runs unchanged.

Where Nunchaku comes from: FX_NUNCHAKU_SRC, a directory holding the package
folder nunchaku/ (a checkout of nunchaku-tech/nunchaku), else an installed
`nunchaku` package that has models/transformers/transformer_qwenimage.py
(PyPI's project named `nunchaku` is an unrelated one).

Exit status: 0 every FILE loaded strictly; 1 the loader refused a FILE (its
own exception is printed, then the keys that differ); 2 usage; 77 torch,
diffusers or Nunchaku's code is not available (the reason on stderr).
"""
import importlib.util
import inspect
import json
import os
import sys
import traceback
import types

SKIP = 77
PROG = "nunchaku_load"


def say(msg):
    print(f"{PROG}: {msg}", file=sys.stderr)


def find_nunchaku():
    """The directory to put on sys.path (or None: installed), or a reason string."""
    rel = os.path.join("nunchaku", "models", "transformers", "transformer_qwenimage.py")
    src = os.environ.get("FX_NUNCHAKU_SRC")
    if src:
        if not os.path.isfile(os.path.join(src, rel)):
            return None, f"FX_NUNCHAKU_SRC='{src}' has no {rel}"
        return src, None
    spec = importlib.util.find_spec("nunchaku")
    if spec is None or not spec.submodule_search_locations:
        return None, ("no Nunchaku Python package: it is not on PyPI (PyPI's 'nunchaku' is an "
                      "unrelated project); set FX_NUNCHAKU_SRC to a checkout of nunchaku-tech/nunchaku")
    pkg = list(spec.submodule_search_locations)[0]
    if not os.path.isfile(os.path.join(os.path.dirname(pkg), rel)):
        return None, (f"the installed 'nunchaku' ({pkg}) is not Nunchaku (no {rel}; PyPI's 'nunchaku' "
                      "is an unrelated project); set FX_NUNCHAKU_SRC to a checkout of nunchaku-tech/nunchaku")
    return None, None


class _StubCallable:
    def __init__(self, name):
        self._name = name

    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _StubCallable(f"{self._name}.{attr}")

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self._name} is a stub of the CUDA extension; loading must not call it")


class _StubModule(types.ModuleType):
    def __getattr__(self, attr):
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _StubCallable(f"{self.__name__}.{attr}")


def stub_extension():
    """nunchaku._C and the submodules imported from it (ops, utils)."""
    root = _StubModule("nunchaku._C")
    sys.modules["nunchaku._C"] = root
    for sub in ("ops", "utils"):
        m = _StubModule(f"nunchaku._C.{sub}")
        sys.modules[m.__name__] = m
        setattr(root, sub, m)


def import_nunchaku():
    """(torch, tq, reason): tq the module transformer_qwenimage; reason when not usable."""
    path, reason = find_nunchaku()
    if reason:
        return None, None, reason
    try:
        import torch
        import diffusers
        import safetensors  # noqa: F401
    except ImportError as e:
        return None, None, (f"python module '{e.name}' not installed "
                            "(Nunchaku's loader needs torch, diffusers, safetensors)")
    diffusers.utils.logging.set_verbosity_error()
    if path:
        sys.path.insert(0, path)
    stub_extension()
    try:
        import nunchaku.models.transformers.transformer_qwenimage as tq
    except ImportError as e:
        return None, None, f"importing Nunchaku failed: {type(e).__name__}: {e}"
    return torch, tq, None


def file_precision(path):
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        meta = f.metadata() or {}
    try:
        dt = json.loads(meta.get("quantization_config", "{}"))["weight"]["dtype"]
    except (ValueError, KeyError, TypeError):
        return None
    return {"int4": "int4", "fp4_e2m1_all": "nvfp4"}.get(dt)


class file_sized:
    """While in effect, Nunchaku's class shows diffusers' QwenImageTransformer2DModel
    signature on its __init__, so from_config passes the file's `config` on (a
    subclass would not do: Nunchaku's .to() calls super(type(self), self))."""

    def __init__(self, tq):
        self.init = tq.NunchakuQwenImageTransformer2DModel.__init__
        self.sig = inspect.signature(tq.QwenImageTransformer2DModel.__init__)

    def __enter__(self):
        self.init.__signature__ = self.sig

    def __exit__(self, *exc):
        del self.init.__signature__


def diagnose(seen, prec):
    """The keys that differ between the model and the file, as the loader sees them."""
    if not seen:
        return []
    model, sd = seen
    want = model.state_dict()
    out = []
    for k in sorted(set(sd) & set(want)):
        a, b = want[k], sd[k]
        if a.dtype != b.dtype:
            out.append(f"dtype: {k} is {b.dtype} in the file, the model has {a.dtype}")
        if tuple(a.shape) != tuple(b.shape):
            out.append(f"shape: {k} is {tuple(b.shape)} in the file, the model has {tuple(a.shape)}")
    for k in sorted(set(want) - set(sd)):
        if ".wcscales" not in k:
            out.append(f"missing: {k} {want[k].dtype} {tuple(want[k].shape)}")
    for k in sorted(set(sd) - set(want)):
        if prec == "int4" or not k.endswith(".wtscale"):
            out.append(f"unexpected: {k} {sd[k].dtype} {tuple(sd[k].shape)}")
    return out


def load_one(torch, tq, path, precision):
    from nunchaku.models.linear import AWQW4A16Linear, SVDQW4A4Linear

    prec = precision or file_precision(path)
    if prec is None:
        say(f"FAIL: {path}: quantization_config.weight.dtype is neither int4 nor fp4_e2m1_all "
            "(give --precision)")
        return 1
    seen = []
    orig_psk, orig_gp = tq.patch_scale_key, tq.get_precision

    def watch_psk(model, sd):
        seen[:] = [model, dict(sd)]
        return orig_psk(model, sd)

    tq.patch_scale_key = watch_psk
    tq.get_precision = lambda *a, **k: "fp4" if prec == "nvfp4" else "int4"
    try:
        with file_sized(tq):
            model = tq.NunchakuQwenImageTransformer2DModel.from_pretrained(
                path, torch_dtype=torch.bfloat16, device="cpu")
    except Exception as e:
        tb = traceback.extract_tb(e.__traceback__)
        pkg = os.path.dirname(os.path.dirname(os.path.dirname(tq.__file__)))
        where = next((fr for fr in reversed(tb) if fr.filename.startswith(pkg)), tb[-1])
        msg = str(e).strip().splitlines()
        say(f"FAIL: {path} ({prec}): {type(e).__name__}: {msg[0] if msg else '(no message)'}")
        for line in msg[1:6]:
            say(f"  {line.strip()}")
        say(f"  at {where.filename}:{where.lineno}: {where.line}")
        diff = diagnose(seen, prec)
        for line in diff[:10]:
            say(f"  {line}")
        if len(diff) > 10:
            say(f"  ... {len(diff) - 10} more")
        return 1
    finally:
        tq.patch_scale_key, tq.get_precision = orig_psk, orig_gp
    file_sd = seen[1]
    model_keys = set(model.state_dict())
    w4a4 = [m for m in model.modules() if isinstance(m, SVDQW4A4Linear)]
    w4a16 = [m for m in model.modules() if isinstance(m, AWQW4A16Linear)]
    wtscale = sum(1 for k in file_sd if k.endswith(".wtscale"))
    filled = sum(1 for k in model_keys if k not in file_sd)
    rank = w4a4[0].rank if w4a4 else 0
    print(f"{path}: ok: {prec} rank {rank}, {len(model.transformer_blocks)} blocks, "
          f"{len(file_sd)} file keys = {len(model_keys) - filled} parameters loaded strictly"
          f" + {wtscale} wtscale (GEMM alpha); {filled} wcscales absent (ones); "
          f"{len(w4a4)} SVDQW4A4Linear, {len(w4a16)} AWQW4A16Linear")
    return 0


def main(argv):
    args, precision, probe = [], None, False
    it = iter(argv)
    for a in it:
        if a == "--precision":
            precision = next(it, None)
            if precision not in ("int4", "nvfp4"):
                say("error: --precision expects int4 or nvfp4")
                return 2
        elif a == "--probe":
            probe = True
        elif a in ("-h", "--help"):
            print(__doc__)
            return 0
        elif a.startswith("-"):
            say(f"error: unknown option '{a}'")
            return 2
        else:
            args.append(a)
    if not args and not probe:
        say("error: no FILE (usage: nunchaku_load.py [--precision int4|nvfp4] FILE...)")
        return 2
    torch, tq, reason = import_nunchaku()
    if reason:
        say(f"not available: {reason}")
        return SKIP
    if probe:
        print(f"nunchaku: {os.path.dirname(os.path.dirname(os.path.dirname(tq.__file__)))}")
        return 0
    rc = 0
    for path in args:
        rc = max(rc, load_one(torch, tq, path, precision))
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
