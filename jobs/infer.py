"""Dataset inference as a Ray job:

    ray job submit --working-dir . -- python jobs/infer.py SUSPECT... --reference REF... --model M --out DIR

Same options as `scanner infer`. Both sets are scanned on the scoring actors (resumable scan
runs under DIR), so the inputs and --out must be reachable from every node; the blind baseline
and the set test run in the driver (eval sets are small).
Exit 0: not shown; 1: seen at --alpha; 2: invalid (the texts alone tell the sets apart) or bad input.
"""

import sys

from scanner.cli import main

if __name__ == "__main__":
    sys.exit(main(["infer", *sys.argv[1:]]))
