"""Flag rates of a sampled corpus and their sampling variance (the design-based half of a sweep's
interval; scanner.contamination adds the detector's half).

The design (scanner.sampling): input files ("units") read with probability f, documents of a read
file scored with probability r, both Poisson. For a group of documents (a source, or the whole
corpus) the flag rate Q is the share of its documents the detector would flag if all were scored.

- A source: Q_s = k_s / n_s, its flagged over its scored documents in the files read (a ratio
  estimator: it needs neither r nor the source's size).
- The corpus: sum_s W_s Q_s with W_s the source's share of the corpus's documents. Single stage
  (every file read): W_s is known, the documents read. Two stages: the files read give the shares
  (W_s = their documents of s over their documents), estimated like the rates.

Variance, by linearisation over the units read (Särndal, Swensson & Wretman, ch. 4-5 and 8):

    v = (1 - f) m / (m - 1) sum_i u_i^2  +  f sum_s W_s^2 Q_s (1 - Q_s) / n_s      (m files read)

u_i is unit i's influence on the estimate: for a source (k_is - Q_s n_is) / n_s; for the corpus
sum_s W_s (k_is - Q_s n_is) / n_s + sum_s (Q_s - Q) N_is / N_read (the second term carries the
uncertainty of the estimated shares). The first term is Poisson sampling's variance of the units'
totals (it vanishes when every file is read); the second the scored documents' binomial variance
within the files read, which also holds each document's flag noise, so a full sweep (f = r = 1)
keeps the binomial interval it always had. A source that lives in one file (the default source,
its path) was read whole or not at all: its first-stage term is 0.

With few units read, v is itself uncertain: the effective sample size n_eff = Q (1 - Q) / v is
shrunk by (z / t_{m-1})^2, m the units read (Korn & Graubard 1998), before the interval is taken.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

import numpy as np
from scipy.stats import norm, t


@dataclass(frozen=True)
class Unit:
    """A first-stage unit (an input file): its bytes, whether it was read, and what its read
    shards gave per source: (documents, scored, flagged)."""

    bytes: int
    picked: bool
    sources: dict[str, tuple[int, int, int]] = field(default_factory=dict)


@dataclass(frozen=True)
class FlagRate:
    """A group's estimated flag rate with its design variance."""

    q: float
    variance: float
    scored: int  # documents scored (n)
    flagged: int  # of them flagged (k)
    documents: float  # documents in the group: counted, or estimated where files were left unread
    documents_ci: tuple[float, float] | None = None  # when estimated
    units: int | None = None  # files read, when a first stage left some out: the variance's degrees of freedom + 1

    def effective(self) -> tuple[float, float]:
        """(flagged, scored) of the simple random sample as informative as this design: what the
        likelihood interval (scanner.contamination) takes. Never more documents than were scored."""
        n = float(self.scored)
        if self.variance > 0 and 0 < self.q < 1:
            n = min(n, self.q * (1 - self.q) / self.variance)
        if self.units is not None:
            n *= (norm.ppf(0.975) / t.ppf(0.975, max(self.units - 1, 1))) ** 2
        return self.q * n, n


def flag_rates(units: list[Unit], shard_rate: float, sources_within_files: bool) -> tuple[dict[str, FlagRate], FlagRate | None]:
    """({source: its flag rate}, the corpus's) from every unit of the corpus, read or not.
    sources_within_files: each source is one file's (the default source), so a source read is
    read whole."""
    f = shard_rate
    read = [u for u in units if u.picked and u.sources]
    totals: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(3))
    for u in read:
        for s, counts in u.sources.items():
            totals[s] += counts
    sources = sorted(s for s, (_, n, _) in totals.items() if n > 0)
    if not sources:
        return {}, None
    q = {s: totals[s][2] / totals[s][1] for s in sources}
    docs_read = sum(totals[s][0] for s in sources)
    weight = {s: totals[s][0] / docs_read for s in sources}
    binomial = {s: q[s] * (1 - q[s]) / totals[s][1] for s in sources}
    two_stage = f < 1
    docs, docs_ci = _documents(units, read, f) if two_stage else (docs_read, None)

    def unit_term(influence) -> float:
        m = len(read)
        return (1 - f) * m / max(m - 1, 1) * float(sum(influence(u) ** 2 for u in read)) if two_stage else 0.0

    def counts(u: Unit, s: str) -> tuple[int, int, int]:
        return u.sources.get(s, (0, 0, 0))

    per_source = {}
    for s in sources:
        n = totals[s][1]
        if sources_within_files or not two_stage:  # the source's documents were all read: no first stage
            per_source[s] = FlagRate(q=q[s], variance=binomial[s], scored=int(n), flagged=int(totals[s][2]),
                                     documents=totals[s][0])
            continue
        first = unit_term(lambda u: (counts(u, s)[2] - q[s] * counts(u, s)[1]) / n)
        per_source[s] = FlagRate(q=q[s], variance=first + f * binomial[s], scored=int(n), flagged=int(totals[s][2]),
                                 documents=weight[s] * docs, units=len(read))
    q_all = sum(weight[s] * q[s] for s in sources)

    def corpus_influence(u: Unit) -> float:
        return sum(weight[s] * (counts(u, s)[2] - q[s] * counts(u, s)[1]) / totals[s][1]
                   + (q[s] - q_all) * counts(u, s)[0] / docs_read for s in sources)

    variance = unit_term(corpus_influence) + (f if two_stage else 1.0) * sum(weight[s] ** 2 * binomial[s] for s in sources)
    corpus = FlagRate(q=q_all, variance=variance, scored=int(sum(totals[s][1] for s in sources)),
                      flagged=int(sum(totals[s][2] for s in sources)), documents=docs, documents_ci=docs_ci,
                      units=len(read) if two_stage else None)
    return per_source, corpus


def _documents(units: list[Unit], read: list[Unit], f: float) -> tuple[float, tuple[float, float]]:
    """The corpus's documents, from the files read scaled by bytes (a ratio estimator), with a 95%
    interval: files left unread are never opened, so their rows are not counted."""
    rows = np.array([sum(c[0] for c in u.sources.values()) for u in read], float)
    size = np.array([u.bytes for u in read], float)
    total_bytes = float(sum(u.bytes for u in units))
    per_byte = rows.sum() / size.sum()
    sd = total_bytes * np.sqrt((1 - f) * np.sum((rows - per_byte * size) ** 2)) / size.sum()
    estimate = per_byte * total_bytes
    return estimate, (max(float(rows.sum()), estimate - 1.96 * sd), estimate + 1.96 * sd)
