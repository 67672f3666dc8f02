"""Golden bundles: the byte format, atomic writing, corruption detection, and the
Swift validator run on bundles this process writes."""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from pocketml.export import BundleError, golden, load_golden
from pocketml.export.standard_bundles import write_standard_bundles

REPO = Path(__file__).resolve().parents[1]


def small_bundle(path, **kwargs):
    x = np.arange(6, dtype=np.float32).reshape(2, 3) / 3
    return golden(path, "small", {"x": x, "y": torch.from_numpy(x).to(torch.bfloat16)},
                  [{"name": "to bf16", "op": "convert", "inputs": ["x"], "attrs": {"dtype": "bf16"},
                    "expected": "y", "tolerance": {"max_abs": 0, "max_rel": 0}}], **kwargs)


def test_fixed_byte_vector(tmp_path):
    path = golden(tmp_path / "b", "vector", {"v": np.array([1.0, -2.0], np.float32),
                                             "h": torch.tensor([1.0, 0.5], dtype=torch.bfloat16)},
                  [{"name": "identity", "op": "convert", "inputs": ["v"], "attrs": {"dtype": "fp32"}, "expected": "v"}])
    assert (path / "v.bin").read_bytes() == bytes.fromhex("0000803f000000c0")  # little-endian fp32
    assert (path / "h.bin").read_bytes() == bytes.fromhex("803f003f")  # bf16 bit patterns
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["format"] == "pocketml-golden-bundle" and manifest["version"] == 1
    assert manifest["tensors"]["v"] == {"file": "v.bin", "dtype": "fp32", "shape": [2],
                                        "sha256": hashlib.sha256(bytes.fromhex("0000803f000000c0")).hexdigest()}


def test_round_trip(tmp_path):
    bundle = load_golden(small_bundle(tmp_path / "b"))
    assert bundle.name == "small" and bundle.dtypes == {"x": "fp32", "y": "bf16"}
    np.testing.assert_array_equal(bundle.tensors["x"], np.arange(6, dtype=np.float32).reshape(2, 3) / 3)
    assert bundle.checks[0]["attrs"] == {"dtype": "bf16"}


def test_existing_directory_is_not_replaced_silently(tmp_path):
    small_bundle(tmp_path / "b")
    with pytest.raises(FileExistsError, match="argument 'path'"):
        small_bundle(tmp_path / "b")
    small_bundle(tmp_path / "b", overwrite=True)


def test_failed_write_leaves_nothing(tmp_path):
    class Exploding:
        shape = (2,)

    with pytest.raises(TypeError, match="argument 'tensors': expected NumPy arrays or torch tensors, got Exploding"):
        golden(tmp_path / "b", "bad", {"x": np.zeros(2, np.float32), "boom": Exploding()}, [])
    with pytest.raises(TypeError, match=r"argument 'tensors\['d'\]': expected one of fp32, .*, got dtype\('float64'\)"):
        golden(tmp_path / "b", "bad", {"d": np.zeros(2)}, [])
    with pytest.raises(ValueError, match="argument 'tensors': expected names of letters, digits, '_' and '.', got 3"):
        golden(tmp_path / "b", "bad", {3: np.zeros(2, np.float32)}, [])
    with pytest.raises(ValueError, match="argument 'tensors': expected dict, got list"):
        golden(tmp_path / "b", "bad", [np.zeros(2, np.float32)], [])
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="tensor 'missing' is not in the bundle"):
        golden(tmp_path / "b", "bad", {"x": np.zeros(2, np.float32)},
               [{"name": "c", "op": "convert", "inputs": ["missing"], "expected": "x"}])
    assert list(tmp_path.iterdir()) == []


