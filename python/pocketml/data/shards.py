"""The token-shard format (docs/formats.md, "Token shards"): the manifest, the
atomic writer and the verifier.

A dataset is a directory holding `manifest.json` and, per shard, a `.tokens`
file (little-endian uint16/uint32 tokens of its documents, back to back) and an
`.index` file (num_documents + 1 little-endian uint64 token offsets).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from pocketml._publish import publish, staged_directory

FORMAT_NAME = "pocketml-token-shards"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
TOKEN_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
DEFAULT_SHARD_BYTES = 64 << 20  # large enough that per-file overhead vanishes, small enough to copy and verify in parallel


@dataclass(frozen=True)
class ShardEntry:
    tokens: str
    index: str
    num_documents: int
    num_tokens: int
    tokens_bytes: int
    index_bytes: int
    tokens_sha256: str
    index_sha256: str


@dataclass(frozen=True)
class Manifest:
    token_dtype: str
    vocab_size: int
    eos_id: int
    num_documents: int
    num_tokens: int
    shards: tuple[ShardEntry, ...]

    def to_json(self) -> str:
        body = {
            "format": FORMAT_NAME,
            "version": FORMAT_VERSION,
            "token_dtype": self.token_dtype,
            "vocab_size": self.vocab_size,
            "eos_id": self.eos_id,
            "num_documents": self.num_documents,
            "num_tokens": self.num_tokens,
            "shards": [vars(s) for s in self.shards],
        }
        return json.dumps(body, indent=2, sort_keys=True) + "\n"

    @property
    def fingerprint(self) -> str:
        """Names the dataset's content (dtype, vocabulary, EOS and every shard's
        checksums): two datasets with equal totals but other documents differ."""
        identity = [self.token_dtype, self.vocab_size, self.eos_id,
                    [[s.num_documents, s.num_tokens, s.tokens_sha256, s.index_sha256] for s in self.shards]]
        return hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:32]

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Manifest":
        file = Path(path) / MANIFEST_NAME
        if not file.is_file():
            raise FileNotFoundError(f"'{path}' is not a token-shard dataset: {MANIFEST_NAME} is missing "
                                    "(an interrupted write leaves none)")
        try:
            body = json.loads(file.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"'{file}': not valid JSON ({exc})") from None
        if not isinstance(body, dict) or body.get("format") != FORMAT_NAME:
            raise ValueError(f"'{file}': expected format '{FORMAT_NAME}', got {body.get('format')!r}"
                             if isinstance(body, dict) else f"'{file}': expected a JSON object")
        if type(body.get("version")) is not int or body.get("version") != FORMAT_VERSION:  # not true, not 1.0
            raise ValueError(f"'{file}': expected format version {FORMAT_VERSION}, got {body.get('version')!r}")
        try:
            shards = tuple(ShardEntry(**s) for s in body["shards"])
            manifest = cls(body["token_dtype"], body["vocab_size"], body["eos_id"], body["num_documents"],
                           body["num_tokens"], shards)
        except (KeyError, TypeError) as exc:
            raise ValueError(f"'{file}': missing or unexpected field ({exc})") from None
        try:
            itemsize = _check_vocabulary(manifest.token_dtype, manifest.vocab_size, manifest.eos_id, "field").itemsize
            files = set()
            for i, shard in enumerate(shards):
                _check_shard_entry(shard, i, itemsize)
                if {shard.tokens, shard.index} & files or shard.tokens == shard.index:  # read twice otherwise
                    raise ValueError(f"field 'shards[{i}]': expected files no other shard names, got {shard.tokens!r}, "
                                     f"{shard.index!r}")
                files |= {shard.tokens, shard.index}
            _check_count("num_documents", manifest.num_documents)
            _check_count("num_tokens", manifest.num_tokens)
        except ValueError as exc:
            raise ValueError(f"'{file}': {exc}") from None
        if (sum(s.num_documents for s in shards) != manifest.num_documents
                or sum(s.num_tokens for s in shards) != manifest.num_tokens):
            raise ValueError(f"'{file}': the shards' document and token counts do not add up to the totals")
        return manifest


def _check_vocabulary(dtype: str, vocab_size: int, eos_id: int, source: str = "argument") -> np.dtype:
    """source: 'argument' (write_tokens) or 'field' (a manifest), for the messages."""
    if not isinstance(dtype, str) or dtype not in TOKEN_DTYPES:
        name = "dtype" if source == "argument" else "token_dtype"
        raise ValueError(f"{source} '{name}': expected 'uint16' or 'uint32', got {dtype!r}")
    limit = np.iinfo(TOKEN_DTYPES[dtype]).max + 1
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, (int, np.integer)) or not 0 < vocab_size <= limit:
        raise ValueError(f"{source} 'vocab_size': expected an integer in [1, {limit}] for {dtype}, got {vocab_size!r}")
    if isinstance(eos_id, bool) or not isinstance(eos_id, (int, np.integer)) or not 0 <= eos_id < vocab_size:
        raise ValueError(f"{source} 'eos_id': expected an integer in [0, {vocab_size}), got {eos_id!r}")
    return TOKEN_DTYPES[dtype]


def _check_count(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError(f"field '{name}': expected an integer in [0, 2^63), got {value!r}")


def _check_shard_entry(shard: ShardEntry, i: int, itemsize: int) -> None:
    for name in ("tokens", "index"):  # plain names: a manifest never points outside its directory
        value = getattr(shard, name)
        # A NUL would end the name the native reader opens early: another file than verify() checks.
        if (not isinstance(value, str) or not value or value != os.path.basename(value) or value in (".", "..")
                or "\0" in value):
            raise ValueError(f"field 'shards[{i}].{name}': expected a file name in the dataset's directory, "
                             f"got {value!r}")
    for name in ("num_documents", "num_tokens", "tokens_bytes", "index_bytes"):
        _check_count(f"shards[{i}].{name}", getattr(shard, name))
    for name, expected in (("tokens_bytes", shard.num_tokens * itemsize), ("index_bytes", (shard.num_documents + 1) * 8)):
        if getattr(shard, name) != expected:  # as docs/formats.md defines them
            raise ValueError(f"field 'shards[{i}].{name}': expected {expected}, got {getattr(shard, name)}")
    for name in ("tokens_sha256", "index_sha256"):
        if not isinstance(getattr(shard, name), str):
            raise ValueError(f"field 'shards[{i}].{name}': expected a hex string, got {getattr(shard, name)!r}")


def _as_document(doc, i: int, dtype: np.dtype, vocab_size: int) -> np.ndarray:
    arr = np.asarray(doc)
    if arr.ndim != 1:
        raise ValueError(f"argument 'documents': expected 1-D token sequences, got shape {arr.shape} at document {i}")
    if arr.size == 0:
        return np.empty(0, dtype)
    if not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"argument 'documents': expected integer tokens, got {arr.dtype} at document {i}")
    low, high = int(arr.min()), int(arr.max())
    if low < 0 or high >= vocab_size:
        bad = low if low < 0 else high
        raise ValueError(f"argument 'documents': expected tokens in [0, {vocab_size}), got {bad} at document {i}")
    return arr.astype(dtype, copy=False)


class _ShardWriter:
    """One shard being written: tokens streamed to disk and hashed as they go."""

    def __init__(self, directory: Path, number: int):
        self.tokens_name = f"shard-{number:05d}.tokens"
        self.index_name = f"shard-{number:05d}.index"
        self.directory = directory
        self.file = open(directory / self.tokens_name, "wb")
        self.hash = hashlib.sha256()
        self.offsets = [0]

    @property
    def num_tokens(self) -> int:
        return self.offsets[-1]

    def add(self, doc: np.ndarray) -> None:
        data = doc.tobytes()
        self.file.write(data)
        self.hash.update(data)
        self.offsets.append(self.offsets[-1] + doc.size)

    def finish(self, itemsize: int) -> ShardEntry:
        self.file.close()
        index = np.asarray(self.offsets, dtype="<u8").tobytes()
        (self.directory / self.index_name).write_bytes(index)
        return ShardEntry(self.tokens_name, self.index_name, len(self.offsets) - 1, self.num_tokens,
                          self.num_tokens * itemsize, len(index), self.hash.hexdigest(),
                          hashlib.sha256(index).hexdigest())


def write_tokens(path: str | os.PathLike, documents: Iterable, *, dtype: str = "uint16", vocab_size: int,
                 eos_id: int, shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False):
    """Streams `documents` (any iterable of 1-D integer arrays or lists) into a
    token-shard dataset at `path` and returns it opened as a TokenDataset.

    A shard takes documents while its tokens fit in `shard_bytes`; a document
    larger than that gets a shard of its own (documents never span shards).
    The dataset is built in a temporary directory beside `path` and renamed
    into place only when complete, so an exception, a kill or a power cut never
    leaves a dataset at `path` that loads.
    """
    from pocketml.data.dataset import TokenDataset

    token_dtype = _check_vocabulary(dtype, vocab_size, eos_id)
    if not isinstance(shard_bytes, (int, np.integer)) or shard_bytes < token_dtype.itemsize:
        raise ValueError(f"argument 'shard_bytes': expected an integer >= {token_dtype.itemsize}, got {shard_bytes!r}")
    target = Path(path)
    if target.exists() and not overwrite:
        raise FileExistsError(f"argument 'path': expected a path that does not exist yet, got existing '{target}' "
                              "(pass overwrite=True to replace it)")
    shards: list[ShardEntry] = []
    current: _ShardWriter | None = None
    with staged_directory(target, target.name) as staging:
        try:
            for i, doc in enumerate(documents):
                tokens = _as_document(doc, i, token_dtype, vocab_size)
                if current is not None and current.num_tokens > 0 and \
                        (current.num_tokens + tokens.size) * token_dtype.itemsize > shard_bytes:
                    shards.append(current.finish(token_dtype.itemsize))
                    current = None
                if current is None:
                    current = _ShardWriter(staging, len(shards))
                current.add(tokens)
            if current is not None:
                shards.append(current.finish(token_dtype.itemsize))
                current = None
        finally:
            if current is not None:
                current.file.close()
        manifest = Manifest(dtype, int(vocab_size), int(eos_id), sum(s.num_documents for s in shards),
                            sum(s.num_tokens for s in shards), tuple(shards))
        (staging / MANIFEST_NAME).write_text(manifest.to_json(), encoding="utf-8")
        publish(staging, target)  # syncs the shards, their indexes and the manifest first
    return TokenDataset(target)


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def verify(path: str | os.PathLike) -> list[str]:
    """Checks a dataset completely: manifest, file sizes (truncation), checksums,
    index structure (offsets inside their shard) and tokens inside the vocabulary.
    Returns the problems found, each a sentence naming the file; [] when sound."""
    from pocketml._native import core

    root = Path(path)
    try:
        manifest = Manifest.load(root)
    except (FileNotFoundError, ValueError) as exc:
        return [str(exc)]
    problems = []
    for shard in manifest.shards:
        tokens_path, index_path = root / shard.tokens, root / shard.index
        missing = [p for p in (tokens_path, index_path) if not p.is_file()]
        if missing:
            problems += [f"'{p}': missing" for p in missing]
            continue
        for file, expected in ((tokens_path, shard.tokens_sha256), (index_path, shard.index_sha256)):
            if _sha256_file(file) != expected:
                problems.append(f"'{file}': checksum mismatch (sha256 differs from the manifest's)")
        try:
            store = core.TokenStore([core.ShardFiles(str(tokens_path), str(index_path), shard.num_documents,
                                                     shard.num_tokens)],
                                    TOKEN_DTYPES[manifest.token_dtype].itemsize, manifest.eos_id)
        except RuntimeError as exc:  # sizes and index structure, checked by the core as on every open
            problems.append(str(exc))
            continue
        tokens = store.shard_tokens(0)
        if tokens.size and int(tokens.max()) >= manifest.vocab_size:
            problems.append(f"'{tokens_path}': token {int(tokens.max())} outside the vocabulary of "
                            f"{manifest.vocab_size}")
    return problems
