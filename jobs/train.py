"""One training stage as a Ray job: Ray Train + DeepSpeed into checkpoints/<stage>/ (`phi4ray train`).

    ray job submit --working-dir . -- python jobs/train.py pretrain|midtrain|sft|dpo --recipe tiny --run-dir DIR [key.sub=value ...]

The arguments are those of `phi4ray train` (see `phi4ray train --help`); jobs/README.md has more.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("train"))
