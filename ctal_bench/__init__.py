"""ctal-bench: CTAL next to late-fusion baselines, with honest statistics and timing."""

__version__ = "0.1.0"
