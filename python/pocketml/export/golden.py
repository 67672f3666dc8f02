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
_MAX_DIMS = 32  # NumPy's limit is 64; no bundle tensor needs more than a few
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


def _tensor_bytes(tensor_name: str, value) -> tuple[str, tuple[int, ...], bytes]:
    if not (is_torch_tensor(value) or isinstance(value, np.ndarray)):
        raise TypeError(f"argument 'tensors': expected NumPy arrays or torch tensors, got {type(value).__name__} "
                        f"for {tensor_name!r}")
    dtype = canonical_dtype(value.dtype, f"tensors[{tensor_name!r}]", tuple(_ITEM_SIZE))
    if is_torch_tensor(value):
        import torch

        value = value.detach().cpu().contiguous()
        array = (value.view(torch.int16) if dtype == "bf16" else value).numpy()
    else:
        array = value
    return dtype, tuple(int(d) for d in array.shape), np.ascontiguousarray(array).astype(_STORAGE[dtype]).tobytes()


def _is_attribute_value(value) -> bool:
    """What both readers parse: strings, finite numbers, bools and lists of them
    (integers within int64: Swift reads numbers as Double, Python's json any size)."""
    if isinstance(value, (str, bool)):
        return True
    if isinstance(value, int):
        return abs(value) < 2**63
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, (list, tuple)) and all(_is_attribute_value(v) for v in value)


def _require(value, kinds, what: str):
    """`value` if it is of `kinds` (a bool is no number), else a ValueError naming `what`."""
    if isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds):
        return value
    names = " or ".join(kind.__name__ for kind in kinds)
    raise ValueError(f"{what}: expected {names}, got {type(value).__name__} {str(value)[:60]!r}")


def _tolerance_bound(tolerance: dict, key: str, what: str) -> float:
    bound = _require(tolerance.get(key, 0.0), (int, float), f"{what}: tolerance {key}")
    if isinstance(bound, int) and abs(bound) >= 2**63:
        raise ValueError(f"{what}: tolerance {key} must be finite and >= 0, got {bound}")
    bound = float(bound)
    if not (math.isfinite(bound) and bound >= 0):
        raise ValueError(f"{what}: tolerance {key} must be finite and >= 0, got {bound}")
    return bound


def _validate_checks(checks, sizes: dict, *, written: bool) -> list:
    """sizes: tensor name -> element count. A bundle must ask something, and each
    check must compare at least one element: nothing compared would read as passed.
    A manifest read back (`written`) must hold attrs and both tolerance bounds, as
    Swift's reader requires: a misspelt key must not become a default; golden()'s
    callers may leave them out (no attrs, tolerance 0)."""
    if not checks:
        raise ValueError("checks: expected at least one check, got none")
    validated = []
    for i, check in enumerate(_require(checks, (list, tuple), "checks")):
        _require(check, (dict,), f"checks[{i}]")
        missing = {"name", "op", "inputs", "expected"} - set(check)
        if missing:
            raise ValueError(f"checks[{i}]: expected keys name, op, inputs, expected, got no {sorted(missing)}")
        what = f"checks[{i}] ({_require(check['name'], (str,), f'checks[{i}].name')})"
        _require(check["op"], (str,), f"{what}: op")
        inputs = [_require(ref, (str,), f"{what}: inputs") for ref in _require(check["inputs"], (list, tuple),
                                                                                  f"{what}: inputs")]
        for ref in inputs + [_require(check["expected"], (str,), f"{what}: expected")]:
            if ref not in sizes:
                raise ValueError(f"{what}: tensor {ref!r} is not in the bundle")
        if sizes[check["expected"]] == 0:
            raise ValueError(f"{what}: expected tensor {check['expected']!r} is empty")
        if written and not {"attrs", "tolerance"} <= set(check):
            raise ValueError(f"{what}: expected keys attrs and tolerance, got {sorted(check)}")
        attrs = dict(_require(check.get("attrs", {}), (dict,), f"{what}: attrs"))
        for key, value in attrs.items():
            if not _is_attribute_value(value):
                raise ValueError(f"{what}: attrs[{key!r}] must be a string, a finite number, a bool or a list of "
                                 f"them, got {value!r}")
        tolerance = _require(check.get("tolerance", {}), (dict,), f"{what}: tolerance")
        if written and not {"max_abs", "max_rel"} <= set(tolerance):
            raise ValueError(f"{what}: expected tolerance keys max_abs and max_rel, got {sorted(tolerance)}")
        bounds = {key: _tolerance_bound(tolerance, key, what) for key in ("max_abs", "max_rel")}
        validated.append({"name": check["name"], "op": check["op"], "inputs": inputs, "attrs": attrs,
                          "expected": check["expected"], "tolerance": bounds})
    return validated


