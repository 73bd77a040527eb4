"""Sampling outputs of the shipped models are unchanged by refactors of the sampling path.

The golden arrays were recorded by tests/golden/make_golden.py with the code before per-row depth existed.
Tolerance 2e-4 absolute on images in [-1, 1]: float32 CPU GEMMs round differently with the BLAS build and
thread count; a wrong depth, CFG or skip path changes pixels by 1e-2 or more.
"""

import os

import numpy as np
import pytest

from golden.make_golden import CASES, case_key, sample_case

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "shipped_samples.npz")


@pytest.mark.parametrize("case", CASES, ids=[case_key(*c) for c in CASES])
def test_shipped_samples_match_golden(case):
    want = np.load(GOLDEN)[case_key(*case)]
    got = sample_case(*case)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-4)
