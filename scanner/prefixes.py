"""The prefixes of ReCaLL and Con-ReCall: a file of texts the model did not see (`recall_prefix`)
and one of texts it saw (`conrecall_prefix`), each read once on the driver, validated like any
input, and joined into one prefix that the scoring actors put in front of every scanned text.
Their content is part of the run's identity (a file edited between two runs makes another run)."""

from __future__ import annotations

import hashlib
import json

from scanner.corpus import Columns, read_corpus
from scanner.errors import InputError
from scanner.scoring.registry import SETTING_OF_NEED

SEPARATOR = "\n\n"  # between the file's texts
# the input of the scores each prefix file gives (recall_prefix: prefix_logprobs, ...)
NEED_OF_SETTING = {setting: need for need, setting in SETTING_OF_NEED.items() if setting.endswith("_prefix")}
OVERLAP_WARNING = ("the prefix texts must not be among the scanned texts: a scanned text that is also in a prefix "
                   "gets a meaningless ReCaLL / Con-ReCall score")


def read_prefixes(cfg) -> dict:
    """{need: the joined prefix text} for the prefix files the config names ({} for none)."""
    out = {}
    for setting, need in NEED_OF_SETTING.items():
        path = getattr(cfg, setting)
        if not path:
            continue
        column = f" (prefix files are read with the scan's text column, {cfg.text_col!r})" if cfg.text_col else ""
        try:
            corpus = read_corpus([path], Columns(text=cfg.text_col, label=None))
        except InputError as e:
            raise InputError(f"{setting}: {e}{column}") from None
        if corpus.quarantine.height:
            first = corpus.quarantine.row(0, named=True)
            raise InputError(f"{setting} {path}: {corpus.quarantine.height} row(s) unusable, e.g. row {first['row']}: "
                             f"{first['reason']}{column}")
        out[need] = SEPARATOR.join(corpus.samples.sort("file", "row")["text"].to_list())
    return out


def fingerprint(prefixes: dict) -> str | None:
    if not prefixes:
        return None
    return hashlib.sha256(json.dumps(prefixes, sort_keys=True).encode()).hexdigest()[:16]
