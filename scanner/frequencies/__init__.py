"""`scanner frequencies`: how often each token of a model's tokenizer occurs in a reference
corpus (DC-PDD's frequency table). What other parts may use: the run and the table's reader."""

from scanner.frequencies.count import read_table, tokenizer_fingerprint
from scanner.frequencies.run import run_frequencies

__all__ = ["read_table", "run_frequencies", "tokenizer_fingerprint"]
