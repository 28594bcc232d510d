"""``python -m ctal_bench ...``: the same as ``bench.py`` and the ``ctal-bench`` console script."""
import sys

from ctal_bench.cli import main

sys.exit(main())
