"""Token-shard datasets and a deterministic, resumable, distributed loader.

    pm.data.write_tokens(path, documents, dtype="uint16", vocab_size=..., eos_id=...)
    ds = pm.data.TokenDataset(path)
    loader = pm.data.TokenLoader(ds, seq_len=2048, batch_size=8, packing="best_fit")
"""

from pocketml.data.dataset import TokenDataset
from pocketml.data.loader import TokenLoader
from pocketml.data.shards import Manifest, verify, write_tokens
from pocketml.data.text import ByteTokenizer, HFTokenizer, build_from_text

__all__ = ["ByteTokenizer", "HFTokenizer", "Manifest", "TokenDataset", "TokenLoader", "build_from_text", "verify",
           "write_tokens"]
