"""A checkpoint served by Ray Serve as an OpenAI-compatible endpoint, as a Ray job (`phi4ray serve`).

    ray job submit --working-dir . -- python jobs/serve.py --recipe tiny --run-dir DIR [--checkpoint sft] [key.sub=value ...]

The job runs while the endpoint serves: `ray job stop JOB_ID` deletes the Serve application and
shuts Serve down. The arguments are those of `phi4ray serve`; jobs/README.md has more.
"""

import sys

from _entry import run

if __name__ == "__main__":
    sys.exit(run("serve"))
