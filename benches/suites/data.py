"""Data loading: pocketml.data.TokenLoader against the loaders people use.

Same token file (one memory-mapped uint16 shard), same batch shapes
(8 x 2048 int64 inputs and labels), batches pulled one at a time:
- pocketml TokenLoader: shuffled, packed (concat or best_fit), resumable, with
  position_ids and cu_seqlens, built on its native prefetch threads;
- torch DataLoader over a map-style dataset of seq_len + 1 windows of the
  memmap, shuffle=True, num_workers 0 and 2 (the usual PyTorch recipe);
- nanoGPT's get_batch: a NumPy memmap opened per batch, random windows,
  torch.stack of per-row copies (no shuffling guarantees, no resumable state).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch

import pocketml as pm
from harness import Peer

SEQ_LEN = 2048
BATCH = 8


def _build_dataset(root: Path, num_tokens: int) -> pm.data.TokenDataset:
    """Documents of log-normal lengths (median ~ 600 tokens, a long tail past seq_len), one shard."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(1, 50_000, num_tokens, dtype=np.uint16)
    lengths = np.clip(rng.lognormal(6.4, 1.0, num_tokens // 200).astype(np.int64), 1, 20_000)
    ends = np.cumsum(lengths)
    ends = ends[ends < num_tokens]
    docs = np.split(tokens, ends)
    return pm.data.write_tokens(root / "tokens", docs, vocab_size=50_000, eos_id=0, shard_bytes=num_tokens * 2)


class _Windows(torch.utils.data.Dataset):
    """Map-style dataset: sample i is window i of seq_len + 1 tokens of the memmap."""

    def __init__(self, path: Path):
        self.path = path
        self.data = np.memmap(path, dtype=np.uint16, mode="r")

    def __len__(self) -> int:
        return len(self.data) // (SEQ_LEN + 1)

    def __getitem__(self, i: int):
        chunk = torch.from_numpy(self.data[i * (SEQ_LEN + 1):(i + 1) * (SEQ_LEN + 1)].astype(np.int64))
        return chunk[:-1], chunk[1:]


def _forever(make_iterable):
    """One batch per call, starting a new pass when one ends."""
    state = {"it": iter(make_iterable())}

    def next_batch():
        try:
            return next(state["it"])
        except StopIteration:
            state["it"] = iter(make_iterable())
            return next(state["it"])

    return next_batch


def _nanogpt_get_batch(path: Path, rng: np.random.Generator):
    def get_batch():
        data = np.memmap(path, dtype=np.uint16, mode="r")  # reopened per batch, as nanoGPT does
        ix = rng.integers(0, len(data) - SEQ_LEN - 1, BATCH)
        x = torch.stack([torch.from_numpy(data[i:i + SEQ_LEN].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1:i + 1 + SEQ_LEN].astype(np.int64)) for i in ix])
        return x, y

    return get_batch


def run(report, quick: bool) -> None:
    num_tokens = 1 << (23 if quick else 26)  # 64 Mi tokens = 128 MiB: far above a 32 MiB L3
    with tempfile.TemporaryDirectory(prefix="pocketml-bench-data-") as tmp:
        ds = _build_dataset(Path(tmp), num_tokens)
        shard = ds.path / ds.manifest.shards[0].tokens
        windows = _Windows(shard)
        loaders = {w: torch.utils.data.DataLoader(windows, batch_size=BATCH, shuffle=True, num_workers=w,
                                                  drop_last=True, persistent_workers=w > 0)
                   for w in (0, 2)}
        out_bytes = BATCH * SEQ_LEN * 8 * 2  # the int64 inputs and labels every peer returns
        rows = []
        for packing in ("concat", "best_fit"):
            loader = pm.data.TokenLoader(ds, SEQ_LEN, BATCH, seed=0, packing=packing, prefetch=8)
            rows += report.compare(
                f"data {packing} seq_len={SEQ_LEN} batch={BATCH} tokens={num_tokens >> 20}Mi",
                [Peer(f"pocketml TokenLoader ({loader.num_threads} threads)", _forever(lambda: loader)),
                 Peer("torch DataLoader num_workers=0", _forever(lambda: loaders[0])),
                 Peer("torch DataLoader num_workers=2", _forever(lambda: loaders[2])),
                 Peer("nanoGPT memmap random windows", _nanogpt_get_batch(shard, np.random.default_rng(0)))],
                bytes_moved=out_bytes, rounds=9 if quick else 15)
        print(f"\ndata loading, seq_len {SEQ_LEN}, batch {BATCH} ({BATCH * SEQ_LEN:,} tokens per batch)")
        print("| case | implementation | batches/s | Mtokens/s | pocketml speedup |")
        print("|---|---|---:|---:|---:|")
        for r in rows:
            per_s = 1e3 / r.median_ms
            print(f"| {r.case} | {r.peer} | {per_s:,.0f} | {per_s * BATCH * SEQ_LEN / 1e6:,.1f} | "
                  f"{r.speedup_of_first:.1f}x |")
        print()
        del loaders