def golden(path, name: str, tensors: dict, checks: list, *, overwrite: bool = False) -> Path:
    """Write a golden bundle directory at `path`.

    `tensors` maps names to NumPy arrays or torch tensors; `checks` is a list of
    dicts {name, op, inputs: [tensor names], attrs: {...}, expected: tensor name,
    tolerance: {max_abs, max_rel}}. An element passes when
    |got - expected| <= max_abs + max_rel * |expected|.
    """
    path = Path(path)
    _require(name, (str,), "argument 'name'")
    if os.path.lexists(path) and not overwrite:  # lexists: a dangling symlink is there too
        raise FileExistsError(f"argument 'path': expected a new directory, got existing {str(path)!r} "
                              "(pass overwrite=True to replace it)")
    entries, blobs = {}, {}
    _require(tensors, (dict,), "argument 'tensors'")
    for tensor_name, value in tensors.items():
        if not (isinstance(tensor_name, str) and tensor_name.replace("_", "").replace(".", "").isalnum()):
            raise ValueError(f"argument 'tensors': expected names of letters, digits, '_' and '.', "
                             f"got {tensor_name!r}")
        dtype, shape, data = _tensor_bytes(tensor_name, value)
        file = f"{tensor_name}.bin"
        entries[tensor_name] = {"file": file, "dtype": dtype, "shape": list(shape),
                                "sha256": hashlib.sha256(data).hexdigest()}
        blobs[file] = data
    from pocketml import __version__

    sizes = {tensor_name: math.prod(entry["shape"]) for tensor_name, entry in entries.items()}
    manifest = {"format": FORMAT, "version": VERSION, "name": name, "producer": f"pocketml {__version__}",
                "tensors": entries, "checks": _validate_checks(checks, sizes, written=False)}

    with staged_directory(path, path.name) as staging:
        for file, data in blobs.items():
            (staging / file).write_bytes(data)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False) + "\n")
        publish(staging, path)
    return path


