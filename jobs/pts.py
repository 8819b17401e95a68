"""Pivotal Token Search as a Ray job (`phi4ray pts`): without --endpoint it serves the run's checkpoint itself.

    ray job submit --working-dir . -- python jobs/pts.py --recipe tiny --run-dir DIR [--endpoint URL --model NAME --questions Q.jsonl] [key.sub=value ...]

The arguments are those of `phi4ray pts` (see `phi4ray pts --help`); jobs/README.md has more.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("pts"))
