"""Nightly contamination check of eval sets as a Ray job (e.g. from a RayCronJob or cron):

    ray job submit --working-dir . -- python jobs/nightly.py --config nightly.yaml --out /shared/nightly [--model CKPT]

Same options as `scanner nightly`. The job's exit status is the check's: 0 every eval set clean,
1 contamination detected or worse than the previous run, 2 some set could not be checked.
`ray job submit` prints the status; `ray job status` shows SUCCEEDED only for 0.
"""

import sys

from scanner.cli import main

if __name__ == "__main__":
    sys.exit(main(["nightly", *sys.argv[1:]]))