def is_golden_bundle(path) -> bool:
    """Whether `path` is a directory whose manifest names this format (its files unchecked)."""
    try:
        manifest = json.loads((Path(path) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return False
    return isinstance(manifest, dict) and manifest.get("format") == FORMAT and not Path(path).is_symlink()


def require_replaceable_bundle(path, arg: str) -> None:
    """A FileExistsError naming `arg` unless `path` is free or an earlier golden bundle: a
    command that regenerates bundles replaces those, never a user's other files."""
    if os.path.lexists(path) and not is_golden_bundle(path):
        raise FileExistsError(f"argument '{arg}': {str(path)!r} exists and is not a golden bundle; remove it or "
                              "choose another directory")


def _unique_keys(pairs) -> dict:
    """A JSON object whose keys are distinct: json keeps the last of equal keys and
    Swift's decoder the first, so the two readers would check different tensors."""
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        duplicate = next(key for key in keys if keys.count(key) > 1)
        raise ValueError(f"duplicate key {duplicate!r}")
    return dict(pairs)


def load_golden(path) -> GoldenBundle:
    """Read and verify a bundle: format and version, every file's size and sha256."""
    path = Path(path)
    manifest_path = path / MANIFEST
    if manifest_path.is_symlink():  # as a tensor file's: its target may lie outside the bundle
        raise BundleError(f"{manifest_path}: is a symbolic link")
    if not manifest_path.is_file():
        raise BundleError(f"{path}: not a golden bundle (no {MANIFEST})")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"), object_pairs_hook=_unique_keys)
    except (ValueError, RecursionError) as exc:  # json.JSONDecodeError, UnicodeDecodeError, a duplicate key
        raise BundleError(f"{manifest_path}: invalid JSON ({str(exc)[:200]})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{manifest_path}: expected a JSON object, got {type(manifest).__name__}")
    version = manifest.get("version")
    if manifest.get("format") != FORMAT or type(version) is not int or version != VERSION:  # not true, not 1.0
        raise BundleError(f"{manifest_path}: expected format {FORMAT!r} version {VERSION}, "
                          f"got {manifest.get('format')!r} version {version!r}")
    try:
        return _read_bundle(path, manifest)
    except BundleError:
        raise
    except KeyError as exc:
        raise BundleError(f"{manifest_path}: missing field {exc}") from None
    except ValueError as exc:  # a field of the wrong type, or a check that _validate_checks refuses
        raise BundleError(f"{manifest_path}: {exc}") from None


def _read_bundle(path: Path, manifest: dict) -> GoldenBundle:
    name = _require(manifest["name"], (str,), "name")
    producer = _require(manifest["producer"], (str,), "producer")
    tensors, dtypes = {}, {}
    for tensor_name, entry in _require(manifest["tensors"], (dict,), "tensors").items():
        what = f"tensors[{tensor_name!r}]"
        _require(entry, (dict,), what)
        dtype, file_name = _require(entry["dtype"], (str,), f"{what}.dtype"), _require(entry["file"], (str,),
                                                                                         f"{what}.file")
        _require(entry["sha256"], (str,), f"{what}.sha256")
        shape = _require(entry["shape"], (list,), f"{what}.shape")
        if dtype not in ALL_DTYPES:
            raise BundleError(f"{path}: tensor {tensor_name!r} has unknown dtype {dtype!r}")
        if file_name != os.path.basename(file_name) or file_name in ("", ".", ".."):
            raise BundleError(f"{path}: tensor {tensor_name!r}: file {file_name!r} is not a file of the bundle")
        file = path / file_name
        if file.is_symlink():  # its target may lie outside the bundle
            raise BundleError(f"{path}: tensor {tensor_name!r}: file {file_name} is a symbolic link")
        if not file.exists():
            raise BundleError(f"{path}: tensor {tensor_name!r}: missing file {file_name}")
        if not file.is_file():
            raise BundleError(f"{path}: tensor {tensor_name!r}: file {file_name} is not a regular file "
                              "(a directory, a FIFO or a device)")
        if len(shape) > _MAX_DIMS or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise BundleError(f"{path}: tensor {tensor_name!r}: shape {str(shape)[:80]} is not a list of at most "
                              f"{_MAX_DIMS} sizes")
        expected_size = math.prod(shape) * _ITEM_SIZE[dtype]  # Python ints: no wrap-around
        size = file.stat().st_size  # before reading: a huge file is refused unread
        if size != expected_size:
            raise BundleError(f"{path}: tensor {tensor_name!r}: shape {shape} {dtype} needs "
                              f"{expected_size} bytes, {file_name} has {size}")
        data = file.read_bytes()
        if len(data) != expected_size or hashlib.sha256(data).hexdigest() != entry["sha256"]:
            raise BundleError(f"{path}: tensor {tensor_name!r}: sha256 mismatch for {file_name} (corrupt file)")
        tensors[tensor_name] = np.frombuffer(data, dtype=_STORAGE[dtype]).reshape(shape)
        dtypes[tensor_name] = dtype
    checks = _validate_checks(manifest["checks"], {name: array.size for name, array in tensors.items()}, written=True)
    return GoldenBundle(name, tensors, dtypes, checks, producer, path)
