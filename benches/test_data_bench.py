"""pytest-benchmark view of the data loader (`make bench`); compare.py's data suite holds the peer table."""

import sys
from pathlib import Path

import pytest

import pocketml as pm

sys.path.insert(0, str(Path(__file__).parent))
from suites.data import BATCH, SEQ_LEN, _build_dataset  # noqa: E402


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return _build_dataset(tmp_path_factory.mktemp("bench-data"), 1 << 23)


@pytest.mark.parametrize("packing", ["concat", "best_fit"])
def test_token_loader_batch(benchmark, dataset, packing):
    loader = pm.data.TokenLoader(dataset, SEQ_LEN, BATCH, packing=packing, prefetch=8)
    batches = {"it": iter(loader)}

    def next_batch():
        try:
            return next(batches["it"])
        except StopIteration:
            batches["it"] = iter(loader)
            return next(batches["it"])

    benchmark(next_batch)


@pytest.mark.parametrize("packing", ["concat", "best_fit"])
def test_epoch_plan(benchmark, dataset, packing):
    benchmark(lambda: pm._native.core.EpochPlan(dataset.store, packing, SEQ_LEN, 0, 1, True))
