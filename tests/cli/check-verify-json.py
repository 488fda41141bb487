#!/usr/bin/env python3
"""Checks fx-verify --json output (stdin) against the fx-verify/1 schema of
fx-verify(1): the top-level object, each file's object and each finding."""
import json
import sys

d = json.load(sys.stdin)
def need(obj, key, types):
    assert key in obj, f"missing '{key}' in {sorted(obj)}"
    assert isinstance(obj[key], types), f"'{key}' is {type(obj[key]).__name__}"

need(d, "schema", str)
assert d["schema"] == "fx-verify/1", d["schema"]
need(d, "files", list)
need(d, "errors", int)
need(d, "warnings", int)
need(d, "status", str)
assert d["status"] in ("ok", "findings", "unreadable")
for f in d["files"]:
    need(f, "path", str)
    if "error" in f:
        continue
    for k in ("kind",):
        need(f, k, str)
    for k in ("format", "tool", "recipe", "model"):
        need(f, k, (str, type(None)))
    for k in ("files", "tensors", "bytes"):
        need(f, k, int)
    need(f, "version", (int, type(None)))
    need(f, "params", (dict, type(None)))
    need(f, "inputs", (dict, type(None)))
    need(f, "dtypes", dict)
    need(f, "layers", list)
    need(f, "findings", list)
    for x in f["findings"]:
        for k in ("severity", "check", "where", "message"):
            need(x, k, str)
        assert x["severity"] in ("note", "warning", "error")
print("schema ok")
