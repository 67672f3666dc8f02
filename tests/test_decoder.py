"""The C++ transformer decoder (csrc/models) on real SmolLM2-135M-Instruct weights
against the float64 torch reference, on every ISA variant, plus its bad-input errors."""

import threading

import numpy as np
import pytest
import torch

from pocketml import decoder

PROMPT, STEPS = 11, 5


@pytest.fixture(scope="module")
def smollm2():
    config, weights = decoder.load_smollm2(num_layers=2, vocab_size=4096, max_seq_len=24)
    qweights = decoder.quantize_weights(config, weights)
    tokens = np.random.default_rng(7).integers(0, config.vocab_size, PROMPT + STEPS).astype(np.int32)
    expected = decoder.reference_logits(config, decoder.dequantized(qweights), tokens).numpy()
    return config, weights, qweights, tokens, expected


def test_unpermute_inverts_llama_cpp_rope_permutation(rng):
    heads, head_dim, cols = 3, 8, 5
    hf = rng.standard_normal((heads * head_dim, cols)).astype(np.float32)
    # llama.cpp's converter: within each head, rows i and i + head_dim/2 become neighbours.
    gguf_order = hf.reshape(heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(hf.shape)
    np.testing.assert_array_equal(gguf_order[1], hf[head_dim // 2])
    np.testing.assert_array_equal(decoder.unpermute_rope_rows(gguf_order, heads), hf)


def test_prompt_then_decode_steps_match_float64_reference(smollm2, isa):
    config, _, qweights, tokens, expected = smollm2
    model = decoder.TransformerDecoder(config, qweights)
    got = [model(tokens[:PROMPT])] + [model(tokens[i:i + 1]) for i in range(PROMPT, PROMPT + STEPS)]
    assert model.length == PROMPT + STEPS
    got = np.concatenate(got)
    scale = np.abs(expected).max()
    assert 10 < scale < 1000  # real logits, not a degenerate model
    np.testing.assert_allclose(got, expected, atol=5e-4, rtol=1e-4)
    # the cache matters: a step without its prefix gives different logits
    model.reset()
    assert np.abs(model(tokens[PROMPT:PROMPT + 1]) - expected[PROMPT]).max() > 0.1


def test_quantization_error_is_small_against_fp32_weights(smollm2):
    config, weights, _, tokens, expected = smollm2
    full = decoder.reference_logits(config, {k: torch.tensor(v, dtype=torch.float64) for k, v in weights.items()}, tokens)
    cosine = torch.nn.functional.cosine_similarity(full, torch.from_numpy(expected), dim=-1)
    # 4-bit LUT v/o and 4-bit MLP over two layers: close, but not equal, to fp32
    assert cosine.min() > 0.98 and cosine.mean() > 0.995, cosine


def test_bad_inputs_raise_clear_errors(smollm2):
    config, _, qweights, _, _ = smollm2
    model = decoder.TransformerDecoder(config, qweights)
    with pytest.raises(ValueError, match=r"argument 'tokens\[1\]': expected a token id in \[0, 4096\), got 4096"):
        model([5, 4096])
    assert model.length == 0  # nothing was appended
    model(np.zeros(20, np.int32))
    with pytest.raises(ValueError, match="argument 'tokens': expected at most 4 tokens"):
        model(np.zeros(5, np.int32))
    with pytest.raises(ValueError, match="argument 'tokens': expected at least one token, got 0"):
        model([])
    with pytest.raises(ValueError, match="argument 'config.num_kv_heads': expected a divisor of num_heads = 9"):
        decoder.TransformerDecoder(decoder.DecoderConfig(**{**config.to_dict(), "num_kv_heads": 4}), qweights)
    huge_cache = decoder.DecoderConfig(**{**config.to_dict(), "max_seq_len": 1 << 40})  # petabytes: refused at once
    with pytest.raises(MemoryError, match="config.max_seq_len = 1099511627776: the KV cache needs"):
        decoder.TransformerDecoder(huge_cache, qweights)
    swapped = {**qweights, "layers.1.q_proj": qweights["layers.1.k_proj"]}
    with pytest.raises(ValueError, match=r"argument 'layers\[1\].q_proj': expected a weight of shape \(576, 576\)"):
        decoder.TransformerDecoder(config, swapped)
    with pytest.raises(TypeError, match="argument 'tokens'"):
        model._native.forward(np.zeros(1, np.int64), np.zeros((1, config.vocab_size), np.float32))
    model.reset()
    with pytest.raises(ValueError, match=r"argument 'tokens': expected ids in \[0, 4096\), got 4294967301"):
        model(np.array([2**32 + 5]))  # int32 would read token 5
    with pytest.raises(TypeError, match="argument 'tokens': expected integer token ids, got dtype float64"):
        model([5.9])


def test_configs_and_inputs_that_would_overflow_or_mislead_are_refused(smollm2):
    config, _, qweights, tokens, _ = smollm2
    # quantize_weights' fixed mix named an argument it does not have, and no weight.
    narrow = {"layers.0.v_proj": np.ones((32, 64), np.float32)}
    with pytest.raises(ValueError, match=r"argument 'weights': 'layers.0.v_proj' \(32, 64\) does not fit this mix"):
        decoder.quantize_weights(config, narrow)
    for change, message in [({"max_seq_len": 2**58}, "max_seq_len \\* .* that fits in 64 bits"),
                            ({"num_heads": 2**62 + 32, "num_kv_heads": 2**62 + 32}, "num_heads \\* head_dim"),
                            ({"rms_norm_eps": float("inf")}, "a finite rms_norm_eps > 0")]:
        with pytest.raises(ValueError, match=message):  # wrapped sizes passed the shape checks and crashed
            decoder.TransformerDecoder(decoder.DecoderConfig(**{**config.to_dict(), **change}), qweights)
    with pytest.raises(TypeError, match="argument 'config.num_heads': expected an int, got 4.5"):
        decoder.DecoderConfig(**{**config.to_dict(), "num_heads": 4.5})
    with pytest.raises(ValueError, match="expected the weights of config.num_layers = 3 layers, got no layers.2"):
        decoder.TransformerDecoder(decoder.DecoderConfig(**{**config.to_dict(), "num_layers": 3}), qweights)
    model = decoder.TransformerDecoder(config, qweights)
    with pytest.raises(ValueError, match=r"argument 'tokens': expected one sequence \[T\] \(or \[1, T\]\), got shape \(2, 2\)"):
        model(tokens[:4].reshape(2, 2))
    np.testing.assert_array_equal(model(tokens[None, :3]), decoder.TransformerDecoder(config, qweights)(tokens[:3]))


def test_one_decoder_shared_by_threads_runs_one_call_at_a_time(smollm2):
    # forward releases the GIL; two threads in one decoder used to corrupt the heap.
    config, _, qweights, tokens, _ = smollm2
    model = decoder.TransformerDecoder(config, qweights)
    errors = []

    def work(count):
        try:
            for _ in range(30):
                if model.length + count > config.max_seq_len:
                    model.reset()
                model(tokens[:count])
        except ValueError as exc:  # the other thread filled the cache between the check and the call
            if "at most" not in str(exc):
                errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in (1, 5)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and 0 < model.length <= config.max_seq_len


def test_full_smollm2_predicts_the_obvious_next_word():
    """All 30 layers in HF layout: only the right q/k row order gives a sensible model."""
    config, weights = decoder.load_smollm2(num_layers=30, vocab_size=49152)
    tokenizer = decoder.smollm2_tokenizer()
    ids = tokenizer.encode("The capital of France is Paris. The capital of Germany is Berlin. "
                           "The capital of Spain is").ids
    logits = decoder.reference_logits(config, {k: torch.tensor(v, dtype=torch.float64) for k, v in weights.items()}, ids)
    assert tokenizer.decode([int(logits[-1].argmax())]).strip() == "Madrid"


def _tiny_gguf(path, fields=(), hidden=64, heads=4, kv_heads=2, ffn=96, vocab=50, layers=1):
    """A small Llama GGUF of fp32 tensors; `fields` (key, value) override the header."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    header = {"llama.block_count": layers, "llama.embedding_length": hidden, "llama.feed_forward_length": ffn,
              "llama.attention.head_count": heads, "llama.attention.head_count_kv": kv_heads,
              "llama.vocab_size": vocab, **dict(fields)}
    for key, value in header.items():
        writer.add_string(key, value) if isinstance(value, str) else writer.add_uint32(key, value)
    writer.add_float32("llama.rope.freq_base", 10000.0)
    writer.add_float32("llama.attention.layer_norm_rms_epsilon", 1e-5)
    rng = np.random.default_rng(0)
    kv_rows = kv_heads * (hidden // heads)
    shapes = {"token_embd": (vocab, hidden), "output_norm": (hidden,)}
    for i in range(layers):
        shapes.update({f"blk.{i}.attn_norm": (hidden,), f"blk.{i}.ffn_norm": (hidden,),
                       f"blk.{i}.attn_q": (hidden, hidden), f"blk.{i}.attn_k": (kv_rows, hidden),
                       f"blk.{i}.attn_v": (kv_rows, hidden), f"blk.{i}.attn_output": (hidden, hidden),
                       f"blk.{i}.ffn_gate": (ffn, hidden), f"blk.{i}.ffn_up": (ffn, hidden),
                       f"blk.{i}.ffn_down": (hidden, ffn)})
    for name, shape in shapes.items():
        writer.add_tensor(f"{name}.weight", rng.standard_normal(shape).astype(np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_malformed_gguf_files_raise_clear_errors(tmp_path):
    config, weights = decoder.load_smollm2(1, 50, path=_tiny_gguf(tmp_path / "ok.gguf"))
    assert config.head_dim == 16 and weights["layers.0.k_proj"].shape == (32, 64)
    cases = [  # (header changes, num_layers, vocab_size, message)
        ({"fields": [("llama.attention.head_count", "4")]}, 1, 50,
         "expected a scalar llama.attention.head_count of type"),  # was read as the byte '4' = 52
        ({"fields": [("llama.attention.head_count_kv", 0)]}, 1, 50,
         "expected llama.attention.head_count_kv >= 1, got 0"),  # was a ZeroDivisionError
        ({"heads": 3}, 1, 50, "expected head counts dividing the hidden size into even heads"),
        ({"fields": [("llama.vocab_size", 80)]}, 1, 80, r"expected tensor token_embd.weight of shape \(80, 64\)"),
        ({"fields": [("llama.block_count", 2)]}, 2, 50, "expected a tensor blk.1.attn_norm.weight, got none"),
    ]
    for changes, num_layers, vocab, message in cases:
        path = _tiny_gguf(tmp_path / "bad.gguf", **changes)
        with pytest.raises(ValueError, match=message):
            decoder.load_smollm2(num_layers, vocab, path=path)
    data = (tmp_path / "ok.gguf").read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 4096])  # the last tensors' bytes are gone
    with pytest.raises(ValueError, match="GGUF file"):
        decoder.load_smollm2(1, 50, path=tmp_path / "cut.gguf")


def test_reference_logits_refuse_the_token_ids_the_decoder_refuses(tmp_path):
    config, weights = decoder.load_smollm2(1, 50, path=_tiny_gguf(tmp_path / "ok.gguf"))
    weights = {k: torch.tensor(v, dtype=torch.float64) for k, v in weights.items()}
    for tokens in ([-1], [1.7], [50], [[1, 2]]):  # -1 read the last row, 1.7 token 1: golden logits of nothing
        with pytest.raises(ValueError, match=r"argument 'tokens': expected a 1-D list of token ids in \[0, 50\)"):
            decoder.reference_logits(config, weights, tokens)
    assert decoder.reference_logits(config, weights, np.array([3, 4], np.uint8)).shape == (2, 50)
    # load_smollm2's own NumPy arrays, or fp32 tensors, as well (AttributeError 'pow' / a dtype error)
    numpy_weights = decoder.load_smollm2(1, 50, path=_tiny_gguf(tmp_path / "np.gguf"))[1]
    expected = decoder.reference_logits(config, weights, [3, 4])
    assert torch.equal(decoder.reference_logits(config, numpy_weights, [3, 4]), expected)
    fp32 = {k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in numpy_weights.items()}
    assert torch.equal(decoder.reference_logits(config, fp32, [3, 4]), expected)
