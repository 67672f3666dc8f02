"""The offline real model every accuracy test stands on."""

import os

import pytest
import torch

from pocketml import models


@pytest.fixture(scope="module")
def encoder():
    return models.load_encoder()


def test_default_model_loads_offline_and_embeds(encoder):
    model, tokenizer = encoder
    emb = models.sentence_embeddings(model, tokenizer)
    assert emb.shape == (len(models.SAMPLE_SENTENCES), 384)
    torch.testing.assert_close(emb.norm(dim=-1), torch.ones(len(emb)))
    similarity = emb @ emb.T
    # Paraphrases are closer than unrelated sentences: the weights are real.
    assert similarity[0, 1] > 0.6 > similarity[0, 4] + 0.3
    assert similarity[7, 8] > similarity[7, 14] + 0.3


def test_sentence_embeddings_follow_sentence_transformers_and_refuse_a_bare_string(encoder):
    model, tokenizer = encoder
    assert tokenizer.model_max_length == 256  # sentence_bert_config.json's max_seq_length, not the tokenizer's 512
    long = " ".join(f"word{i % 50}" for i in range(300))
    batch = tokenizer([long], truncation=True, max_length=256, return_tensors="pt")
    with torch.no_grad():
        expected = torch.nn.functional.normalize(model(**batch).last_hidden_state.mean(1), dim=-1)
    assert models.embedding_cosine(models.sentence_embeddings(model, tokenizer, [long]), expected).min() > 0.9999
    with pytest.raises(TypeError, match="one string"):
        models.sentence_embeddings(model, tokenizer, "A man is eating food.")  # was embedded per character
    with pytest.raises(ValueError, match="at least one sentence"):
        models.sentence_embeddings(model, tokenizer, [])


def test_embedding_cosine_of_identical_is_one(encoder):
    emb = models.sentence_embeddings(*encoder, sentences=models.SAMPLE_SENTENCES[:3])
    torch.testing.assert_close(models.embedding_cosine(emb, emb), torch.ones(3))


def test_bad_paths_are_clear(tmp_path):
    with pytest.raises(FileNotFoundError, match="argument 'path': expected a model directory"):
        models.load_encoder(tmp_path / "missing")
    with pytest.raises(ValueError, match="config.json"):
        models.load_encoder(tmp_path)


def test_unsupported_model_directories_are_clear(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
    with pytest.raises(ValueError, match="argument 'path': expected a Hugging Face encoder"):
        models.load_encoder(tmp_path)


def _copy_of_default_model(tmp_path, drop=()):
    import shutil

    target = tmp_path / "model"
    shutil.copytree(models.default_model_path(), target, ignore=shutil.ignore_patterns(*drop))
    return target


def test_directories_that_would_measure_nothing_are_refused(tmp_path):
    # Without its vocabulary transformers builds a 5-token tokenizer: every word was [UNK], and each
    # configuration's embeddings of [UNK]s matched fp32's (an int8 cosine of 0.999, exit 0).
    path = _copy_of_default_model(tmp_path / "a", drop=("tokenizer.json", "vocab.txt"))
    with pytest.raises(ValueError, match=r"expected a tokenizer of the model's vocabulary \(30522 tokens\), got one of"):
        models.load_encoder(path)
    path = _copy_of_default_model(tmp_path / "b")
    (path / "model.safetensors").write_bytes(b"")  # safetensors' own error went through as a traceback
    with pytest.raises(ValueError, match="transformers cannot load .*header"):
        models.load_encoder(path)


def test_causal_language_models_are_not_taken_for_encoders():
    # GPT-2 and Llama configs set no is_decoder: GPT-2 then failed with 0 / 0 bits per weight, Llama in Core ML.
    from transformers import BertConfig, DistilBertConfig, GPT2Config, LlamaConfig

    assert models._causal_only(GPT2Config()) and models._causal_only(LlamaConfig())
    assert not models._causal_only(BertConfig()) and not models._causal_only(DistilBertConfig())


def test_loading_leaves_the_process_settings_as_they_were(monkeypatch, tmp_path):
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as hf_logging

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("HF_HUB_DISABLE_PROGRESS_BARS", raising=False)
    verbosity, progress = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_info()
    hf_logging.enable_progress_bar()
    try:
        models.load_encoder()
        (tmp_path / "config.json").write_text('{"model_type": "no-such-architecture"}')
        with pytest.raises(ValueError):
            models.load_encoder(tmp_path)  # a failed load too
        assert "HF_HUB_OFFLINE" not in os.environ  # was: set for the rest of the process
        assert hf_logging.get_verbosity() == hf_logging.INFO  # was: left at ERROR
        assert hf_logging.is_progress_bar_enabled()
        assert not are_progress_bars_disabled()
    finally:
        hf_logging.set_verbosity(verbosity)
        (hf_logging.enable_progress_bar if progress else hf_logging.disable_progress_bar)()