def test_bundles_that_could_not_fail_or_be_read_are_refused(tmp_path):
    x = np.ones((2, 3), np.float32)

    def write(check, tensors=None):
        golden(tmp_path / "b", "bad", tensors or {"x": x}, [] if check is None else [
            {"name": "c", "op": "convert", "inputs": ["x"], "expected": "x", **check}])

    cases = [
        (None, "checks: expected at least one check"),
        ({"tolerance": {"max_abs": float("nan")}}, "tolerance max_abs must be finite and >= 0, got nan"),
        ({"tolerance": {"max_rel": -1}}, "tolerance max_rel must be finite and >= 0, got -1.0"),
        ({"attrs": {"note": None}}, r"attrs\['note'\] must be a string, a finite number, a bool or a list"),
        ({"attrs": {"nested": {"a": 1}}}, r"attrs\['nested'\]"),
    ]
    for check, message in cases:
        with pytest.raises(ValueError, match=message):
            write(check)
    with pytest.raises(ValueError, match="expected tensor 'e' is empty"):
        golden(tmp_path / "b", "bad", {"x": x, "e": np.ones((0, 3), np.float32)},
               [{"name": "c", "op": "convert", "inputs": ["x"], "expected": "e"}])
    assert list(tmp_path.iterdir()) == []

    path = small_bundle(tmp_path / "b")
    manifest = json.loads((path / "manifest.json").read_text())
    for edit, message in [
        (lambda m: m["tensors"]["x"].update(shape=[2**32, 2**32]), "needs 73786976294838206464 bytes"),
        (lambda m: m["tensors"]["x"].update(file="../x.bin"), "file '../x.bin' is not a file of the bundle"),
        (lambda m: m.pop("checks"), "missing field 'checks'"),
        (lambda m: m["checks"][0].update(tolerance={"max_abs": -1, "max_rel": 0}), "tolerance max_abs must be finite"),
        # Keys the format lists are required, as Swift requires them: a misspelt one must not become a default.
        (lambda m: m["checks"][0].update(tolerance={"max_abs": 0, "maxrel": 0.1}),
         r"expected tolerance keys max_abs and max_rel, got \['max_abs', 'maxrel'\]"),
        (lambda m: m["checks"][0].pop("attrs"), "expected keys attrs and tolerance"),
        (lambda m: m.pop("producer"), "missing field 'producer'"),
        (lambda m: m.update(producer=None), "producer: expected str, got NoneType"),
        # What Swift's decoder refuses, Python's reader refuses too (it took true / 1.0 for 1, split "x" into
        # ['x']), and malformed values are BundleErrors, not AttributeError / OverflowError.
        (lambda m: m.update(version=True), "version True"),
        (lambda m: m.update(version=1.0), "version 1.0"),
        (lambda m: m.update(name=5), "name: expected str, got int"),
        (lambda m: m.update(tensors=[]), "tensors: expected dict, got list"),
        (lambda m: m["checks"][0].update(inputs="x"), r"inputs: expected list or tuple, got str"),
        (lambda m: m["checks"][0].update(tolerance="tight"), "tolerance: expected dict, got str"),
        (lambda m: m["checks"][0].update(tolerance={"max_abs": True, "max_rel": 0}),
         "tolerance max_abs: expected int or float"),
        (lambda m: m["checks"][0].update(tolerance={"max_abs": 10**400, "max_rel": 0}),
         "tolerance max_abs must be finite"),
        (lambda m: m["checks"][0].update(attrs={"n": 10**400}), r"attrs\['n'\] must be"),
        (lambda m: m["tensors"]["x"].update(shape=[1] * 33), "is not a list of at most 32 sizes"),
    ]:
        edited = json.loads(json.dumps(manifest))
        edit(edited)
        (path / "manifest.json").write_text(json.dumps(edited))
        with pytest.raises(BundleError, match=message):
            load_golden(path)
    for text, message in (("[]", "expected a JSON object, got list"), ("[" * 100000, "invalid JSON")):
        (path / "manifest.json").write_text(text)
        with pytest.raises(BundleError, match=message):
            load_golden(path)
    (path / "manifest.json").write_bytes(b"\xff\xfe{}")
    with pytest.raises(BundleError, match="invalid JSON"):
        load_golden(path)
    # Python's json keeps the last of equal keys, Swift's decoder the first: they would check different tensors.
    duplicated = json.dumps(manifest).replace('"tensors": {', '"tensors": {"x": {"file": "y.bin"}, ', 1)
    (path / "manifest.json").write_text(duplicated)
    with pytest.raises(BundleError, match=r"invalid JSON \(duplicate key 'x'\)"):
        load_golden(path)


def test_reader_refuses_a_symlinked_manifest_and_names_non_regular_tensor_files(tmp_path):
    path = small_bundle(tmp_path / "b")
    (path / "manifest.json").rename(tmp_path / "manifest.json")
    (path / "manifest.json").symlink_to(tmp_path / "manifest.json")
    with pytest.raises(BundleError, match="manifest.json: is a symbolic link"):
        load_golden(path)
    (path / "manifest.json").unlink()
    (tmp_path / "manifest.json").rename(path / "manifest.json")
    (path / "x.bin").unlink()
    (path / "x.bin").mkdir()
    with pytest.raises(BundleError, match="file x.bin is not a regular file"):
        load_golden(path)


def test_reader_refuses_symlinked_tensor_files_and_sizes_them_unread(tmp_path):
    path = small_bundle(tmp_path / "b")
    outside = tmp_path / "outside.bin"
    (path / "x.bin").rename(outside)
    (path / "x.bin").symlink_to(outside)
    with pytest.raises(BundleError, match="file x.bin is a symbolic link"):
        load_golden(path)
    (path / "x.bin").unlink()
    with open(path / "x.bin", "wb") as f:
        f.truncate(1 << 40)  # sparse: reading it whole would take a terabyte
    with pytest.raises(BundleError, match="has 1099511627776"):
        load_golden(path)


def test_writer_replaces_a_dangling_symlink_only_when_asked(tmp_path):
    x = np.ones(2, np.float32)
    checks = [{"name": "c", "op": "convert", "inputs": ["x"], "expected": "x"}]
    link = tmp_path / "b"
    link.symlink_to(tmp_path / "nowhere")
    with pytest.raises(FileExistsError):
        golden(link, "b", {"x": x}, checks)
    assert link.is_symlink()
    golden(link, "b", {"x": x}, checks, overwrite=True)
    assert not link.is_symlink() and load_golden(link).tensors["x"].tolist() == [1.0, 1.0]
    with pytest.raises(ValueError, match=r"inputs: expected list or tuple, got str 'x'"):
        golden(tmp_path / "c", "c", {"x": x}, [dict(checks[0], inputs="x")])


