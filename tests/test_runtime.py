import json
import os
import subprocess
import sys

import pytest

import pocketml


def run_python(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=120)


def test_info_describes_build_and_machine():
    info = pocketml.info()
    assert info["version"] == pocketml.__version__ == "0.1.0"
    assert info["build_type"] == "Release"
    assert info["compiler"]
    assert "scalar" in info["compiled_isas"]
    assert info["supported_isas"] == pocketml.supported_isas()
    assert info["active_isa"] == pocketml.active_isa()
    assert info["num_threads"] == pocketml.get_num_threads() >= 1
    if sys.platform != "darwin":
        assert info["metal_available"] is False and info["metal_device"] == ""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="x86-64 variants")
def test_best_variant_is_selected_by_default():
    out = run_python("import pocketml; print(pocketml.active_isa())", POCKETML_ISA="")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == pocketml.supported_isas()[-1]


@pytest.mark.parametrize("forced", pocketml.supported_isas())
def test_environment_forces_a_variant(forced):
    out = run_python("import pocketml; print(pocketml.active_isa())", POCKETML_ISA=forced)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == forced


def test_environment_naming_a_missing_variant_fails_clearly():
    missing = "neon" if os.uname().machine == "x86_64" else "avx512"
    out = run_python("import pocketml", POCKETML_ISA=missing)
    assert out.returncode != 0
    assert f"POCKETML_ISA={missing} is not available on this machine" in out.stderr


def test_environment_naming_an_unknown_variant_fails_clearly():
    out = run_python("import pocketml", POCKETML_ISA="sse9")
    assert out.returncode != 0
    assert "expected one of scalar, avx2, avx512, neon, got 'sse9'" in out.stderr


def test_use_isa_switches_and_restores():
    before = pocketml.active_isa()
    with pocketml.use_isa("scalar"):
        assert pocketml.active_isa() == "scalar"
        assert pocketml.info()["active_isa"] == "scalar"
    assert pocketml.active_isa() == before


def test_set_isa_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="argument 'isa'"):
        pocketml.set_isa("mmx")
    unsupported = [i for i in ("avx2", "avx512", "neon") if i not in pocketml.supported_isas()]
    for name in unsupported:
        with pytest.raises(ValueError, match="variants this machine runs"):
            pocketml.set_isa(name)


def test_thread_count_round_trips():
    original = pocketml.get_num_threads()
    try:
        pocketml.set_num_threads(3)
        assert pocketml.get_num_threads() == 3
        assert pocketml.info()["num_threads"] == 3
        pocketml.set_num_threads(1)
        assert pocketml.get_num_threads() == 1
    finally:
        pocketml.set_num_threads(original)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_thread_count_rejects_bad_values(bad, error):
    with pytest.raises(error, match="num_threads"):
        pocketml.set_num_threads(bad)


def test_keep_warm_scopes_nest_and_end_on_error():
    import numpy as np

    from pocketml._native import core

    rng = np.random.default_rng(0)
    qt = pocketml.quant.quantize(rng.standard_normal((300, 256)).astype(np.float32), bits=4, group_size=64)
    x = rng.standard_normal((1, 256)).astype(np.float32)
    cold = pocketml.quant.matmul(x, qt)
    assert core.warm_scopes() == 0
    with pocketml.keep_warm():
        assert core.warm_scopes() == 1
        with pocketml.keep_warm():
            assert core.warm_scopes() == 2
            warm = pocketml.quant.matmul(x, qt)
        assert core.warm_scopes() == 1
    assert core.warm_scopes() == 0
    assert warm.tobytes() == cold.tobytes()
    with pytest.raises(RuntimeError, match="inside"):
        with pocketml.keep_warm():
            raise RuntimeError("inside")
    assert core.warm_scopes() == 0


def test_default_threads_follow_the_environment():
    out = run_python("import pocketml; print(pocketml.get_num_threads())", POCKETML_NUM_THREADS="3")
    assert out.stdout.strip() == "3"


def test_cli_info_table_and_json():
    table = subprocess.run([sys.executable, "-m", "pocketml", "info"], capture_output=True, text=True, check=True)
    assert "ISA selected" in table.stdout and pocketml.active_isa() in table.stdout
    assert "backend metal" in table.stdout
    data = json.loads(subprocess.run([sys.executable, "-m", "pocketml", "info", "--json"], capture_output=True,
                                     text=True, check=True).stdout)
    assert data["version"] == pocketml.__version__


def test_cli_selftest_checks_every_variant():
    out = subprocess.run([sys.executable, "-m", "pocketml", "selftest", "--elements", "1001", "--repeats", "1"],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    for isa in pocketml.supported_isas():
        assert isa in out.stdout
    assert "MISMATCH" not in out.stdout
