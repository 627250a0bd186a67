"""Exact n-gram overlap as a Ray job:

    ray job submit --working-dir . -- python jobs/overlap.py EVAL... --corpus CORPUS... --out DIR [--n 13]

Same options as `scanner overlap`. The eval items are indexed in the driver (they are small) and
the index is shipped once through the object store; one Ray task per corpus shard reads, matches
and writes its matches, so the corpus (local paths reachable from every node, or URIs such as
s3://...) never passes through the driver. Rerunning the same command resumes shard by shard.
Exit 0: done; 2: bad input or some shard failed (rerun to retry it).
"""

import sys

from scanner.cli import main

if __name__ == "__main__":
    sys.exit(main(["overlap", *sys.argv[1:]]))
