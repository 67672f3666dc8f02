"""`swift run pocketml-validate` on freshly written quant_matmul, attention and
transformer_decode bundles: real computations through the C ABI, and clear
failures (never a crash) on bundles that are corrupt or inconsistent."""

import json
import re
import shutil
import sys

import pytest

from pocketml.export.standard_bundles import BUILDERS
from test_golden import swift_validate

OPS = ("quant_matmul", "attention", "transformer_decode")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    return {name: BUILDERS[name](root / name, False) for name in OPS}


def test_every_op_passes_through_the_c_abi(bundles):
    result = swift_validate(*bundles.values())
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "FAIL" not in out
    for name in ("lut1 (lut 1-bit", "affine2_g32 (affine 2-bit", "affine8_g32_sym", "causal_gqa", "decode_4_tokens",
                 "smollm2-135m 2 layers prompt (9 tokens)", "smollm2-135m 2 layers step 4"):
        assert f"ok   {name}" in out, out
    steps = re.findall(r"ok   smollm2-135m 2 layers (?:prompt \(9 tokens\)|step \d).*max abs (\S+)\s+max rel \S+\s+(\S+) ms",
                       out)
    assert len(steps) == 5  # one line per call: the prompt and 4 decode steps, each with its latency
    assert all(0 <= float(err) < 5e-4 and float(ms) > 0 for err, ms in steps), steps


def _copy(bundle, tmp_path, name):
    target = tmp_path / name
    shutil.copytree(bundle, target)
    return target


def _edit_manifest(bundle, edit):
    manifest = json.loads((bundle / "manifest.json").read_text())
    edit(manifest)
    (bundle / "manifest.json").write_text(json.dumps(manifest))


def test_corrupt_bundles_fail_with_clear_messages(bundles, tmp_path):
    flipped = _copy(bundles["transformer_decode"], tmp_path, "flipped")
    data = bytearray((flipped / "layers.1.down_proj.packed.bin").read_bytes())
    data[1234] ^= 0x10
    (flipped / "layers.1.down_proj.packed.bin").write_bytes(bytes(data))
    result = swift_validate(flipped)
    assert result.returncode == 2 and "sha256 mismatch for layers.1.down_proj.packed.bin" in result.stderr, result

    # Consistent files, inconsistent attributes: the validator or the C ABI must refuse them.
    wrong_bits = _copy(bundles["transformer_decode"], tmp_path, "wrong_bits")
    _edit_manifest(wrong_bits, lambda m: m["checks"][0]["attrs"].update({"embedding.bits": 4}))
    result = swift_validate(wrong_bits)
    assert result.returncode == 2, result
    assert "quantized weight 'embedding': weight.packed: expected 1179648 bytes, got 2359296" in result.stderr, result.stderr

    past_cache = _copy(bundles["attention"], tmp_path, "past_cache")
    _edit_manifest(past_cache, lambda m: m["checks"][3]["attrs"].update({"length": 49}))
    result = swift_validate(past_cache)
    assert result.returncode == 2 and "argument 'cache.length': expected 1 (the queries, already appended) to 48, got 49" in result.stderr, result
    assert "check '" in result.stderr.split("argument 'cache.length'")[0], result.stderr  # which check failed

    missing_attr = _copy(bundles["quant_matmul"], tmp_path, "missing_attr")
    _edit_manifest(missing_attr, lambda m: m["checks"][0]["attrs"].pop("bits"))
    result = swift_validate(missing_attr)
    assert result.returncode == 2 and "attrs.bits must be an integer, got nothing" in result.stderr, result


@pytest.mark.skipif(sys.platform == "darwin", reason="Core ML runs the check there")
def test_a_bundle_whose_every_check_is_skipped_is_not_validated(bundles, tmp_path):
    # Its only check runs on Apple platforms alone: the validator printed one skip line and exited 0.
    only_skipped = _copy(bundles["quant_matmul"], tmp_path, "only_skipped")
    (only_skipped / "missing.mlpackage").mkdir()  # present, never opened off Apple platforms
    _edit_manifest(only_skipped, lambda m: m.update(checks=[dict(m["checks"][0], op="coreml_predict", attrs={
        "package": "missing.mlpackage", "feature_names": [f"x{i}" for i in range(len(m["checks"][0]["inputs"]))],
        "output": "y"})]))
    result = swift_validate(only_skipped)
    assert result.returncode == 2 and "every check was skipped, nothing validated" in result.stderr, result


def test_options_are_not_taken_for_bundle_paths(bundles):
    # --bogus was read as a bundle path, and -h among paths skipped validation with status 0.
    for arguments, message in ((["--bogus", bundles["quant_matmul"]], "unknown option '--bogus'"),
                               ([bundles["quant_matmul"], "-h"], "unknown option '-h'")):
        result = swift_validate(*arguments)
        assert result.returncode == 2 and message in result.stderr, result


def test_wrong_expected_logits_fail_the_step(bundles, tmp_path):
    import numpy as np

    from pocketml.export import golden, load_golden

    original = load_golden(bundles["transformer_decode"])
    tensors = {name: np.array(value) for name, value in original.tensors.items()}
    tensors["logits"][-1, 17] += 0.01  # last decode step only
    path = golden(tmp_path / "wrong", "wrong", tensors, original.checks)
    result = swift_validate(path)
    assert result.returncode == 1
    assert "FAIL smollm2-135m 2 layers step 4" in result.stdout and "1 elements out of tolerance" in result.stdout
    assert "ok   smollm2-135m 2 layers step 3" in result.stdout
