#!/usr/bin/env python
"""Entry point: ``python bench.py ...`` is the same as the ``ctal-bench`` console script."""
import sys

from ctal_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
