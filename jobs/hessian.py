"""The Hessian test as a Ray job:

    ray job submit --working-dir . -- python jobs/hessian.py DATA... --model M --out DIR [--scan RUN]

Same options as `scanner hessian`. One model actor per GPU measures chunks of samples (one
sample's graph at a time); each chunk is saved as it finishes, so rerunning the same command
resumes. Exit 0: done; 2: bad input.
"""

import sys

from scanner.cli import main

if __name__ == "__main__":
    sys.exit(main(["hessian", *sys.argv[1:]]))
