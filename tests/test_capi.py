"""The C ABI, called through ctypes exactly as Swift or another host would."""

import ctypes
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import pocketml

OK, INVALID_ARGUMENT, TYPE = 0, 1, 2
FP32, FP16, BF16, INT8 = 0, 1, 2, 3


@pytest.fixture(scope="module")
def lib():
    path = Path(pocketml.__file__).parent / "lib" / "libpocketml.so"
    if not path.exists():  # editable installs keep the library in the build tree
        candidates = sorted(Path(pocketml.__file__).parents[2].glob("build/*/install/platlib/pocketml/lib/libpocketml.so"))
        assert candidates, "libpocketml.so was not built"
        path = candidates[0]
    lib = ctypes.CDLL(str(path))
    lib.pocketml_last_error.restype = ctypes.c_char_p
    lib.pocketml_version.restype = ctypes.c_char_p
    lib.pocketml_convert.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, ctypes.c_size_t]
    return lib


def test_version_and_info(lib):
    assert lib.pocketml_version().decode() == pocketml.__version__
    out = ctypes.c_char_p()
    assert lib.pocketml_info_json(ctypes.byref(out)) == OK
    info = json.loads(out.value)
    assert info["version"] == pocketml.__version__
    assert info["supported_isas"] == pocketml.supported_isas()


def test_convert_matches_python(lib, rng):
    x = rng.standard_normal(1001).astype(np.float32)
    out = np.empty(1001, np.float16)
    assert lib.pocketml_convert(x.ctypes.data, FP32, out.ctypes.data, FP16, x.size) == OK
    np.testing.assert_array_equal(out, pocketml.convert(x, "fp16"))


def test_bad_dtype_returns_type_status_and_message(lib):
    x = np.zeros(4, np.float32)
    y = np.zeros(4, np.float32)
    assert lib.pocketml_convert(x.ctypes.data, FP32, y.ctypes.data, INT8, 4) == TYPE
    assert b"argument 'dst_dtype': expected dtype fp32, fp16, bf16, got int8" in lib.pocketml_last_error()
    assert lib.pocketml_convert(x.ctypes.data, INT8, y.ctypes.data, FP32, 4) == TYPE  # named 'x' before
    assert b"argument 'src_dtype': expected dtype fp32, fp16, bf16, got int8" in lib.pocketml_last_error()
    assert lib.pocketml_convert(x.ctypes.data, FP32, y.ctypes.data, FP16, 2**62) == INVALID_ARGUMENT
    assert b"argument 'count': expected sizes whose byte count fits int64" in lib.pocketml_last_error()
    assert lib.pocketml_convert(x.ctypes.data, 99, y.ctypes.data, FP16, 4) == TYPE
    assert b"argument 'src_dtype': expected a pocketml_dtype value (0..6), got 99" in lib.pocketml_last_error()


def test_null_pointer_returns_status_instead_of_crashing(lib):
    y = np.zeros(4, np.float16)
    assert lib.pocketml_convert(None, FP32, y.ctypes.data, FP16, 4) == INVALID_ARGUMENT
    assert lib.pocketml_last_error() == b"argument 'src': expected a non-NULL pointer, got NULL"
    x = np.zeros(4, np.float32)
    assert lib.pocketml_convert(x.ctypes.data, FP32, y.ctypes.data, FP16, 2**64 - 1) == INVALID_ARGUMENT  # a -1 length
    assert b"argument 'count': expected at most 2^63 - 1 elements" in lib.pocketml_last_error()
    assert lib.pocketml_info_json(None) == INVALID_ARGUMENT


def test_success_clears_the_last_error(lib):
    lib.pocketml_set_isa(b"no-such-isa")
    assert lib.pocketml_last_error() != b""
    n = ctypes.c_int32()
    assert lib.pocketml_get_num_threads(ctypes.byref(n)) == OK and n.value >= 1
    assert lib.pocketml_last_error() == b""


