"""Golden bundles: inputs, weights and expected outputs that another runtime
(the Swift harness, a device) recomputes and compares. Format: docs/formats.md.

A bundle is a directory holding manifest.json and one raw little-endian file per
tensor. Writing is atomic: the directory appears complete or not at all.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pocketml._arrays import ALL_DTYPES, canonical_dtype, is_torch_tensor
from pocketml._publish import publish, staged_directory

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


def _is_attribute_value(value) -> bool:
    """What both readers parse: strings, finite numbers, bools and lists of them."""
    if isinstance(value, (str, bool)):
        return True
    if isinstance(value, (int, float)):
        return math.isfinite(value)
    return isinstance(value, (list, tuple)) and all(_is_attribute_value(v) for v in value)


def _validate_checks(checks, sizes: dict) -> list:
    """sizes: tensor name -> element count. A bundle must ask something, and each
    check must compare at least one element: nothing compared would read as passed."""
    if not checks:
        raise ValueError("checks: expected at least one check, got none")
    validated = []
    for i, check in enumerate(checks):
        missing = {"name", "op", "inputs", "expected"} - set(check)
        if missing:
            raise ValueError(f"checks[{i}]: expected keys name, op, inputs, expected, got no {sorted(missing)}")
        for ref in list(check["inputs"]) + [check["expected"]]:
            if ref not in sizes:
                raise ValueError(f"checks[{i}] ({check['name']}): tensor {ref!r} is not in the bundle")
        if sizes[check["expected"]] == 0:
            raise ValueError(f"checks[{i}] ({check['name']}): expected tensor {check['expected']!r} is empty")
        attrs = dict(check.get("attrs", {}))
        for key, value in attrs.items():
            if not _is_attribute_value(value):
                raise ValueError(f"checks[{i}] ({check['name']}): attrs[{key!r}] must be a string, a finite "
                                 f"number, a bool or a list of them, got {value!r}")
        tolerance = check.get("tolerance", {"max_abs": 0.0, "max_rel": 0.0})
        bounds = {key: float(tolerance.get(key, 0.0)) for key in ("max_abs", "max_rel")}
        for key, bound in bounds.items():
            if not (math.isfinite(bound) and bound >= 0):
                raise ValueError(f"checks[{i}] ({check['name']}): tolerance {key} must be finite and >= 0, "
                                 f"got {bound}")
        validated.append({"name": check["name"], "op": check["op"], "inputs": list(check["inputs"]),
                          "attrs": attrs, "expected": check["expected"], "tolerance": bounds})
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

    sizes = {tensor_name: math.prod(entry["shape"]) for tensor_name, entry in entries.items()}
    manifest = {"format": FORMAT, "version": VERSION, "name": name, "producer": f"pocketml {__version__}",
                "tensors": entries, "checks": _validate_checks(checks, sizes)}

    with staged_directory(path, path.name) as staging:
        for file, data in blobs.items():
            (staging / file).write_bytes(data)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        publish(staging, path)
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
    try:
        return _read_bundle(path, manifest)
    except BundleError:
        raise
    except (KeyError, TypeError) as exc:
        raise BundleError(f"{manifest_path}: missing or malformed field ({exc!r})") from None
    except ValueError as exc:  # a check that _validate_checks refuses
        raise BundleError(f"{manifest_path}: {exc}") from None


def _read_bundle(path: Path, manifest: dict) -> GoldenBundle:
    tensors, dtypes = {}, {}
    for tensor_name, entry in manifest["tensors"].items():
        dtype = entry["dtype"]
        if dtype not in ALL_DTYPES:
            raise BundleError(f"{path}: tensor {tensor_name!r} has unknown dtype {dtype!r}")
        if entry["file"] != os.path.basename(entry["file"]) or entry["file"] in ("", ".", ".."):
            raise BundleError(f"{path}: tensor {tensor_name!r}: file {entry['file']!r} is not a file of the bundle")
        file = path / entry["file"]
        if not file.is_file():
            raise BundleError(f"{path}: tensor {tensor_name!r}: missing file {entry['file']}")
        if not all(isinstance(d, int) and d >= 0 for d in entry["shape"]):
            raise BundleError(f"{path}: tensor {tensor_name!r}: shape {entry['shape']} is not a list of sizes")
        data = file.read_bytes()
        expected_size = math.prod(entry["shape"]) * _ITEM_SIZE[dtype]  # Python ints: no wrap-around
        if len(data) != expected_size:
            raise BundleError(f"{path}: tensor {tensor_name!r}: shape {entry['shape']} {dtype} needs "
                              f"{expected_size} bytes, {entry['file']} has {len(data)}")
        if hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError(f"{path}: tensor {tensor_name!r}: sha256 mismatch for {entry['file']} (corrupt file)")
        tensors[tensor_name] = np.frombuffer(data, dtype=_STORAGE[dtype]).reshape(entry["shape"])
        dtypes[tensor_name] = dtype
    checks = _validate_checks(manifest["checks"], {name: array.size for name, array in tensors.items()})
    return GoldenBundle(manifest["name"], tensors, dtypes, checks, manifest.get("producer", ""), path)
