"""Synthesis as a Ray job: synthetic/ and questions/ from curated/ (`phi4ray synth`).

    ray job submit --working-dir . -- python jobs/synth.py --recipe tiny --run-dir DIR [key.sub=value ...]

The arguments are those of `phi4ray synth` (see `phi4ray synth --help`); jobs/README.md has more.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("synth"))
