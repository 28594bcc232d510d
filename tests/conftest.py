import pytest


def pytest_collection_modifyitems(config, items):
    """`cuda` tests run only where a GPU is present (select them with -m cuda)."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
