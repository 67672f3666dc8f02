"""A real two-process `torchrun` (gloo) run: the ranks' samples are disjoint and
together cover the epoch, also when resuming a run made with one process."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pocketml as pm

pytest.importorskip("torch.distributed.run")
WORKER = Path(__file__).with_name("torchrun_data_ranks.py")


@pytest.fixture(scope="module")
def dataset_path(tmp_path_factory):
    rng = np.random.default_rng(3)
    docs = [rng.integers(1, 300, int(rng.integers(1, 90))) for _ in range(150)]
    path = tmp_path_factory.mktemp("dist") / "ds"
    pm.data.write_tokens(path, docs, vocab_size=300, eos_id=0, shard_bytes=1024)
    return path


def torchrun(*args, tmp_path):
    out = tmp_path / "ranks.json"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(WORKER),
           *map(str, args[:1]), str(out), *map(str, args[1:])]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(out.read_text())


def single_process_loader(dataset_path):
    # What the ranks build, in one process: same order, global batch 2 x 2.
    return pm.data.TokenLoader(dataset_path, seq_len=32, batch_size=4, seed=5, packing="best_fit", drop_last=False,
                               rank=0, world_size=1, return_tensors="np")


def test_two_ranks_are_disjoint_and_complete(dataset_path, tmp_path):
    ranks = torchrun(dataset_path, tmp_path=tmp_path)
    assert [(r["rank"], r["world_size"]) for r in ranks] == [(0, 2), (1, 2)]
    assert len(ranks[0]["steps"]) == len(ranks[1]["steps"]) > 0
    samples = [[s for step in r["steps"] for s in step if s >= 0] for r in ranks]
    assert not set(samples[0]) & set(samples[1])
    plan = single_process_loader(dataset_path).plan(0)
    assert sorted(samples[0] + samples[1]) == list(range(plan.num_samples))
    # Global steps in the same order as one process with the same global batch.
    glob = [s for s0, s1 in zip(ranks[0]["steps"], ranks[1]["steps"]) for s in s0 + s1]
    expected = [b["sample_ids"].tolist() for b in single_process_loader(dataset_path)]
    assert glob == [s for step in expected for s in step]


def test_two_ranks_resume_a_one_process_run(dataset_path, tmp_path):
    loader = single_process_loader(dataset_path)
    it = iter(loader)
    before = [next(it)["sample_ids"].tolist() for _ in range(7)]
    del it
    state = tmp_path / "state.json"
    state.write_text(json.dumps(loader.state_dict()))
    ranks = torchrun(dataset_path, state, tmp_path=tmp_path)
    after = [s for s0, s1 in zip(ranks[0]["steps"], ranks[1]["steps"]) for s in s0 + s1]
    everything = [s for step in before for s in step] + after
    real = [s for s in everything if s >= 0]
    assert sorted(real) == list(range(loader.plan(0).num_samples))  # nothing repeated, nothing skipped
    uninterrupted = [s for b in single_process_loader(dataset_path) for s in b["sample_ids"].tolist()]
    assert everything == uninterrupted
