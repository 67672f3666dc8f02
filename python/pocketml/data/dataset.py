"""TokenDataset: a token-shard dataset, memory-mapped by the native core."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from pocketml._arguments import integer_argument
from pocketml._native import core
from pocketml.data.shards import TOKEN_DTYPES, Manifest


class TokenDataset:
    """Documents of a token-shard dataset: `len(ds)` documents, `ds.num_tokens`
    tokens, `ds[i]` the tokens of document i as a read-only array over the mapping
    (no copy). Opening checks every shard's size and index, not its checksum
    (`pocketml data verify` does)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.manifest = Manifest.load(self.path)
        shards = [core.ShardFiles(str(self.path / s.tokens), str(self.path / s.index), s.num_documents, s.num_tokens)
                  for s in self.manifest.shards]
        self.store = core.TokenStore(shards, self.dtype.itemsize, self.eos_id)
        counts = [s.num_documents for s in self.manifest.shards]
        self._shard_first_document = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self._tokens = [self.store.shard_tokens(k) for k in range(len(shards))]
        self._offsets = [self.store.shard_offsets(k) for k in range(len(shards))]

    @property
    def dtype(self) -> np.dtype:
        return TOKEN_DTYPES[self.manifest.token_dtype]

    @property
    def vocab_size(self) -> int:
        return self.manifest.vocab_size

    @property
    def eos_id(self) -> int:
        return self.manifest.eos_id

    @property
    def num_tokens(self) -> int:
        return self.manifest.num_tokens

    def __len__(self) -> int:
        return self.manifest.num_documents

    def __getitem__(self, i: int) -> np.ndarray:
        i = integer_argument(i, "i")  # ds[True] read document 1
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"argument 'i': expected a document in [{-n}, {n}), got {i}")
        i = int(i) % n
        shard = int(np.searchsorted(self._shard_first_document, i, side="right")) - 1
        local = i - int(self._shard_first_document[shard])
        offsets = self._offsets[shard]
        return self._tokens[shard][int(offsets[local]):int(offsets[local + 1])]

    def document_lengths(self) -> np.ndarray:
        """Every document's token count (int64), in order."""
        if not self._offsets:
            return np.empty(0, np.int64)
        return np.concatenate([np.diff(o.astype(np.int64)) for o in self._offsets])

    def __reduce__(self):
        # Reopened by path in another process (DataLoader workers started with spawn).
        return (TokenDataset, (str(self.path),))

    def __repr__(self) -> str:
        return (f"TokenDataset('{self.path}', documents={len(self)}, tokens={self.num_tokens}, "
                f"dtype={self.manifest.token_dtype}, vocab_size={self.vocab_size}, eos_id={self.eos_id})")
