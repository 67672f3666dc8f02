"""Shared fixtures: every kernel test runs once per ISA variant this machine supports.

POCKETML_TEST_ISAS=scalar,avx2 narrows the list (e.g. to reproduce a failure).
"""

import os

import numpy as np
import pytest

import pocketml


def _isas_under_test():
    available = pocketml.supported_isas()
    wanted = os.environ.get("POCKETML_TEST_ISAS")
    if not wanted:
        return available
    return [isa for isa in wanted.split(",") if isa in available]


@pytest.fixture(params=_isas_under_test())
def isa(request):
    """Runs the test with one kernel variant active."""
    with pocketml.use_isa(request.param):
        yield request.param


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
