import pytest


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="the fast tier for working: unit tests only, leaving out those marked integration")


def pytest_collection_modifyitems(config, items):
    """`--fast` leaves out integration tests; `cuda` tests run only where a GPU is present (select
    them with -m cuda)."""
    import torch

    if config.getoption("--fast"):
        kept = [item for item in items if "integration" not in item.keywords]
        config.hook.pytest_deselected(items=[item for item in items if "integration" in item.keywords])
        items[:] = kept
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)