def test_corruption_is_detected(tmp_path):
    path = small_bundle(tmp_path / "b")
    data = bytearray((path / "x.bin").read_bytes())
    data[0] ^= 1
    (path / "x.bin").write_bytes(bytes(data))
    with pytest.raises(BundleError, match="sha256 mismatch for x.bin"):
        load_golden(path)
    (path / "x.bin").write_bytes(bytes(data[:-4]))
    with pytest.raises(BundleError, match=r"needs 24 bytes, x.bin has 20"):
        load_golden(path)
    (path / "x.bin").unlink()
    with pytest.raises(BundleError, match="missing file x.bin"):
        load_golden(path)
    with pytest.raises(BundleError, match="not a golden bundle"):
        load_golden(tmp_path)


def swift_validate(*bundles):
    swift = shutil.which("swift") or "/opt/swift/usr/bin/swift"
    if not os.path.exists(swift):
        pytest.skip("Swift toolchain not installed")
    native = REPO / "build" / "native"
    if not (native / "libpocketml.so").exists() and not (native / "libpocketml.dylib").exists():
        pytest.skip("C ABI library not built (make native)")
    command = [swift, "run", "--package-path", str(REPO / "swift"), "-Xcc", f"-I{REPO / 'csrc' / 'include'}",
               "-Xlinker", f"-L{native}", "-Xlinker", "-rpath", "-Xlinker", str(native),
               "pocketml-validate", *map(str, bundles)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def standard_bundles(tmp_path_factory):
    return write_standard_bundles(tmp_path_factory.mktemp("golden"))


def test_swift_validator_passes_fresh_bundles(standard_bundles):
    result = swift_validate(*standard_bundles)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ok   fp32->fp16" in result.stdout and "FAIL" not in result.stdout


def test_swift_validator_fails_clearly_on_corruption(standard_bundles, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(standard_bundles[0], broken)
    data = bytearray((broken / "x.bin").read_bytes())
    data[10] ^= 0x40
    (broken / "x.bin").write_bytes(bytes(data))
    result = swift_validate(broken)
    assert result.returncode == 2
    assert "sha256 mismatch for x.bin" in result.stderr
    missing = tmp_path / "missing"
    shutil.copytree(standard_bundles[0], missing)
    (missing / "x_bf16.bin").unlink()
    result = swift_validate(missing)
    assert result.returncode == 2 and "missing file x_bf16.bin" in result.stderr


def test_swift_validator_fails_on_wrong_expectation(tmp_path):
    x = np.linspace(-3, 3, 50, dtype=np.float32)
    wrong = torch.from_numpy(x).to(torch.float16)
    wrong[7] += 1
    path = golden(tmp_path / "wrong", "wrong", {"x": x, "y": wrong},
                  [{"name": "wrong", "op": "convert", "inputs": ["x"], "attrs": {"dtype": "fp16"}, "expected": "y"}])
    result = swift_validate(path)
    assert result.returncode == 1
    assert "FAIL wrong" in result.stdout and "1 elements out of tolerance" in result.stdout


def test_publishing_syncs_every_file_before_the_rename(tmp_path, monkeypatch):
    # A crash after the rename must not leave empty or short files under the published name.
    import pocketml._publish as publishing

    events = []
    sync, rename = publishing._sync, publishing.os.rename
    monkeypatch.setattr(publishing, "_sync", lambda path: (events.append(("sync", os.path.basename(path))), sync(path)))
    monkeypatch.setattr(publishing.os, "rename", lambda a, b: (events.append(("rename", Path(b).name)), rename(a, b)))
    small_bundle(tmp_path / "b")
    published = events.index(("rename", "b"))
    assert {("sync", "x.bin"), ("sync", "manifest.json")} <= set(events[:published])


def test_cli_replaces_earlier_bundles_but_never_other_files(tmp_path, capsys):
    from pocketml.cli import main

    (tmp_path / "convert").mkdir()
    (tmp_path / "convert" / "important.txt").write_text("mine")  # was deleted, and the command exited 0
    assert main(["golden", "--out", str(tmp_path)]) == 2
    assert "'--out'" in capsys.readouterr().err and (tmp_path / "convert" / "important.txt").read_text() == "mine"
    (tmp_path / "convert" / "important.txt").unlink()
    (tmp_path / "convert").rmdir()
    assert main(["golden", "--out", str(tmp_path)]) == 0
    assert main(["golden", "--out", str(tmp_path)]) == 0  # its own bundles are regenerated in place
    assert load_golden(tmp_path / "convert").name
    (tmp_path / "file").write_text("")  # the error named an internal staging directory under it
    assert main(["golden", "--out", str(tmp_path / "file")]) == 2
    assert f"argument '--out': expected a directory, got the file '{tmp_path / 'file'}'" in capsys.readouterr().err
