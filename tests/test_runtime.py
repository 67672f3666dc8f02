import json
import os
import subprocess
import sys

import numpy as np
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
    assert "POCKETML_ISA: expected one of scalar, avx2, avx512, neon (or unset), got 'sse9'" in out.stderr


def test_use_isa_switches_and_restores():
    before = pocketml.active_isa()
    with pocketml.use_isa("scalar"):
        assert pocketml.active_isa() == "scalar"
        assert pocketml.info()["active_isa"] == "scalar"
    assert pocketml.active_isa() == before


def test_overlapping_use_isa_blocks_of_two_threads_restore_the_original():
    import threading

    before = pocketml.active_isa()
    entered, leave_first = threading.Event(), threading.Event()

    def first():
        with pocketml.use_isa("scalar"):
            entered.set()
            leave_first.wait()

    thread = threading.Thread(target=first)
    thread.start()
    entered.wait()
    with pocketml.use_isa("avx2" if "avx2" in pocketml.supported_isas() else "scalar"):
        leave_first.set()
        thread.join()  # the first block ends inside the second
    assert pocketml.active_isa() == before  # was left on scalar


def test_outputs_are_cpu_tensors_whatever_torch_s_default_device():
    import torch

    torch.set_default_device("meta")
    try:
        out = pocketml.convert(torch.ones(4, device="cpu"), "fp16")
    finally:
        torch.set_default_device(None)
    assert out.device.type == "cpu" and out.tolist() == [1.0] * 4


def test_set_isa_rejects_unknown_and_unsupported():
    with pytest.raises(ValueError, match="argument 'isa'"):
        pocketml.set_isa("mmx")
    for bad in (None, 2):  # were pybind's unlabelled "incompatible function arguments"
        with pytest.raises(TypeError, match="argument 'isa': expected a variant name"):
            pocketml.set_isa(bad)
    unsupported = [i for i in ("avx2", "avx512", "neon") if i not in pocketml.supported_isas()]
    for name in unsupported:
        with pytest.raises(ValueError, match="variants this machine runs"):
            pocketml.set_isa(name)


def test_thread_count_round_trips():
    original = pocketml.get_num_threads()
    try:
        pocketml.set_num_threads(np.int64(3))
        assert pocketml.get_num_threads() == 3
        assert pocketml.info()["num_threads"] == 3
        pocketml.set_num_threads(1)
        assert pocketml.get_num_threads() == 1
    finally:
        pocketml.set_num_threads(original)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-2, ValueError), (5000, ValueError), (2**40, ValueError),
                                        (1.5, TypeError), (True, TypeError)])
def test_thread_count_rejects_bad_values(bad, error):
    # One range for every bad count: 0 read [1, 2^31) and 5000 "1 to 4096".
    message = r"expected an integer in \[1, 4097\)" if error is ValueError else "num_threads"
    with pytest.raises(error, match=message):
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
    out = run_python("import pocketml; n = pocketml.get_num_threads(); pocketml.set_num_threads(n); print(n)",
                     POCKETML_NUM_THREADS="5000")
    assert out.stdout.strip() == "4096"  # what set_num_threads accepts
    default = run_python("import pocketml; print(pocketml.get_num_threads())").stdout.strip()
    for loose in ("4x", "abc", "0"):  # "4x" was read as 4
        out = run_python("import pocketml; print(pocketml.get_num_threads())", POCKETML_NUM_THREADS=loose)
        assert out.stdout.strip() == default, loose


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
    out = subprocess.run([sys.executable, "-m", "pocketml", "selftest", "--elements", "99999999999999"],
                         capture_output=True, text=True)  # a MemoryError traceback and selftest's mismatch status
    assert out.returncode == 2 and out.stderr.startswith("pocketml: error:") and "Traceback" not in out.stderr


def _torch_runs_openmp():
    torch = pytest.importorskip("torch")
    if "OpenMP" not in torch.__config__.parallel_info():
        pytest.skip("this torch build runs no OpenMP runtime")
    return torch


def test_kernels_on_torch_openmp_threads_give_identical_results():
    torch = _torch_runs_openmp()
    from pocketml import attention, quant

    torch.manual_seed(0)
    w = quant.quantize(torch.randn(2100, 1024), bits=4, group_size=32)  # > 1 MiB: GEMVs split too
    x, x1 = torch.randn(130, 1024), torch.randn(1, 1024)
    q, k, v = (torch.randn(1, 4, 200, 64) for _ in range(3))
    results = {}
    try:
        for on_torch in (True, False):
            assert pocketml.use_torch_threads(on_torch) is on_torch
            assert pocketml.runtime.on_torch_threads() is on_torch
            results[on_torch] = (quant.matmul(x, w), quant.matmul(x1, w),
                                 attention.scaled_dot_product_attention(q, k, v, is_causal=True))
    finally:
        pocketml.use_torch_threads(True)
    for a, b in zip(results[True], results[False]):
        assert torch.equal(a, b)