def test_set_isa_and_threads(lib):
    name = ctypes.c_char_p()
    assert lib.pocketml_active_isa(ctypes.byref(name)) == OK
    previous = name.value
    try:
        assert lib.pocketml_set_isa(b"scalar") == OK
        assert lib.pocketml_active_isa(ctypes.byref(name)) == OK and name.value == b"scalar"
        assert lib.pocketml_set_isa(b"mmx") == INVALID_ARGUMENT
    finally:
        assert lib.pocketml_set_isa(previous) == OK  # the library's ISA choice is process-wide
    assert lib.pocketml_set_num_threads(0) == INVALID_ARGUMENT
    assert b"argument 'num_threads'" in lib.pocketml_last_error()


def test_error_handler_is_called(lib):
    seen = []
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    handler = handler_type(lambda status, message, user: seen.append((status, message)))
    lib.pocketml_set_error_handler(handler, None)
    try:
        assert lib.pocketml_dtype_size(42, ctypes.byref(ctypes.c_size_t())) == TYPE
    finally:
        lib.pocketml_set_error_handler(None, None)
    assert seen and seen[0][0] == TYPE and b"pocketml_dtype" in seen[0][1]


def test_a_handler_calling_pocketml_keeps_the_failing_call_s_message(lib):
    handler_type = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)
    handler = handler_type(lambda status, message, user: lib.pocketml_dtype_size(0, ctypes.byref(ctypes.c_size_t())))
    lib.pocketml_set_error_handler(handler, None)
    try:
        assert lib.pocketml_dtype_size(42, ctypes.byref(ctypes.c_size_t())) == TYPE
        assert b"pocketml_dtype value (0..6), got 42" in lib.pocketml_last_error()  # the handler's success cleared it
    finally:
        lib.pocketml_set_error_handler(None, None)


_EXIT_DURING_A_JOB = r"""
#include <pocketml/pocketml.h>
#include <pthread.h>
#include <stdint.h>
#include <time.h>
static float src[1 << 20];
static uint16_t dst[1 << 20];
static void* convert_forever(void* unused) {
  for (;;) pocketml_convert(src, POCKETML_FP32, dst, POCKETML_FP16, 1 << 20);
  return unused;
}
int main(void) {
  pocketml_set_num_threads(3);
  pthread_t thread;
  pthread_create(&thread, 0, convert_forever, 0);
  struct timespec pause = {0, 20 * 1000 * 1000};
  nanosleep(&pause, 0);
  return 0; /* exit while the other thread is inside a parallel job */
}
"""


@pytest.mark.skipif(shutil.which("cc") is None, reason="needs a C compiler")
def test_a_host_exits_while_another_thread_is_inside_a_job(lib, tmp_path):
    # Exit destroyed the thread pool: its workers quit mid-job and the other thread waited forever on a
    # condition variable the destructor was destroying (8 of 10 runs hung). The pool is never destroyed now.
    source = tmp_path / "exit.c"
    source.write_text(_EXIT_DURING_A_JOB)
    library = Path(lib._name)
    include = Path(__file__).parents[1] / "csrc" / "include"
    subprocess.run(["cc", "-O1", f"-I{include}", str(source), f"-L{library.parent}", f"-Wl,-rpath,{library.parent}",
                    "-lpocketml", "-lpthread", "-o", str(tmp_path / "exit")], check=True)
    for _ in range(5):
        assert subprocess.run([str(tmp_path / "exit")], timeout=60).returncode == 0


def test_arguments_are_checked_when_there_is_nothing_to_compute(lib):
    # count 0 returned OK for any dtype, where Python refuses an empty int8 array
    assert lib.pocketml_convert(None, INT8, None, FP16, 0) == TYPE
    assert b"argument 'src_dtype': expected dtype fp32, fp16, bf16, got int8" in lib.pocketml_last_error()
    assert lib.pocketml_convert(None, FP32, None, FP16, 0) == OK

