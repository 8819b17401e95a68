"""Curation as a Ray job: raw HTML/JSONL/Parquet into curated/ (`phi4ray curate`).

    ray job submit --working-dir . -- python jobs/curate.py --recipe tiny --run-dir DIR [--input PATH ...] [key.sub=value ...]

The arguments are those of `phi4ray curate` (see `phi4ray curate --help`); jobs/README.md has more.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("curate"))
