"""The bundles the Swift harness validates in `make test`: one per operation the
C ABI exposes, with expected outputs from an independent implementation (torch)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from pocketml.export.golden import golden


def _convert_bundle(path: Path, overwrite: bool) -> Path:
    import torch

    rng = np.random.default_rng(0)
    values = np.concatenate([
        rng.standard_normal(1000).astype(np.float32) * 100,
        np.array([0.0, -0.0, 65504.0, 65520.0, 1e-8, 2.0 ** -24, np.inf, -np.inf, 3e38], np.float32),
    ])
    x = torch.from_numpy(values)
    half, bf16 = x.to(torch.float16), x.to(torch.bfloat16)
    exact = {"max_abs": 0.0, "max_rel": 0.0}
    checks = [
        {"name": "fp32->fp16", "op": "convert", "inputs": ["x"], "attrs": {"dtype": "fp16"}, "expected": "x_fp16",
         "tolerance": exact},
        {"name": "fp32->bf16", "op": "convert", "inputs": ["x"], "attrs": {"dtype": "bf16"}, "expected": "x_bf16",
         "tolerance": exact},
        {"name": "fp16->fp32", "op": "convert", "inputs": ["x_fp16"], "attrs": {"dtype": "fp32"},
         "expected": "x_fp16_widened", "tolerance": exact},
    ]
    return golden(path, "convert", {"x": x, "x_fp16": half, "x_bf16": bf16, "x_fp16_widened": half.float()},
                  checks, overwrite=overwrite)


def quant_matmul_check(prefix: str, x, qweight, tolerance: dict) -> tuple[dict, dict]:
    """The tensors and check of one quant_matmul: y = x @ dequantize(W)^T in float64.

    Inputs are x then the weight's arrays in the order attrs.arrays names them
    (the layout `pocketml optimize` writes too).
    """
    import torch

    x = torch.as_tensor(x)
    weight = torch.from_numpy(np.asarray(qweight.dequantize("fp32"))).double()
    tensors = {f"{prefix}.x": x, f"{prefix}.y": (x.double() @ weight.T).float()}
    inputs = [f"{prefix}.x"]
    for array_name, array in qweight.arrays().items():
        tensors[f"{prefix}.{array_name}"] = array
        inputs.append(f"{prefix}.{array_name}")
    n, k = qweight.shape
    check = {"name": f"{prefix} ({qweight.kind} {qweight.bits}-bit, group {qweight.group_size})", "op": "quant_matmul",
             "inputs": inputs, "attrs": {"kind": qweight.kind, "bits": qweight.bits, "group_size": qweight.group_size,
                                         "n": n, "k": k, "arrays": list(qweight.arrays())},
             "expected": f"{prefix}.y", "tolerance": tolerance}
    return tensors, check


def _quant_matmul_bundle(path: Path, overwrite: bool) -> Path:
    import torch

    from pocketml.quant import palettize, quantize

    rng = np.random.default_rng(1)
    n, k, m = 48, 96, 5
    weight = rng.standard_normal((n, k)).astype(np.float32)
    x = torch.from_numpy(rng.standard_normal((m, k)).astype(np.float32))
    weights = {
        "affine2_g32": quantize(weight, bits=2, group_size=32),
        "affine3_g32_sym": quantize(weight, bits=3, group_size=32, symmetric=True),
        "affine4_g32": quantize(weight, bits=4, group_size=32),
        "affine4_g96_bf16": quantize(weight, bits=4, group_size=None, scale_dtype="bf16"),
        "affine5_g32_fp32": quantize(weight, bits=5, group_size=32, scale_dtype="fp32"),
        "affine6_g32_mse": quantize(weight, bits=6, group_size=32, method="mse"),
        "affine8_g32_sym": quantize(weight, bits=8, group_size=32, symmetric=True),
        **{f"lut{bits}": palettize(weight, nbits=bits, group_size=16) for bits in (1, 2, 3, 4, 6, 8)},
    }
    tensors, checks = {}, []
    tolerance = {"max_abs": 1e-4, "max_rel": 1e-4}  # fp32 accumulation over K = 96 against float64
    for prefix, qweight in weights.items():
        t, check = quant_matmul_check(prefix, x, qweight, tolerance)
        tensors.update(t)
        checks.append(check)
    t, check = quant_matmul_check("affine4_bf16_x", x.to(torch.bfloat16), weights["affine4_g32"], tolerance)
    tensors.update(t)
    checks.append(check)
    return golden(path, "quant_matmul", tensors, checks, overwrite=overwrite)


def _attention_bundle(path: Path, overwrite: bool) -> Path:
    import torch
    import torch.nn.functional as F

    generator = torch.Generator().manual_seed(2)

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=torch.float64)

    tensors, checks = {}, []
    tolerance = {"max_abs": 2e-5, "max_rel": 1e-4}  # fp32 online softmax against float64 SDPA

    def add(name, q, k, v, expected, attrs):
        for suffix, value in (("q", q), ("k", k), ("v", v), ("out", expected)):
            tensors[f"{name}.{suffix}"] = value.float()
        checks.append({"name": name, "op": "attention", "inputs": [f"{name}.q", f"{name}.k", f"{name}.v"],
                       "attrs": {"scale": 1 / math.sqrt(q.shape[-1]), **attrs}, "expected": f"{name}.out",
                       "tolerance": tolerance})

    # Dense forward: causal GQA (torch's top-left is_causal), no mask, and the bottom-right
    # causal mask of queries appended to a cache (explicit boolean mask for SDPA).
    q, k, v = randn(2, 6, 37, 64), randn(2, 2, 37, 64), randn(2, 2, 37, 64)
    add("causal_gqa", q, k, v, F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True),
        {"mode": "forward", "mask": "causal"})
    q, k, v = randn(1, 4, 5, 32), randn(1, 4, 29, 32), randn(1, 4, 29, 32)
    add("unmasked", q, k, v, F.scaled_dot_product_attention(q, k, v), {"mode": "forward", "mask": "none"})
    q, k, v = randn(1, 8, 7, 48), randn(1, 2, 20, 48), randn(1, 2, 20, 48)
    keep = torch.ones(7, 20, dtype=torch.bool).tril(20 - 7)
    add("causal_bottom_right_gqa", q, k, v, F.scaled_dot_product_attention(q, k, v, attn_mask=keep, enable_gqa=True),
        {"mode": "forward", "mask": "causal_bottom_right"})

    # Decode against a KV cache of capacity 48 holding 33 tokens; the unused slots hold
    # large values that must not leak into the result.
    length, capacity = 33, 48
    for name, query_len in (("decode_1_token", 1), ("decode_4_tokens", 4)):
        q = randn(1, 9, query_len, 64)
        k_cache, v_cache = randn(1, 3, capacity, 64), randn(1, 3, capacity, 64)
        k_cache[:, :, length:], v_cache[:, :, length:] = 1e4, -1e4
        keep = torch.ones(query_len, length, dtype=torch.bool).tril(length - query_len)
        expected = F.scaled_dot_product_attention(q, k_cache[:, :, :length], v_cache[:, :, :length], attn_mask=keep,
                                                  enable_gqa=True)
        add(name, q, k_cache, v_cache, expected, {"mode": "decode", "length": length})
    return golden(path, "attention", tensors, checks, overwrite=overwrite)


def _transformer_decode_bundle(path: Path, overwrite: bool) -> Path:
    """SmolLM2-135M-Instruct's first 2 layers and first 4096 tokens, quantized by
    pocketml; logits from the float64 reference over the dequantized weights."""
    from pocketml import decoder

    config, weights = decoder.load_smollm2(num_layers=2, vocab_size=4096, max_seq_len=32)
    qweights = decoder.quantize_weights(config, weights)
    prompt_length, steps = 9, 4
    tokens = np.random.default_rng(3).integers(0, config.vocab_size, prompt_length + steps).astype(np.int32)
    logits = decoder.reference_logits(config, decoder.dequantized(qweights), tokens)
    tensors, inputs, attrs = {"tokens": tokens, "logits": logits.float()}, ["tokens"], {}
    for name, value in qweights.items():
        if isinstance(value, np.ndarray):  # norms
            tensors[name] = value
            inputs.append(name)
            continue
        for array_name, array in value.arrays().items():
            tensors[f"{name}.{array_name}"] = array
            inputs.append(f"{name}.{array_name}")
        attrs.update({f"{name}.kind": value.kind, f"{name}.bits": value.bits, f"{name}.group_size": value.group_size,
                      f"{name}.n": value.shape[0], f"{name}.k": value.shape[1]})
    check = {"name": "smollm2-135m 2 layers", "op": "transformer_decode", "inputs": inputs, "expected": "logits",
             "attrs": {**config.to_dict(), "prompt_length": prompt_length, **attrs},
             # fp32 kernels against float64 on logits of magnitude ~70 (measured max abs error ~2e-5)
             "tolerance": {"max_abs": 5e-4, "max_rel": 1e-4}}
    return golden(path, "transformer_decode", tensors, [check], overwrite=overwrite)


BUILDERS = {"convert": _convert_bundle, "quant_matmul": _quant_matmul_bundle, "attention": _attention_bundle,
            "transformer_decode": _transformer_decode_bundle}


def write_standard_bundles(out_dir, overwrite: bool = True) -> list[Path]:
    out_dir = Path(out_dir)
    return [build(out_dir / name, overwrite) for name, build in BUILDERS.items()]
