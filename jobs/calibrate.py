"""Controlled-contamination calibration as a Ray job:

    ray job submit --working-dir . -- python jobs/calibrate.py HELDOUT... --model M --out DIR [options]

Same options as `scanner calibrate`. The fine-tune runs as one Ray task (on a GPU when the
cluster has one), the scan on the scoring actors, the detectors in the central training task, so
HELDOUT and --out must be reachable from every node. Submitting the same command again after a
stop or crash continues from the fine-tune's last checkpoint and the scan's finished shards.
Exit 0: done; 2: bad input, or a split that the blind baseline separates.
"""

import sys

from scanner.cli import main

if __name__ == "__main__":
    sys.exit(main(["calibrate", *sys.argv[1:]]))
