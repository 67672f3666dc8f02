"""Golden bundles: inputs, weights and expected outputs that another runtime
(the Swift harness, a device) recomputes and compares. Format: docs/formats.md.

A bundle is a directory holding manifest.json and one raw little-endian file per
tensor. Writing is atomic: the directory appears complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocketml._arrays import ALL_DTYPES, canonical_dtype, is_torch_tensor

FORMAT = "pocketml-golden-bundle"
VERSION = 1
MANIFEST = "manifest.json"
_ITEM_SIZE = {"fp32": 4, "fp16": 2, "bf16": 2, "int8": 1, "uint8": 1, "int32": 4, "int64": 8}
_STORAGE = {"fp32": "<f4", "fp16": "<f2", "bf16": "<u2", "int8": "i1", "uint8": "u1", "int32": "<i4", "int64": "<i8"}


class BundleError(ValueError):
    """A golden bundle that is missing, corrupt or inconsistent."""


@dataclass
class GoldenBundle:
    name: str
    tensors: dict  # name -> NumPy array (bf16 as its uint16 bit patterns)
    dtypes: dict  # name -> pocketml dtype name
    checks: list
    producer: str = ""
    path: Path | None = field(default=None, repr=False)


def _tensor_bytes(value) -> tuple[str, tuple[int, ...], bytes]:
    if is_torch_tensor(value):
        import torch

        value = value.detach().cpu().contiguous()
        dtype = canonical_dtype(value.dtype)
        array = (value.view(torch.int16) if dtype == "bf16" else value).numpy()
    elif isinstance(value, np.ndarray):
        dtype = canonical_dtype(value.dtype)
        array = value
    else:
        raise TypeError(f"tensors: expected NumPy arrays or torch tensors, got {type(value).__name__}")
    return dtype, tuple(int(d) for d in array.shape), np.ascontiguousarray(array).astype(_STORAGE[dtype]).tobytes()


def _validate_checks(checks, names) -> list:
    validated = []
    for i, check in enumerate(checks):
        missing = {"name", "op", "inputs", "expected"} - set(check)
        if missing:
            raise ValueError(f"checks[{i}]: expected keys name, op, inputs, expected, got no {sorted(missing)}")
        for ref in list(check["inputs"]) + [check["expected"]]:
            if ref not in names:
                raise ValueError(f"checks[{i}] ({check['name']}): tensor {ref!r} is not in the bundle")
        tolerance = check.get("tolerance", {"max_abs": 0.0, "max_rel": 0.0})
        validated.append({"name": check["name"], "op": check["op"], "inputs": list(check["inputs"]),
                          "attrs": dict(check.get("attrs", {})), "expected": check["expected"],
                          "tolerance": {"max_abs": float(tolerance.get("max_abs", 0.0)),
                                        "max_rel": float(tolerance.get("max_rel", 0.0))}})
    return validated


def golden(path, name: str, tensors: dict, checks: list, *, overwrite: bool = False) -> Path:
    """Write a golden bundle directory at `path`.

    `tensors` maps names to NumPy arrays or torch tensors; `checks` is a list of
    dicts {name, op, inputs: [tensor names], attrs: {...}, expected: tensor name,
    tolerance: {max_abs, max_rel}}. An element passes when
    |got - expected| <= max_abs + max_rel * |expected|.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"argument 'path': expected a new directory, got existing {str(path)!r} "
                              "(pass overwrite=True to replace it)")
    entries, blobs = {}, {}
    for tensor_name, value in tensors.items():
        if not tensor_name.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"tensors: expected names of letters, digits, '_' and '.', got {tensor_name!r}")
        dtype, shape, data = _tensor_bytes(value)
        file = f"{tensor_name}.bin"
        entries[tensor_name] = {"file": file, "dtype": dtype, "shape": list(shape),
                                "sha256": hashlib.sha256(data).hexdigest()}
        blobs[file] = data
    from pocketml import __version__

    manifest = {"format": FORMAT, "version": VERSION, "name": name, "producer": f"pocketml {__version__}",
                "tensors": entries, "checks": _validate_checks(checks, entries)}

    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        staging.chmod(0o755)  # mkdtemp's 0700 would hide the bundle from other users
        for file, data in blobs.items():
            (staging / file).write_bytes(data)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if path.exists():
            shutil.rmtree(path)
        os.replace(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return path


def load_golden(path) -> GoldenBundle:
    """Read and verify a bundle: format and version, every file's size and sha256."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a golden bundle (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{manifest_path}: invalid JSON ({exc})") from exc
    if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
        raise BundleError(f"{manifest_path}: expected format {FORMAT!r} version {VERSION}, "
                          f"got {manifest.get('format')!r} version {manifest.get('version')!r}")
    tensors, dtypes = {}, {}
    for tensor_name, entry in manifest["tensors"].items():
        dtype = entry["dtype"]
        if dtype not in ALL_DTYPES:
            raise BundleError(f"{path}: tensor {tensor_name!r} has unknown dtype {dtype!r}")
        file = path / entry["file"]
        if not file.is_file():
            raise BundleError(f"{path}: tensor {tensor_name!r}: missing file {entry['file']}")
        data = file.read_bytes()
        expected_size = int(np.prod(entry["shape"], dtype=np.int64)) * _ITEM_SIZE[dtype]
        if len(data) != expected_size:
            raise BundleError(f"{path}: tensor {tensor_name!r}: shape {entry['shape']} {dtype} needs "
                              f"{expected_size} bytes, {entry['file']} has {len(data)}")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError(f"{path}: tensor {tensor_name!r}: sha256 mismatch for {entry['file']} (corrupt file)")
        tensors[tensor_name] = np.frombuffer(data, dtype=_STORAGE[dtype]).reshape(entry["shape"])
        dtypes[tensor_name] = dtype
    checks = _validate_checks(manifest["checks"], tensors)
    return GoldenBundle(manifest["name"], tensors, dtypes, checks, manifest.get("producer", ""), path)