def test_use_torch_threads_wants_a_bool():
    with pytest.raises(TypeError, match="enabled"):
        pocketml.use_torch_threads(1)


@pytest.mark.parametrize("setting, expected", [(None, "True"), ("0", "False")])
def test_torch_threads_from_the_first_call_after_torch_loads_unless_declined(setting, expected):
    _torch_runs_openmp()
    env = {} if setting is None else {"POCKETML_TORCH_THREADS": setting}
    # NumPy inputs too: torch's threads spin after its own operators whatever pocketml is given.
    out = run_python(
        "import numpy as np, pocketml; from pocketml import quant\n"
        "w = quant.quantize(np.ones((8, 32), np.float32), bits=8, group_size=32)\n"
        "quant.matmul(np.ones((1, 32), np.float32), w)\n"
        "without_torch = pocketml.runtime.on_torch_threads()\n"
        "import torch\n"
        "before = pocketml.runtime.on_torch_threads()\n"
        "quant.matmul(np.ones((1, 32), np.float32), w)\n"
        "print(without_torch, before, pocketml.runtime.on_torch_threads())", **env)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "False", expected]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
@pytest.mark.parametrize("setup", ["numpy", "torch", "torch first used in the child"])
def test_a_forked_child_runs_parallel_kernels(setup):
    # The child has none of the parent's pool or OpenMP threads: it used to wait for
    # them forever, and must not bind torch's OpenMP team (whose threads it lacks
    # too) even when pocketml first meets torch there.
    out = run_python(f"""
import os, numpy as np, pocketml
from pocketml import quant
setup = {setup!r}
pocketml.set_num_threads(2)
w = quant.quantize(np.random.default_rng(0).standard_normal((512, 512), dtype=np.float32), bits=4, group_size=64)
x = np.random.default_rng(1).standard_normal((256, 512), dtype=np.float32)
expected = np.asarray(quant.matmul(x, w))
if setup != "numpy":
    import torch
    torch.mm(torch.ones(512, 512), torch.ones(512, 512))  # torch's OpenMP team now exists
if setup == "torch":
    assert np.array_equal(np.asarray(quant.matmul(torch.from_numpy(x), w)), expected)
pid = os.fork()
if pid == 0:
    as_input = torch.from_numpy if setup != "numpy" else (lambda a: a)
    same = np.array_equal(np.asarray(quant.matmul(as_input(x), w)), expected)
    os._exit(0 if same and not pocketml.runtime.on_torch_threads() else 3)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
""")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "0"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork()")
def test_a_forked_multiprocessing_worker_importing_pocketml_keeps_its_own_threads():
    # The parent ran torch's OpenMP threads before pocketml was ever imported, so no
    # fork handler of pocketml's saw the fork: the worker must still not bind them.
    _torch_runs_openmp()
    out = run_python("""
import multiprocessing as mp, torch
torch.set_num_threads(2)
torch.mm(torch.ones(512, 512), torch.ones(512, 512))

def work(queue):
    import numpy as np, pocketml
    from pocketml import quant
    pocketml.set_num_threads(2)
    w = quant.quantize(np.ones((512, 512), np.float32), bits=4, group_size=64)
    y = quant.matmul(np.ones((256, 512), np.float32), w)  # torch's own parallel ops would hang here
    queue.put((float(y[0, 0]), pocketml.runtime.on_torch_threads()))

ctx = mp.get_context("fork")
queue = ctx.Queue()
worker = ctx.Process(target=work, args=(queue,))
worker.start()
print(*queue.get(timeout=60))
worker.join()
""")
    assert out.returncode == 0, out.stderr
    value, on_torch = out.stdout.split()
    assert abs(float(value) - 512) < 1 and on_torch == "False"


@pytest.mark.parametrize("work", ["kernels", "loader"])
def test_daemon_threads_inside_pocketml_calls_let_the_process_exit(work, tmp_path):
    # Python ends a daemon thread that takes the GIL back during shutdown with pthread_exit; its
    # unwind through pybind11's ~gil_scoped_release aborted the process (exit status 134).
    script = f"""
import threading, time, numpy as np, pocketml
if {work!r} == "kernels":
    x = np.ones(1 << 20, np.float32)
    def run():
        while True:
            pocketml.convert(x, "fp16")
else:
    ds = pocketml.data.write_tokens({str(tmp_path / "ds")!r}, [np.arange(5000) % 100] * 64, vocab_size=100, eos_id=0,
                                   overwrite=True)
    loader = pocketml.data.TokenLoader(ds, 64, 4, prefetch=4, num_threads=2, return_tensors="np")
    def run():  # mostly waiting in the loader's native next()
        while True:
            for _ in loader:
                pass
threading.Thread(target=run, daemon=True).start()
time.sleep(0.3)
"""
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0, result.stderr[-2000:]
