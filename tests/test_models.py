"""The offline real model every accuracy test stands on."""

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
