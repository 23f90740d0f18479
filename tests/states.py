"""Comparing module states in tests."""
import torch


def assert_same_state(a, b):
    """Two state dicts hold the same keys and bit-identical tensors (the key names a mismatch)."""
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
