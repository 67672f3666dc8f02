"""TokenLoader: packing invariants, deterministic order, exactly-once coverage
across ranks and DataLoader workers, exact resume (hypothesis), clean shutdown."""

import gc
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import pocketml as pm
from pocketml._native import core

EOS = 0


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Documents of very different lengths (empty ones and ones longer than
    every seq_len used here) over several shards."""
    rng = np.random.default_rng(7)
    lengths = np.concatenate([rng.integers(0, 40, 300), rng.integers(40, 200, 40), [0, 0, 500, 1000]])
    rng.shuffle(lengths)
    docs = [rng.integers(1, 1000, n) for n in lengths]
    path = tmp_path_factory.mktemp("data") / "ds"
    return pm.data.write_tokens(path, docs, vocab_size=1000, eos_id=EOS, shard_bytes=4096)


def expected_sample(ds, segments):
    """A sample's tokens built in Python from its segments: the reference for the native batch builder."""
    out = []
    for doc, offset, length in segments:
        tokens = np.append(ds[doc].astype(np.int64), EOS)
        assert offset + length <= tokens.size
        out.append(tokens[offset:offset + length])
    return np.concatenate(out) if out else np.empty(0, np.int64)


def all_samples(plan):
    return [plan.segments(s) for s in range(plan.num_samples)]


@pytest.mark.parametrize("packing", ["concat", "best_fit"])
@pytest.mark.parametrize("seq_len", [1, 7, 64, 300])
def test_every_token_exactly_once(dataset, packing, seq_len):
    plan = core.EpochPlan(dataset.store, packing, seq_len, 3, 0, True)
    pieces = {}
    for segments in all_samples(plan):
        assert 0 < sum(length for _, _, length in segments) <= seq_len + 1
        for doc, offset, length in segments:
            pieces.setdefault(doc, []).append((offset, length))
    assert sorted(pieces) == list(range(len(dataset)))
    for doc, parts in pieces.items():
        parts.sort()
        ends = np.cumsum([length for _, length in parts])
        # The pieces of a document (with its EOS) tile [0, len + 1) without gap or overlap.
        assert [offset for offset, _ in parts] == [0, *ends[:-1]] and ends[-1] == dataset[doc].size + 1


@settings(max_examples=40, deadline=None)
@given(lengths=st.lists(st.integers(0, 300), min_size=0, max_size=60), seq_len=st.integers(1, 100),
       window=st.integers(0, 20), packing=st.sampled_from(["concat", "best_fit"]), seed=st.integers(0, 2**63))
def test_packing_invariants_on_random_documents(lengths, seq_len, window, packing, seed):
    with tempfile.TemporaryDirectory() as tmp:
        ds = pm.data.write_tokens(Path(tmp) / "ds", [np.full(n, 1 + i % 9) for i, n in enumerate(lengths)],
                                  vocab_size=10, eos_id=EOS)
        plan = core.EpochPlan(ds.store, packing, seq_len, seed, 0, True, window=window)
        pieces = {}
        for s in range(plan.num_samples):
            segments = plan.segments(s)
            assert 0 < sum(length for _, _, length in segments) <= seq_len + 1
            for doc, offset, length in segments:
                pieces.setdefault(doc, []).append((offset, length))
        assert sorted(pieces) == list(range(len(lengths)))
        for doc, parts in pieces.items():
            parts.sort()
            assert [o for o, _ in parts] == list(np.cumsum([0] + [n for _, n in parts])[:-1])
            assert sum(n for _, n in parts) == lengths[doc] + 1
            if packing == "best_fit" and lengths[doc] <= seq_len:
                assert len(parts) == 1
        assert sorted(plan.sample_at(p) for p in range(plan.num_samples)) == list(range(plan.num_samples))


