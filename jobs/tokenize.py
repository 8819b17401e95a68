"""Tokenization as a Ray job: curated/ and synthetic/ into packed rows under tokens/ (`phi4ray tokenize`).

    ray job submit --working-dir . -- python jobs/tokenize.py --recipe tiny --run-dir DIR [key.sub=value ...]

The arguments are those of `phi4ray tokenize` (see `phi4ray tokenize --help`); jobs/README.md has more.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("tokenize"))
