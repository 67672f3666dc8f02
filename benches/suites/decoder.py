"""Transformer decoder: SmolLM2-135M-Instruct generating on the CPU.

pocketml's C++ decoder (quantized weights: int8 q/k/embedding, 4-bit LUT v/o,
int4 MLP; see pocketml.decoder.quantize_weights) against the same model in torch
eager fp32 with a preallocated KV cache and scaled_dot_product_attention, over
the dequantized weights (same numbers, 4-8x the bytes). Each sample is one
whole generation (reset, prompt, decode steps), so both peers repeat identical
work and the KV cache never overflows.
"""

import numpy as np
import torch
import torch.nn.functional as F

from harness import Peer
from pocketml import decoder


class TorchDecoder:
    """Llama forward with a KV cache in torch fp32: the peer, not the reference."""

    def __init__(self, config, weights):
        self.c = config
        self.w = {name: w.float() for name, w in weights.items()}
        shape = (config.num_layers, 1, config.num_kv_heads, config.max_seq_len, config.head_dim)
        self.k_cache, self.v_cache = torch.zeros(shape), torch.zeros(shape)
        inv_freq = config.rope_theta ** (-torch.arange(0, config.head_dim, 2, dtype=torch.float64) / config.head_dim)
        angles = torch.outer(torch.arange(config.max_seq_len, dtype=torch.float64), inv_freq)
        self.cos = torch.cat([angles.cos()] * 2, -1).float()
        self.sin = torch.cat([angles.sin()] * 2, -1).float()
        self.length = 0

    def _rope(self, x, start):  # x [1, heads, T, D]
        half = self.c.head_dim // 2
        cos, sin = self.cos[start:start + x.shape[2]], self.sin[start:start + x.shape[2]]
        return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin

    def __call__(self, tokens):
        c, w, t, start = self.c, self.w, len(tokens), self.length
        x = w["embedding"][torch.as_tensor(tokens)]
        for i in range(c.num_layers):
            p = f"layers.{i}."
            h = F.rms_norm(x, (c.hidden_size,), w[p + "attn_norm"], c.rms_norm_eps)
            q = self._rope(F.linear(h, w[p + "q_proj"]).view(1, t, c.num_heads, c.head_dim).transpose(1, 2), start)
            k = self._rope(F.linear(h, w[p + "k_proj"]).view(1, t, c.num_kv_heads, c.head_dim).transpose(1, 2), start)
            v = F.linear(h, w[p + "v_proj"]).view(1, t, c.num_kv_heads, c.head_dim).transpose(1, 2)
            self.k_cache[i, :, :, start:start + t] = k
            self.v_cache[i, :, :, start:start + t] = v
            keys, values = self.k_cache[i, :, :, :start + t], self.v_cache[i, :, :, :start + t]
            mask = torch.ones(t, start + t, dtype=torch.bool).tril(start) if t > 1 else None
            attn = F.scaled_dot_product_attention(q, keys, values, attn_mask=mask, enable_gqa=True)
            x = x + F.linear(attn.transpose(1, 2).reshape(t, -1), w[p + "o_proj"])
            h = F.rms_norm(x, (c.hidden_size,), w[p + "mlp_norm"], c.rms_norm_eps)
            x = x + F.linear(F.silu(F.linear(h, w[p + "gate_proj"])) * F.linear(h, w[p + "up_proj"]), w[p + "down_proj"])
        self.length += t
        return F.linear(F.rms_norm(x, (c.hidden_size,), w["final_norm"], c.rms_norm_eps), w["embedding"])


def run(report, quick: bool) -> None:
    layers = 4 if quick else 30
    prompt_length, steps = 64, 16
    config, weights = decoder.load_smollm2(num_layers=layers, vocab_size=49152, max_seq_len=prompt_length + steps)
    qweights = decoder.quantize_weights(config, weights)
    ours = decoder.TransformerDecoder(config, qweights)
    theirs = TorchDecoder(config, {name: w.float() for name, w in decoder.dequantized(qweights).items()})
    tokens = np.random.default_rng(0).integers(0, config.vocab_size, prompt_length + steps).astype(np.int32)
    with torch.no_grad():
        np.testing.assert_allclose(ours(tokens), theirs(torch.from_numpy(tokens).long()).numpy(), atol=2e-2)

    def generate(model, ids):
        model.reset() if hasattr(model, "reset") else setattr(model, "length", 0)
        model(ids[:prompt_length])
        for i in range(prompt_length, prompt_length + steps):
            model(ids[i:i + 1])

    torch_tokens = torch.from_numpy(tokens).long()
    with torch.no_grad():
        report.compare(f"SmolLM2-135M {layers} layers: prompt {prompt_length} + {steps} decode steps",
                       [Peer("pocketml decoder (int8/int4/LUT4)", lambda: generate(ours, tokens)),
                        Peer("torch fp32 eager + SDPA", lambda: generate(theirs, torch_tokens))],
                       rounds=5 if quick else 9)