def test_concat_fills_every_sample_but_the_last(dataset):
    plan = core.EpochPlan(dataset.store, "concat", 50, 0, 0, False)
    sizes = [sum(length for _, _, length in plan.segments(s)) for s in range(plan.num_samples)]
    assert all(size == 51 for size in sizes[:-1]) and 0 < sizes[-1] <= 51
    assert plan.num_samples == -(-(dataset.num_tokens + len(dataset)) // 51)
    # shuffle=False keeps the documents in order.
    docs_in_order = [doc for s in range(plan.num_samples) for doc, _, _ in plan.segments(s)]
    assert list(dict.fromkeys(docs_in_order)) == list(range(len(dataset)))


@pytest.mark.parametrize("seq_len", [16, 64, 300])
def test_best_fit_splits_only_documents_longer_than_seq_len(dataset, seq_len):
    plan = core.EpochPlan(dataset.store, "best_fit", seq_len, 5, 1, True, window=64)
    pieces = {}
    for segments in all_samples(plan):
        for doc, offset, length in segments:
            pieces.setdefault(doc, []).append((offset, length))
    lengths = dataset.document_lengths()
    for doc, parts in pieces.items():
        if lengths[doc] <= seq_len:
            assert parts == [(0, lengths[doc] + 1)]
        else:  # whole samples of its leading tokens, then at most one remainder
            assert sum(length == seq_len + 1 for _, length in parts) == (lengths[doc] + 1) // (seq_len + 1)
    # Best-fit decreasing packs well: the padding stays a small part of the tokens.
    padded = plan.num_samples * (seq_len + 1) - (dataset.num_tokens + len(dataset))
    assert padded < 0.1 * plan.num_samples * (seq_len + 1)


@pytest.mark.parametrize("packing", ["concat", "best_fit"])
def test_batches_match_the_plan_and_their_boundaries(dataset, packing):
    seq_len, batch = 48, 5
    loader = pm.data.TokenLoader(dataset, seq_len, batch, seed=1, packing=packing, drop_last=False,
                                 return_tensors="np")
    plan = loader.plan()
    seen = []
    for b in loader:
        assert b["input_ids"].shape == b["labels"].shape == b["position_ids"].shape == (batch, seq_len)
        assert b["input_ids"].dtype == b["labels"].dtype == np.int64 and b["cu_seqlens"].dtype == np.int32
        for row, sample in enumerate(b["sample_ids"]):
            tokens = expected_sample(dataset, plan.segments(sample)) if sample >= 0 else np.empty(0, np.int64)
            n = tokens.size
            inputs = np.full(seq_len, EOS)
            inputs[:min(n, seq_len)] = tokens[:seq_len]
            labels = np.full(seq_len, -100)
            labels[:max(0, min(n - 1, seq_len))] = tokens[1:seq_len + 1]
            np.testing.assert_array_equal(b["input_ids"][row], inputs)
            np.testing.assert_array_equal(b["labels"][row], labels)
            seen.append(sample)
        # cu_seqlens: exactly where position_ids restart, then the batch's size;
        # between starts positions count up by one.
        flat = b["position_ids"].reshape(-1)
        starts = np.flatnonzero(flat == 0)
        np.testing.assert_array_equal(b["cu_seqlens"], np.append(starts, flat.size))
        assert set(range(0, flat.size, seq_len)) <= set(starts.tolist())
        for a, e in zip(b["cu_seqlens"][:-1], b["cu_seqlens"][1:]):
            np.testing.assert_array_equal(flat[a:e], np.arange(e - a))
    real = [s for s in seen if s >= 0]
    assert sorted(real) == list(range(plan.num_samples))  # each sample exactly once
    assert len(seen) - len(real) < batch  # padding rows only complete the last batch


def test_segment_boundaries_follow_documents(dataset):
    loader = pm.data.TokenLoader(dataset, 32, 4, packing="best_fit", return_tensors="np")
    b = next(iter(loader))
    plan = loader.plan()
    for row, sample in enumerate(b["sample_ids"]):
        starts, at = [], 0
        for _, _, length in plan.segments(sample):
            if at < 32:
                starts.append(at)
            at += length
        if at < 32:
            starts.append(at)  # padding
        np.testing.assert_array_equal(np.flatnonzero(b["position_ids"][row] == 0), starts)


def sample_order(loader, epoch=None):
    plan = loader.plan(epoch)
    return [plan.sample_at(p) for p in range(plan.num_samples)]


def test_order_depends_on_seed_and_epoch_only(dataset):
    base = dict(seq_len=40, batch_size=3, packing="best_fit", return_tensors="np")
    a = pm.data.TokenLoader(dataset, seed=11, num_threads=1, prefetch=1, **base)
    b = pm.data.TokenLoader(dataset, seed=11, num_threads=4, prefetch=8, world_size=3, rank=2, **base)
    assert sample_order(a) == sample_order(b)
    assert sample_order(a, 0) != sample_order(a, 1)
    c = pm.data.TokenLoader(dataset, seed=12, **base)
    assert sample_order(a) != sample_order(c)
    assert sorted(sample_order(a)) == list(range(a.plan().num_samples))


def batches(loader):
    return [{k: v.copy() for k, v in b.items()} for b in loader]


def assert_same_batches(xs, ys):
    """Equal lists of batches (dicts of arrays) or of input_ids arrays."""
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        if isinstance(x, dict):
            assert x.keys() == y.keys()
            for k in x:
                np.testing.assert_array_equal(x[k], y[k], err_msg=k)
        else:
            np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("threads, prefetch", [(1, 0), (1, 1), (3, 2), (4, 16)])
def test_batches_do_not_depend_on_threads_or_prefetch(dataset, threads, prefetch):
    args = dict(seq_len=24, batch_size=4, seed=2, packing="concat", return_tensors="np")
    reference = batches(pm.data.TokenLoader(dataset, num_threads=1, prefetch=0, **args))
    assert_same_batches(batches(pm.data.TokenLoader(dataset, num_threads=threads, prefetch=prefetch, **args)),
                        reference)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("drop_last", [True, False])
def test_ranks_cover_each_sample_exactly_once(dataset, world_size, drop_last):
    per_rank = []
    for rank in range(world_size):
        loader = pm.data.TokenLoader(dataset, 30, 4, seed=4, rank=rank, world_size=world_size,
                                     drop_last=drop_last, return_tensors="np")
        per_rank.append([b["sample_ids"] for b in loader])
    n = loader.plan().num_samples
    g = 4 * world_size
    assert len({len(r) for r in per_rank}) == 1  # every rank takes the same number of steps
    steps = len(per_rank[0])
    assert steps == (n // g if drop_last else -(-n // g))
    # Global step s = the ranks' rows side by side = positions s*G ... (s+1)*G - 1 of the order.
    glob = np.concatenate([np.concatenate([per_rank[r][s] for r in range(world_size)]) for s in range(steps)])
    order = sample_order(loader, 0)
    expected = order[:steps * g] if drop_last else order + [-1] * (steps * g - n)
    np.testing.assert_array_equal(glob, expected)


def test_explicit_rank_overrides_and_bad_arguments(dataset):
    with pytest.raises(ValueError, match=r"argument 'rank': expected a rank in \[0, 2\), got 2"):
        pm.data.TokenLoader(dataset, 8, 2, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"argument 'packing'"):
        pm.data.TokenLoader(dataset, 8, 2, packing="greedy")
    with pytest.raises(ValueError, match=r"argument 'seq_len'"):
        pm.data.TokenLoader(dataset, 0, 2)
    with pytest.raises(ValueError, match=r"argument 'packing': expected 'concat' or 'best_fit'"):
        core.EpochPlan(dataset.store, "nope", 8, 0, 0, True)
    with pytest.raises(ValueError, match=r"argument 'seed': expected an integer in \[0, 18446744073709551616\)"):
        pm.data.TokenLoader(dataset, 8, 2, seed=2**64)
    with pytest.raises(ValueError, match=r"argument 'batch_size': expected batch_size \* seq_len < 2\^31 .*2048 \* 1048576"):
        iter(pm.data.TokenLoader(dataset, 1 << 20, 1 << 11))  # cu_seqlens is int32


def test_torch_tensors_by_default(dataset):
    b = next(iter(pm.data.TokenLoader(dataset, 16, 2)))
    assert b["input_ids"].dtype == torch.int64 and b["cu_seqlens"].dtype == torch.int32
    assert b["input_ids"].shape == (2, 16)


def test_epochs_advance_and_set_epoch_restarts(dataset):
    loader = pm.data.TokenLoader(dataset, 64, 4, return_tensors="np")
    first = batches(loader)
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0
    second = batches(loader)
    assert not np.array_equal(first[0]["sample_ids"], second[0]["sample_ids"])
    loader.set_epoch(0)
    assert_same_batches(batches(loader), first)


def test_state_from_another_order_is_refused(dataset):
    loader = pm.data.TokenLoader(dataset, 16, 2, seed=1)
    state = loader.state_dict()
    with pytest.raises(ValueError, match="expected seed=2"):
        pm.data.TokenLoader(dataset, 16, 2, seed=2).load_state_dict(state)
    with pytest.raises(ValueError, match="expected packing='best_fit'"):
        pm.data.TokenLoader(dataset, 16, 2, seed=1, packing="best_fit").load_state_dict(state)


def global_steps(loaders):
    """Runs the ranks' loaders side by side: global step -> concatenated rows."""
    out = []
    for parts in zip(*[iter(l) for l in loaders]):
        out.append(np.concatenate([p["input_ids"] for p in parts]))
    return out


def dataloader_batches(loader, num_workers, limit=None, context=None):
    """Batches through a torch DataLoader with `num_workers` worker processes."""
    dl = torch.utils.data.DataLoader(loader, batch_size=None, num_workers=num_workers,
                                     multiprocessing_context=context if num_workers else None)
    out = []
    for b in dl:
        if limit is not None and len(out) == limit:
            break
        out.append(b["input_ids"].numpy().copy())
    return out


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packing=st.sampled_from(["concat", "best_fit"]), seed=st.integers(0, 2**32), seq_len=st.integers(4, 70),
       world_sizes=st.sampled_from([(1, 1), (1, 2), (2, 1), (2, 4), (4, 2), (1, 4)]), stop=st.floats(0, 1),
       drop_last=st.booleans())
def test_resume_is_exact_with_any_world_size(dataset, packing, seed, seq_len, world_sizes, stop, drop_last):
    global_batch = 4
    w1, w2 = world_sizes

    def ranks(w):
        return [pm.data.TokenLoader(dataset, seq_len, global_batch // w, seed=seed, packing=packing, rank=r,
                                    world_size=w, drop_last=drop_last, prefetch=2, num_threads=2,
                                    return_tensors="np")
                for r in range(w)]

    uninterrupted = global_steps(ranks(w1))
    k = int(stop * len(uninterrupted))
    before_loaders = ranks(w1)
    iterators = [iter(l) for l in before_loaders]
    before = [np.concatenate([next(it)["input_ids"] for it in iterators]) for _ in range(k)]
    del iterators  # abandoned mid-epoch: the state counts only the batches taken
    states = [l.state_dict() for l in before_loaders]
    assert all(s == states[0] for s in states)
    after_loaders = ranks(w2)
    for loader in after_loaders:
        loader.load_state_dict(states[0])
    after = global_steps(after_loaders)
    assert_same_batches(before + after, uninterrupted)
    assert after_loaders[0].state_dict()["epoch"] == 1  # the resumed run finished the epoch


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(packing=st.sampled_from(["concat", "best_fit"]), seed=st.integers(0, 1000), workers=st.sampled_from([0, 1, 2]),
       resume_workers=st.sampled_from([0, 2]), stop=st.floats(0, 1))
@example(packing="concat", seed=0, workers=0, resume_workers=0, stop=1.0)  # stopped exactly at the epoch's end
def test_resume_is_exact_through_dataloader_workers(dataset, packing, seed, workers, resume_workers, stop):
    def make():
        return pm.data.TokenLoader(dataset, 40, 3, seed=seed, packing=packing, prefetch=2, num_threads=1)

    uninterrupted = [b["input_ids"].numpy() for b in make()]
    k = int(stop * len(uninterrupted))
    loader = make()
    before = dataloader_batches(loader, workers, limit=k)
    # Workers iterate copies of the loader, so the training loop counts the batches it took.
    state = loader.state_dict(batches_consumed=k)
    resumed = make()
    resumed.load_state_dict(state)
    expected = uninterrupted
    if k == len(uninterrupted):  # stopped after the epoch's last batch: the resumed run starts the next epoch
        assert (state["epoch"], state["position"]) == (1, 0)
        next_epoch = make()
        next_epoch.set_epoch(1)
        expected = uninterrupted + [b["input_ids"].numpy() for b in next_epoch]
    assert_same_batches(before + dataloader_batches(resumed, resume_workers), expected)


@pytest.mark.parametrize("workers", [1, 2])
def test_persistent_workers_follow_set_epoch(dataset, workers):
    # Persistent workers keep one copy of the loader for every epoch: they must still see set_epoch.
    loader = pm.data.TokenLoader(dataset, 40, 3, seed=4, prefetch=2, num_threads=1)
    reference = pm.data.TokenLoader(dataset, 40, 3, seed=4, return_tensors="np")
    dl = torch.utils.data.DataLoader(loader, batch_size=None, num_workers=workers, persistent_workers=True)
    for epoch in range(3):
        loader.set_epoch(epoch)
        reference.set_epoch(epoch)
        assert_same_batches([b["input_ids"].numpy() for b in dl], [b["input_ids"] for b in reference])


def test_copies_of_a_loader_have_their_own_shared_cursor(dataset):
    import copy
    import pickle

    loader = pm.data.TokenLoader(dataset, 40, 3, seed=4, prefetch=2, num_threads=1)
    shallow = copy.copy(loader)
    shallow.set_epoch(5)
    assert loader.epoch == 0  # the copy shared the original's counters
    reference = pm.data.TokenLoader(dataset, 40, 3, seed=4, return_tensors="np")
    reference.set_epoch(1)
    epoch_1 = [b["input_ids"] for b in reference]
    for clone in (copy.deepcopy(loader), pickle.loads(pickle.dumps(loader))):
        dl = torch.utils.data.DataLoader(clone, batch_size=None, num_workers=2, persistent_workers=True)
        [b for b in dl]
        clone.set_epoch(1)  # reaches the persistent workers only through shared memory
        assert_same_batches([b["input_ids"].numpy() for b in dl], epoch_1)


def test_batches_consumed_counts_from_where_the_workers_began(dataset):
    loader = pm.data.TokenLoader(dataset, 40, 3, seed=4, prefetch=2, num_threads=1)
    uninterrupted = [b["input_ids"].numpy() for b in pm.data.TokenLoader(dataset, 40, 3, seed=4)]
    next(iter(loader))  # a look at one batch in the main process moves the loader one batch on
    taken = dataloader_batches(loader, 2, limit=2)
    assert_same_batches(taken, uninterrupted[1:3])
    state = loader.state_dict(batches_consumed=2)
    assert (state["epoch"], state["position"]) == (0, 3 * loader.global_batch_size)
    resumed = pm.data.TokenLoader(dataset, 40, 3, seed=4)
    resumed.load_state_dict(state)
    assert_same_batches([b["input_ids"].numpy() for b in resumed], uninterrupted[3:])


def test_state_of_another_dataset_with_the_same_totals_is_refused(tmp_path):
    # Same document and token counts, other document lengths: another sample order.
    a = pm.data.write_tokens(tmp_path / "a", [[1] * 10] * 20, vocab_size=10, eos_id=0)
    b = pm.data.write_tokens(tmp_path / "b", [[1], [1] * 19] * 10, vocab_size=10, eos_id=0)
    state = pm.data.TokenLoader(a, 8, 2).state_dict()
    with pytest.raises(ValueError, match="expected dataset='[0-9a-f]{32}'.*another sample order"):
        pm.data.TokenLoader(b, 8, 2).load_state_dict(state)
    pm.data.TokenLoader(pm.data.TokenDataset(tmp_path / "a"), 8, 2).load_state_dict(state)


def test_failing_to_start_prefetch_threads_is_an_exception(dataset, tmp_path):
    # Out of address space for thread stacks: the loader must raise, not abort the process.
    script = textwrap.dedent(f"""
        import resource
        import pocketml as pm
        loader = pm.data.TokenLoader(pm.data.TokenDataset({str(dataset.path)!r}), 8, 1, prefetch=64,
                                     num_threads=64, return_tensors="np")
        status = open("/proc/self/status").read()
        size = int(status.split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (size + (40 << 20), resource.RLIM_INFINITY))
        try:
            iter(loader)
        except RuntimeError as exc:
            print("raised:", exc)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "raised: cannot start 64 prefetch threads" in result.stdout


def native_threads():
    return len(os.listdir("/proc/self/task"))


@pytest.mark.filterwarnings("ignore:This DataLoader will create:UserWarning")  # 3 workers on 2 cores, on purpose
@pytest.mark.parametrize("workers, context", [(0, None), (2, "fork"), (3, "fork"), (2, "spawn")])
def test_dataloader_workers_keep_the_order(dataset, workers, context):
    uninterrupted = [b["input_ids"].numpy() for b in pm.data.TokenLoader(dataset, 40, 3, packing="best_fit")]
    loader = pm.data.TokenLoader(dataset, 40, 3, packing="best_fit")
    loader.plan()  # a native plan in the parent: spawned workers get the loader pickled without it
    assert_same_batches(dataloader_batches(loader, workers, context=context), uninterrupted)


def test_ranks_times_workers_cover_each_sample_once(dataset):
    seen = []
    for rank in range(2):
        loader = pm.data.TokenLoader(str(dataset.path), 24, 3, seed=9, rank=rank, world_size=2, drop_last=False)
        for b in torch.utils.data.DataLoader(loader, batch_size=None, num_workers=2):
            seen += b["sample_ids"].tolist()
    real = [s for s in seen if s >= 0]
    assert sorted(real) == list(range(loader.plan(0).num_samples))
    assert len(seen) - len(real) < 2 * 3


def test_empty_dataset_yields_nothing(tmp_path):
    ds = pm.data.write_tokens(tmp_path / "empty", [], vocab_size=10, eos_id=0)
    assert len(ds) == 0 and ds.num_tokens == 0 and ds.manifest.shards == ()
    loader = pm.data.TokenLoader(ds, 8, 2, drop_last=False)
    assert list(loader) == [] and len(loader) == 0
    assert pm.data.verify(tmp_path / "empty") == []


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error without CUDA")
def test_pinned_memory_without_cuda_is_refused(dataset):
    with pytest.raises(ValueError, match=r"argument 'pin_memory': expected .* CUDA available: False"):
        pm.data.TokenLoader(dataset, 16, 2, pin_memory=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="pinned memory needs a CUDA device")
def test_pinned_batches(dataset):
    batch = next(iter(pm.data.TokenLoader(dataset, 16, 2, pin_memory=True)))
    assert all(t.is_pinned() for t in batch.values())
    assert torch.equal(batch["input_ids"].cuda(non_blocking=True).cpu(), batch["input_ids"])


def test_break_joins_threads_and_frees_batches(dataset):
    loader = pm.data.TokenLoader(dataset, 32, 2, prefetch=4, num_threads=4)  # many more batches than the window
    threads = native_threads()
    for i, batch in enumerate(loader):
        if i == 1:
            assert native_threads() == threads + 4 and core.live_batches() > 1
            break
    assert core.live_batches() >= 1  # the batch still held by the loop variable stays valid
    del batch
    gc.collect()
    assert native_threads() == threads and core.live_batches() == 0
    assert loader.state_dict()["position"] == 2 * 2


def test_exception_in_the_loop_and_abandoned_iterators_clean_up(dataset):
    loader = pm.data.TokenLoader(dataset, 128, 4, prefetch=4, num_threads=2)
    threads = native_threads()
    def train_step_fails():
        for _ in loader:
            1 / 0

    # The traceback (and the batch in its frame) is let go after the except block, as in a training script.
    raised = False
    try:
        train_step_fails()
    except ZeroDivisionError:
        raised = True
    assert raised
    gc.collect()
    assert native_threads() == threads and core.live_batches() == 0
    its = [iter(pm.data.TokenLoader(dataset, 128, 4, prefetch=4, num_threads=2)) for _ in range(4)]
    its.append(iter(loader))  # never read: producers fill their windows and wait
    newer = iter(loader)  # both would advance the loader's one position (it skipped samples and epochs)
    with pytest.raises(RuntimeError, match="a newer iterator of this loader took over"):
        next(its[-1])
    next(newer)
    del its, newer
    gc.collect()
    assert native_threads() == threads and core.live_batches() == 0


def test_keyboard_interrupt_while_waiting_for_a_batch(tmp_path):
    # Large rows from one producer thread: the consumer spends its time waiting in the native next().
    docs = [np.arange(1 << 16) % 1000 for _ in range(64)]
    ds = pm.data.write_tokens(tmp_path / "big", docs, vocab_size=1000, eos_id=0)
    loader = pm.data.TokenLoader(ds, 1 << 15, 64, prefetch=2, num_threads=1, return_tensors="np")
    threads = native_threads()
    # Python's own SIGINT handler, also where this process inherited SIGINT ignored (a shell's background
    # job, as CI may start it): Python then installs none, and the signal would not interrupt anything.
    previous_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT))
    timer.start()
    def train():
        for _ in range(1000):
            for _ in loader:
                pass

    interrupted = False
    try:
        train()
    except KeyboardInterrupt:
        interrupted = True
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous_handler)
    assert interrupted
    gc.collect()
    assert native_threads() == threads and core.live_batches() == 0


def test_producers_fill_the_window_while_python_holds_the_gil(dataset):
    loader = pm.data.TokenLoader(dataset, 32, 2, prefetch=4, num_threads=2, return_tensors="np")
    it = iter(loader)  # the producers start at once
    # Pure-Python spinning holds the GIL (but for the interpreter's switch interval);
    # native producers never take it and fill the window meanwhile.
    deadline = time.perf_counter() + 5
    while core.live_batches() < 4 and time.perf_counter() < deadline:
        pass
    assert core.live_batches() == 4
    time.sleep(0.1)
    assert core.live_batches() == 4  # bounded: never more than the window
    first = next(it)
    assert first["input_ids"].shape == (2, 32)
    del first, it
    gc.collect()
    assert core.live_batches() == 0


def test_one_iterator_read_by_two_threads_hands_out_each_batch_once(dataset):
    # The native prefetcher serves one consumer: two at once took slots out of order and then waited forever.
    loader = pm.data.TokenLoader(dataset, 32, 2, prefetch=4, num_threads=2, return_tensors="np")
    it, taken = iter(loader), []

    def consume():
        for batch in it:
            taken.append(batch["input_ids"].tobytes())
    threads = [threading.Thread(target=consume) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not any(thread.is_alive() for thread in threads)
    expected = [b["input_ids"].tobytes() for b in pm.data.TokenLoader(dataset, 32, 2, return_tensors="np")]
    assert sorted(taken) == sorted(expected) and loader.epoch == 1


def test_a_new_iterator_waits_for_a_batch_being_taken_in_another_thread(tmp_path):
    # A reader thread inside next() while iter() superseded its iterator: both joined one native thread
    # (a hang), the closed prefetcher's None read as the end of the epoch (an epoch skipped), or the
    # position moved after the new iterator had started from it (a batch handed out twice).
    # Batches of 4 M tokens (a few ms each, 4 per epoch): the reader spends its time in the native next().
    ds = pm.data.write_tokens(tmp_path / "big", [np.full(1 << 20, 5, np.uint16) for _ in range(16)], vocab_size=10,
                              eos_id=0)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)  # the main thread gets the GIL back promptly
    try:
        for prefetch in (1, 0):
            loader = pm.data.TokenLoader(ds, 1 << 16, 64, prefetch=prefetch, num_threads=1, shuffle=False,
                                         return_tensors="np")
            steps, old, taken, outcome, go = len(loader), iter(loader), [], [], threading.Event()

            def read():
                try:
                    for _ in range(2):
                        taken.append(next(old))
                    go.wait()
                    while True:  # into next() as the new iterator takes over
                        taken.append(next(old))
                except (RuntimeError, StopIteration) as exc:
                    outcome.append(repr(exc))
            reader = threading.Thread(target=read, daemon=True)
            reader.start()
            while len(taken) < 2:
                time.sleep(0.0005)
            go.set()
            time.sleep(0.002)  # the reader is inside next(), most often waiting for the batch being built
            new = iter(loader)
            reader.join(timeout=30)
            assert not reader.is_alive() and outcome and "a newer iterator" in outcome[0], outcome
            rest = [int(b["sample_ids"][0]) for b in new]  # the epoch's other batches, once each
            assert len(rest) == steps - len(taken) and rest[0] == 64 * len(taken)
            assert (loader.epoch, loader.position) == (1, 0)
    finally:
        sys.setswitchinterval(switch_interval)


def test_set_epoch_during_an_iteration_applies_to_the_next(dataset):
    # As torch's DistributedSampler.set_epoch: the open iterator keeps its epoch's batches and stops moving
    # the position; it had gone on moving it (an epoch skipped, or a checkpoint past samples never read).
    loader = pm.data.TokenLoader(dataset, 32, 2, return_tensors="np")
    probe = pm.data.TokenLoader(dataset, 32, 2, return_tensors="np")
    probe.set_epoch(1)
    epoch_one = [b["sample_ids"].tolist() for b in probe]
    epoch_zero = []
    for i, batch in enumerate(loader):
        epoch_zero.append(batch["sample_ids"].tolist())
        if i == len(loader) - 1:
            loader.set_epoch(1)  # the last batch of epoch 0
    assert (loader.epoch, loader.position) == (1, 0)
    assert [b["sample_ids"].tolist() for b in loader] == epoch_one
    loader.set_epoch(0)
    it = iter(loader)
    next(it), next(it)
    loader.set_epoch(1)
    assert [batch["sample_ids"].tolist() for batch in it] == epoch_zero[2:]  # its own epoch, to the end
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["position"] == 0
    # The last epoch an int64 holds: set or restored, it is refused when an iteration would start it (its end
    # would be epoch 2^63; reading it to the end raised OverflowError), after 2^63 - 2 ended at it.
    loader.set_epoch(2**63 - 2)
    assert sum(1 for _ in loader) == len(epoch_zero) and loader.epoch == 2**63 - 1
    restored = pm.data.TokenLoader(dataset, 32, 2, return_tensors="np")
    restored.load_state_dict(loader.state_dict())
    for stuck in (loader, restored):
        with pytest.raises(ValueError, match="epoch 9223372036854775807 is the last value of the int64 epoch counter"):
            iter(stuck)


def test_a_forked_child_with_an_open_iterator_exits_normally(dataset):
    # The child's copies of the parent's prefetchers were destroyed at its exit: joining producer threads
    # that stayed in the parent hung, or threw ESRCH out of a destructor (abort).
    script = textwrap.dedent(f"""
        import os, sys, time
        import pocketml as pm
        loader = pm.data.TokenLoader({str(dataset.path)!r}, 16, 2, return_tensors="np")
        it = iter(loader)
        next(it)
        for mode in ("exit", "new iteration"):
            pid = os.fork()
            if pid == 0:
                if mode == "new iteration":
                    sum(1 for _ in loader)
                sys.exit(0)
            start = time.time()
            while True:
                done, status = os.waitpid(pid, os.WNOHANG)
                if done:
                    break
                if time.time() - start > 20:
                    os.kill(pid, 9)
                    sys.exit(f"{{mode}}: the child hung")
                time.sleep(0.05)
            if os.waitstatus_to_exitcode(status) != 0:
                sys.exit(f"{{mode}}: the child ended with {{os.waitstatus_to_exitcode(status)}}")
        print("parent", sum(1 for _ in it) + 1 == len(pm.data.TokenLoader({str(dataset.path)!r}, 16, 2)))
    """)
    for _ in range(3):
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
        assert result.returncode == 0 and result.stdout.strip() == "parent True", result.stderr[-2000:]


def test_a_forked_child_keeps_its_own_position_and_leaves_live_iterators_alone(dataset):
    loader = pm.data.TokenLoader(dataset, 32, 2, prefetch=2, return_tensors="np")
    first = iter(loader)
    next(first)
    first.close()
    pid = os.fork()
    if pid == 0:  # the child reads a batch of its own: exit 0 if its loader, not the parent's, moved to 4
        signal.alarm(30)  # a hang fails the test instead of stalling it
        try:
            child = iter(loader)
            next(child)
            child.close()
            os._exit(0 if loader.position == 4 else 2)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert (loader.epoch, loader.position) == (0, 2)  # the counters are shared only with DataLoader workers
    again = iter(loader)
    next(again)
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)
        try:
            try:
                next(again)  # its prefetch threads stayed in the parent: waiting on them hung forever
                os._exit(1)
            except RuntimeError as exc:
                if "prefetch threads run in process" not in str(exc):
                    os._exit(2)
            next(iter(loader))  # a new one here, while the parent's is open
            again.close()  # freeing the parent's prefetcher would join threads that are not here
            del again
            gc.collect()
            os._exit(0)
        except BaseException:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    again.close()


def test_load_state_dict_checks_everything_before_changing_anything(dataset):
    loader = pm.data.TokenLoader(dataset, 32, 2, return_tensors="np")
    next(iter(loader))
    good = loader.state_dict()
    cases = [
        (dict(good, epoch=7, position=-1), ValueError, r"state\['position'\]"),  # the epoch was applied first
        (dict(good, epoch=2**63), ValueError, r"state\['epoch'\]': expected an integer in \[0, 9223372036854775808\)"),
        ({k: v for k, v in good.items() if k != "epoch"}, ValueError, "expected keys epoch and position"),
        (dict(good, shuffle=1), ValueError, "expected shuffle=True"),
        (dict(good, version=2.0), ValueError, "expected version 2, got 2.0"),
        (None, TypeError, "expected a dict from state_dict"),
    ]
    for state, error, message in cases:
        with pytest.raises(error, match=message):
            loader.load_state_dict(state)
        assert (loader.epoch, loader.position) == (good["epoch"], good["position"])


def test_sizes_the_plan_cannot_hold_are_refused_when_the_loader_is_made(dataset):
    # seq_len + 1 overflowed int64 in plan building, which then grew until memory ran out.
    for kwargs, message in (({"seq_len": 2**63 - 1}, "argument 'seq_len'"), ({"prefetch": 2**31}, "argument 'prefetch'"),
                            ({"num_threads": 2**31}, "argument 'num_threads'"), ({"window": 2**63}, "argument 'window'"),
                            ({"seq_len": 2**16, "batch_size": 2**15}, r"batch_size \* seq_len < 2\^31")):
        with pytest.raises(ValueError, match=message):
            pm.data.TokenLoader(dataset, **{"seq_len": 32, "batch_size": 2, **kwargs})


def test_set_epoch_right_after_a_restore_keeps_the_restored_position(dataset):
    # The README's DataLoader advice, set_epoch(e) before each epoch, made a resumed run repeat its epoch's start.
    uninterrupted = [b["input_ids"].numpy() for b in pm.data.TokenLoader(dataset, 40, 3, seed=5)]
    loader = pm.data.TokenLoader(dataset, 40, 3, seed=5)
    state = loader.state_dict()
    state["position"] = 4 * loader.global_batch_size
    resumed = pm.data.TokenLoader(dataset, 40, 3, seed=5)
    resumed.load_state_dict(state)
    resumed.set_epoch(0)  # the restored epoch: its position stays, however often it is set
    resumed.set_epoch(0)
    assert_same_batches(dataloader_batches(resumed, 2), uninterrupted[4:])
    resumed.set_epoch(1)
    resumed.set_epoch(0)  # another epoch was set since the restore: epoch 0 starts over
    assert_same_batches([b["input_ids"].numpy() for b in resumed], uninterrupted)
    again = pm.data.TokenLoader(dataset, 40, 3, seed=5)
    again.load_state_dict(state)
    again.set_epoch(1)  # another epoch: from its start
    assert (again.epoch, again.position) == (1, 0)


def test_flags_and_indices_are_bools_and_ints_not_anything_truthy(dataset):
    for kwargs in ({"shuffle": "no"}, {"drop_last": 0.0}):  # "no" shuffled
        with pytest.raises(TypeError, match=f"argument '{next(iter(kwargs))}': expected a bool"):
            pm.data.TokenLoader(dataset, 32, 2, **kwargs)
    assert pm.data.TokenLoader(dataset, 32, 2, shuffle=np.bool_(False)).shuffle is False
    with pytest.raises(TypeError, match="argument 'i': expected an int, got bool"):
        dataset[True]  # read document 1
    assert np.array_equal(dataset[np.int64(1)], dataset[1])
