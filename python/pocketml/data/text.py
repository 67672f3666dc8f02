"""Building a token-shard dataset from text files with any tokenizer."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np

from pocketml.data.shards import DEFAULT_SHARD_BYTES, write_tokens


class ByteTokenizer:
    """The built-in default: a text's UTF-8 bytes are its tokens (0..255) and 256
    is the EOS, so it needs nothing installed and round-trips any text."""

    vocab_size = 257
    eos_id = 256

    def __call__(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)

    def decode(self, tokens) -> str:
        return bytes(int(t) for t in tokens if t < 256).decode("utf-8", errors="replace")


# Special tokens that end a document in common vocabularies, most specific first.
_EOS_CANDIDATES = ("<|endoftext|>", "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>", "[SEP]")


class HFTokenizer:
    """A `tokenizers` tokenizer.json as a callable, with its vocabulary size and EOS."""

    def __init__(self, path: str | os.PathLike, eos_id: int | None = None):
        try:
            from tokenizers import Tokenizer
        except ImportError as exc:
            raise ImportError("argument 'tokenizer': a tokenizer.json needs the 'tokenizers' package "
                              "(pip install 'pocketml[models]')") from exc
        if not Path(path).is_file():
            raise FileNotFoundError(f"argument 'tokenizer': expected a tokenizer.json file, got {str(path)!r}")
        try:
            self.tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception for a file it cannot parse
            raise ValueError(f"argument 'tokenizer': {str(path)!r} is not a tokenizer.json ({exc})") from None
        # Whole documents: a tokenizer.json made for a model often truncates or pads to its context.
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        # Text is text: a literal "[SEP]" or "<|endoftext|>" in a file must not become an EOS inside it.
        self.tokenizer.encode_special_tokens = True
        # Ids may have gaps: the vocabulary spans the largest one.
        self.vocab_size = max(self.tokenizer.get_vocab(with_added_tokens=True).values()) + 1
        if eos_id is None:
            found = [self.tokenizer.token_to_id(t) for t in _EOS_CANDIDATES]
            found = [i for i in found if i is not None]
            if not found:
                raise ValueError(f"argument 'eos_id': '{path}' has none of the usual EOS tokens "
                                 f"{_EOS_CANDIDATES}; pass the EOS id explicitly")
            eos_id = found[0]
        self.eos_id = eos_id

    def __call__(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids


def build_from_text(files: Sequence[str | os.PathLike] | str | os.PathLike, out: str | os.PathLike, *,
                    tokenizer: Callable[[str], Iterable[int]] | str | os.PathLike | None = None,
                    vocab_size: int | None = None, eos_id: int | None = None,
                    shard_bytes: int = DEFAULT_SHARD_BYTES, overwrite: bool = False, errors: str = "strict"):
    """Tokenizes each text file (UTF-8, line endings kept as they are) into one
    document of a dataset at `out`.

    `tokenizer`: None for the byte-level default, a path to a `tokenizers`
    tokenizer.json (special-token strings in the text stay text), or any callable
    text -> token ids (then give `vocab_size` and `eos_id` unless it has those
    attributes). The token dtype is uint16 when the vocabulary fits, else uint32.
    `errors`: how bytes that are not UTF-8 are decoded ("strict" refuses the file,
    "replace" writes U+FFFD). A file is tokenized whole: the `tokenizers` library
    takes about 150 bytes of memory per character it encodes."""
    if tokenizer is None:
        tokenizer = ByteTokenizer()
    elif isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = HFTokenizer(tokenizer, eos_id)
    elif not callable(tokenizer):
        raise TypeError(f"argument 'tokenizer': expected None, a tokenizer.json path or a callable, "
                        f"got {type(tokenizer).__name__}")
    if errors not in ("strict", "replace"):
        raise ValueError(f"argument 'errors': expected 'strict' or 'replace', got {errors!r}")
    vocab_size = vocab_size if vocab_size is not None else getattr(tokenizer, "vocab_size", None)
    eos_id = eos_id if eos_id is not None else getattr(tokenizer, "eos_id", None)
    if vocab_size is None or eos_id is None:
        raise ValueError("arguments 'vocab_size' and 'eos_id': expected integers for a tokenizer that does not "
                         "carry them, got None")
    files = [files] if isinstance(files, (str, os.PathLike)) else list(files)
    if not files:
        raise ValueError("argument 'files': expected at least one text file, got none")
    missing = [str(f) for f in map(Path, files) if not f.exists() or f.is_dir()]  # pipes are fine
    if missing:  # before any file is tokenized
        raise FileNotFoundError(f"argument 'files': expected text files, got {len(missing)} missing or directories: "
                                f"{', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}")
    dtype = "uint16" if vocab_size <= 1 << 16 else "uint32"

    def documents():
        for file in files:
            try:  # bytes, then decode: reading as text would turn \r\n into \n
                text = Path(file).read_bytes().decode("utf-8", errors=errors)
            except UnicodeDecodeError as exc:
                raise ValueError(f"argument 'files': {str(file)!r} is not UTF-8 ({exc.reason} at byte {exc.start}); "
                                 "pass errors='replace' to write U+FFFD for such bytes") from None
            ids = tokenizer(text)
            yield np.array(list(ids)) if isinstance(ids, Iterator) else ids  # write_tokens checks the dtype

    return write_tokens(out, documents(), dtype=dtype, vocab_size=vocab_size, eos_id=eos_id,
                        shard_bytes=shard_bytes, overwrite=overwrite)
