"""Evaluation as a Ray job: checkpoints into eval/<stage>.json (`phi4ray eval`).

    ray job submit --working-dir . -- python jobs/eval.py --recipe tiny --run-dir DIR [--stage sft --stage dpo] [key.sub=value ...]

The arguments are those of `phi4ray eval` (see `phi4ray eval --help`); jobs/README.md has more.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("eval"))
