"""The whole recipe as a Ray job:

    ray job submit --working-dir . -- python jobs/run.py --recipe tiny --run-dir s3://bucket/runs/tiny

It takes the same arguments as `phi4ray run` and joins the cluster the job runs on.
"""

import sys

from phi4ray.cli import main

if __name__ == "__main__":
    sys.exit(main(["run", *sys.argv[1:]]))
