"""The whole recipe, every stage in order, as a Ray job (`phi4ray run`).

    ray job submit --working-dir . -- python jobs/pipeline.py --recipe tiny --run-dir DIR [--stages curate,synth] [key.sub=value ...]

Submitting it again after a failure or `ray job stop` continues where it stopped. The arguments
are those of `phi4ray run` (see `phi4ray run --help`); jobs/README.md has more.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("run"))
