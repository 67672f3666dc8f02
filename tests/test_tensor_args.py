"""Zero-copy views of NumPy arrays and torch tensors, and the errors for what kernels cannot take."""

import numpy as np
import pytest
import torch

from pocketml._native import core

NUMPY_DTYPES = {"fp32": np.float32, "fp16": np.float16, "int8": np.int8, "uint8": np.uint8,
                "int32": np.int32, "int64": np.int64}
TORCH_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16, "int8": torch.int8,
                "uint8": torch.uint8, "int32": torch.int32, "int64": torch.int64}


@pytest.mark.parametrize("name", NUMPY_DTYPES)
def test_numpy_arrays_are_viewed_without_copy(name):
    a = np.zeros((3, 5), dtype=NUMPY_DTYPES[name])
    d = core.describe_tensor(a)
    assert d["dtype"] == name
    assert d["shape"] == (3, 5) and d["strides"] == (5, 1)
    assert d["data_ptr"] == a.ctypes.data
    assert d["contiguous"] and d["writable"]


@pytest.mark.parametrize("name", TORCH_DTYPES)
def test_torch_tensors_are_viewed_without_copy(name):
    t = torch.zeros(4, 6, dtype=TORCH_DTYPES[name])
    d = core.describe_tensor(t)
    assert d["dtype"] == name
    assert d["data_ptr"] == t.data_ptr()


def test_strided_views_keep_their_strides():
    t = torch.zeros(2, 8, 4).transpose(1, 2)
    d = core.describe_tensor(t)
    assert d["shape"] == (2, 4, 8) and d["strides"] == (32, 1, 4)
    assert not d["contiguous"]
    a = np.zeros((6, 10), np.float32)[1:, ::3]
    d = core.describe_tensor(a)
    assert d["shape"] == (5, 4) and d["strides"] == (10, 3)
    assert d["data_ptr"] == a.ctypes.data


def test_tensor_requiring_grad_is_viewed_without_copy():
    t = torch.ones(3, requires_grad=True)
    assert core.describe_tensor(t)["data_ptr"] == t.data_ptr()


def test_read_only_numpy_array_is_marked_read_only():
    a = np.arange(4, dtype=np.float32)
    a.flags.writeable = False
    d = core.describe_tensor(a)
    assert d["writable"] is False


def test_zero_dim_and_empty():
    assert core.describe_tensor(np.array(1.0, np.float32))["shape"] == ()
    assert core.describe_tensor(torch.empty(0, 3))["shape"] == (0, 3)


@pytest.mark.parametrize("value, got", [
    (np.zeros(3, np.float64), "float64"),
    (np.zeros(3, np.bool_), "bool8"),
    (torch.zeros(3, dtype=torch.complex64), "complex64"),
    (np.zeros(3, np.uint16), "uint16"),
    (torch.zeros(3, dtype=torch.float8_e4m3fn), "DLPack code 10, 8 bits"),  # was "code108"
])
def test_unsupported_dtype_names_argument_expected_and_given(value, got):
    with pytest.raises(TypeError, match=rf"argument 'w': expected dtype fp32, fp16, bf16, int8, uint8, int32 or int64, got {got}"):
        core.describe_tensor(value, "w")


@pytest.mark.parametrize("value, got", [
    (np.zeros(3, object), "object"), (np.zeros(3, "datetime64[s]"), r"datetime64\[s\]"), (np.zeros(3, "U1"), "<U1"),
])
def test_numpy_dtypes_without_a_dlpack_form_are_named(value, got):  # a bare BufferError before
    with pytest.raises(TypeError, match=rf"argument 'w': expected a floating-point or integer dtype of at most 64 bits, "
                                        rf"got {got}"):
        core.describe_tensor(value, "w")


@pytest.mark.parametrize("value, got", [([1.0, 2.0], "list"), (3.0, "float"), ("x", "str")])
def test_non_arrays_are_rejected(value, got):
    with pytest.raises(TypeError, match=rf"argument 'x': expected a NumPy array or torch tensor, got {got}"):
        core.describe_tensor(value)


def test_numpy_arrays_the_kernels_cannot_read_are_refused_by_name():
    with pytest.raises(TypeError, match="argument 'w': expected native .* byte order, got a big-endian array"):
        core.describe_tensor(np.zeros(3, ">f4"), "w")
    odd = np.ndarray(shape=(3,), dtype=np.float32, buffer=np.zeros(16, np.uint8), strides=(5,))
    with pytest.raises(ValueError, match="argument 'w': expected strides that are multiples of the element size, "
                                         "got a stride of 5 bytes for 4-byte elements"):
        core.describe_tensor(odd, "w")


def test_numpy_subclasses_and_torch_parameters_are_viewed_without_copy(tmp_path):
    m = np.memmap(tmp_path / "a.bin", dtype=np.float32, mode="w+", shape=(4, 2))
    assert core.describe_tensor(m)["data_ptr"] == m.ctypes.data
    p = torch.nn.Parameter(torch.ones(2, 3))
    d = core.describe_tensor(p)
    assert d["data_ptr"] == p.data_ptr() and d["shape"] == (2, 3)


def test_tensors_without_memory_or_export_are_refused_with_the_reason():
    zeros = torch._efficientzerotensor(70000)  # elements but no storage: a kernel read address 0
    with pytest.raises(ValueError, match="argument 'x': expected a tensor with memory"):
        core.describe_tensor(zeros, "x")
    with pytest.raises(BufferError, match="QUInt/QInt types are not supported"):  # was SystemError
        core.describe_tensor(torch.quantize_per_tensor(torch.ones(4), 0.1, 0, torch.qint8), "x")


def test_negated_torch_view_is_refused_not_read_without_its_sign():
    with pytest.raises(ValueError, match="argument 'x': expected a tensor without torch's negative bit"):
        core.describe_tensor(torch._neg_view(torch.ones(3)), "x")


class FakeDeviceTensor:
    """Stands in for a tensor on an accelerator, so the check runs on machines without one."""

    def __init__(self, device_type, device_id=0):
        self.device = (device_type, device_id)

    def __dlpack_device__(self):
        return self.device

    def __dlpack__(self, **kwargs):  # pragma: no cover - must never be reached
        raise AssertionError("exported a tensor that is not on the CPU")


@pytest.mark.parametrize("device, name", [((2, 0), "cuda:0"), ((2, 3), "cuda:3"), ((8, 0), "mps:0")])
def test_accelerator_tensors_are_rejected_before_export(device, name):
    with pytest.raises(ValueError, match=rf"argument 'k': expected a CPU tensor, got a tensor on {name}"):
        core.describe_tensor(FakeDeviceTensor(*device), "k")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_real_cuda_tensor_is_rejected():  # pragma: no cover
    with pytest.raises(ValueError, match="expected a CPU tensor"):
        core.describe_tensor(torch.zeros(3, device="cuda"))
