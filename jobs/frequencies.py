"""DC-PDD's token frequency table as a Ray job:

    ray job submit --working-dir . -- python jobs/frequencies.py CORPUS... --model MODEL --out DIR

Same options as `scanner frequencies`. One Ray task per corpus shard counts the tokens of its
texts with the model's tokenizer and writes them, so the corpus (local paths reachable from every
node, or URIs such as s3://...) never passes through the driver; the table is their sum.
Rerunning the same command resumes shard by shard; --add counts new files only. Then scan with
`token_frequencies: DIR` (or --token-frequencies DIR) for the dc_pdd score.
Exit 0: done; 2: bad input or some shard failed (rerun to retry it).
"""

import sys

from scanner.cli import main

if __name__ == "__main__":
    sys.exit(main(["frequencies", *sys.argv[1:]]))
