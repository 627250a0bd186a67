"""`scanner overlap`: which eval items occur in a corpus, by exact n-grams.

What other commands may use (nightly matches its sets against their corpora); the rest is this
package's own."""

from scanner.overlap.ngrams import DEFAULT_N
from scanner.overlap.run import eval_fingerprint, run_overlap

__all__ = ["DEFAULT_N", "eval_fingerprint", "run_overlap"]
