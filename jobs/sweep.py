"""Contamination sweep as a Ray job:

    ray job submit --working-dir . -- python jobs/sweep.py DATA... --detector DIR --out DIR_OR_URI [options]

Same options as `scanner sweep` (a corpus too big to score: --sample-rate R or --sample N, and
--shard-rate F to leave files unread). The driver joins the cluster the job runs on; read tasks and
scoring actors run on the workers, so DATA and --out must be reachable from every node (shared
mount or a URI such as s3://...). Submitting the same command again after a stop or crash skips
every shard that finished. Exit 0: all shards done; 2: bad input (failed shards listed in
manifest.json and the report).
"""

import sys

from scanner.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
