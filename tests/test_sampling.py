"""Sampled sweeps without Ray: the keyed-hash sample, the design's estimate and variance on a case
computed by hand, and the coverage of the corpus interval over simulated corpora."""

import hashlib

import numpy as np
import pytest
from scipy.stats import norm, t

from scanner.contamination import OperatingPoint, fraction_over_exposures, sampled_fraction, uncertainty_split
from scanner.design import FlagRate, Unit, flag_rates
from scanner.sampling import Sampling, file_picked, in_sample, uniforms


def test_the_sample_is_a_keyed_hash_of_seed_and_id_and_nothing_else():
    ids = [f"doc-{i}" for i in range(20000)]
    key = b"scanner-sample:document:7"
    by_hand = int.from_bytes(hashlib.blake2b(b"doc-3", key=key, digest_size=8).digest(), "big") / 2**64
    assert uniforms(ids[:5], 7, "document")[3] == by_hand  # the same on any machine, in any order
    small, large = in_sample(ids, 7, 0.05), in_sample(ids, 7, 0.1)
    assert abs(small.mean() - 0.05) < 4 * np.sqrt(0.05 * 0.95 / len(ids))
    assert not (small & ~large).any()  # a lower rate's sample is inside a higher rate's
    np.testing.assert_array_equal(in_sample(ids[::-1], 7, 0.05), small[::-1])  # order does not matter
    assert (in_sample(ids, 8, 0.05) != small).sum() > 1000  # another seed, another sample
    assert file_picked("a/part-1.parquet", 0, 1.0) and sum(file_picked(f"f{i}", 0, 0.1) for i in range(2000)) in range(150, 250)


def test_sampling_options_are_checked():
    assert not Sampling().active and Sampling(rate=0.5).active and Sampling(target=10).active
    with pytest.raises(ValueError, match="--shard-rate must be in"):
        Sampling(shard_rate=0)
    with pytest.raises(ValueError, match="--sample must be a positive"):
        Sampling(target=0)
    assert "rate" not in Sampling(target=100).identity()  # (a target's rate is fixed at the run's start)


def test_two_stage_estimate_and_variance_computed_by_hand():
    """Files read with f = 0.5; two sources spread over the files (a source column)."""
    units = [Unit(1000, True, {"a": (100, 10, 2), "b": (50, 5, 1)}),
             Unit(1000, True, {"a": (100, 10, 4)}),
             Unit(2000, False)]
    rates, corpus = flag_rates(units, 0.5, sources_within_files=False)
    # source a: q = 6/20; influences (2 - 3)/20, (4 - 3)/20; (1-f) m/(m-1) sum u^2 + f q(1-q)/n
    assert rates["a"].q == pytest.approx(0.3)
    assert rates["a"].variance == pytest.approx(0.5 * 2 * 2 * 0.05**2 + 0.5 * 0.3 * 0.7 / 20)
    # the corpus: shares 200/250 and 50/250 from the files read; q = 0.8 * 0.3 + 0.2 * 0.2
    assert corpus.q == pytest.approx(0.28)
    # unit influences: 0.8 (k - q_a n)/20 + 0.2 (k - q_b n)/5 + sum_s (q_s - q) N_is / 250
    u1 = 0.8 * (2 - 3) / 20 + 0.2 * (1 - 1) / 5 + (0.3 - 0.28) * 100 / 250 + (0.2 - 0.28) * 50 / 250
    u2 = 0.8 * (4 - 3) / 20 + (0.3 - 0.28) * 100 / 250
    assert (u1, u2) == pytest.approx((-0.048, 0.048))
    assert corpus.variance == pytest.approx(0.5 * 2 * (u1**2 + u2**2) + 0.5 * (0.64 * 0.21 / 20 + 0.04 * 0.16 / 5))
    # documents: 250 rows in 2000 bytes read, 4000 bytes in all; sd 4000 sqrt(0.5 (25^2 + 25^2)) / 2000
    assert corpus.documents == pytest.approx(500)
    assert corpus.documents_ci == pytest.approx((500 - 1.96 * 50, 500 + 1.96 * 50))
    # two files read: one degree of freedom shrinks the effective sample (Korn & Graubard)
    k, n = corpus.effective()
    assert n == pytest.approx(0.28 * 0.72 / corpus.variance * (norm.ppf(0.975) / t.ppf(0.975, 1)) ** 2)
    assert k == pytest.approx(0.28 * n)


def test_a_source_in_its_own_file_has_no_first_stage_variance():
    units = [Unit(10, True, {"f1": (100, 10, 2)}), Unit(10, False), Unit(10, True, {"f3": (80, 8, 0)})]
    rates, _ = flag_rates(units, 0.5, sources_within_files=True)
    assert rates["f1"].variance == pytest.approx(0.2 * 0.8 / 10) and rates["f1"].documents == 100
    assert rates["f1"].effective() == pytest.approx((2, 10))


def test_a_full_sweep_keeps_the_pooled_binomial_interval():
    """Every file read, every document scored: the weighted estimate is the pooled one, to the digit."""
    op = OperatingPoint(tp=60, n_pos=100, fp=5, n_neg=100)
    units = [Unit(10, True, {"a": (300, 300, 40), "b": (100, 100, 50)}), Unit(10, True, {"a": (200, 200, 10)})]
    rates, corpus = flag_rates(units, 1.0, sources_within_files=False)
    pooled = fraction_over_exposures(100, 600, op, {})
    got = sampled_fraction(corpus, op, {})
    assert got["estimate"] == pytest.approx(pooled["estimate"], abs=1e-12)
    assert got["ci"] == pytest.approx(pooled["ci"], abs=1e-9) and got["n"] == 600 and got["flagged"] == 100
    assert sampled_fraction(rates["b"], op, {})["ci"] == pytest.approx(fraction_over_exposures(50, 100, op, {})["ci"])


def test_the_interval_says_which_part_dominates_and_what_halves_it():
    op = OperatingPoint(tp=50, n_pos=100, fp=10, n_neg=100)
    rate = FlagRate(q=0.3, variance=0.3 * 0.7 / 50, scored=50, flagged=15, documents=1000)
    split = uncertainty_split(rate, 50, op, 0.5)
    q, tpr, fpr = 15.5 / 51, 50.5 / 101, 10.5 / 101
    documents = q * (1 - q) / 50
    detector = 0.25 * tpr * (1 - tpr) / 100 + 0.25 * fpr * (1 - fpr) / 100
    assert split["documents_share"] == pytest.approx(documents / (documents + detector))
    assert split["dominant"] == "documents scored"
    assert split["more_documents_to_halve"] == int(np.ceil(50 * (documents / ((documents + detector) / 4 - detector) - 1)))
    # a detector calibrated on few samples: no number of documents halves the interval
    few = OperatingPoint(tp=5, n_pos=10, fp=1, n_neg=10)
    big = FlagRate(q=0.3, variance=0.3 * 0.7 / 10000, scored=10000, flagged=3000, documents=1e6)
    split = uncertainty_split(big, 10000, few, 0.5)
    assert split["dominant"] == "detector calibration" and split["more_documents_to_halve"] is None


def simulated_corpus(rng, sources=((60, 4000, 0.02), (30, 3000, 0.2), (15, 2000, 0.0)), spread=20.0):
    """[(source, documents, members, bytes)] per file: several sources of different sizes and
    contamination rates, the rate varying between files (beta, mean the source's)."""
    files = []
    for s, (count, size, rate) in enumerate(sources):
        docs = rng.integers(size // 2, 2 * size, size=count)
        rates = rng.beta(rate * spread, (1 - rate) * spread, size=count) if rate > 0 else np.zeros(count)
        sizes = docs * 800 * rng.lognormal(0, 0.2, size=count)
        files += [(f"s{s}", int(d), int(m), int(b)) for d, m, b in zip(docs, rng.binomial(docs, rates), sizes)]
    return files


def one_sweep(rng, rate: float, file_rate: float, tpr=0.6, fpr=0.05, labelled=200,
              sources=None) -> tuple[dict, OperatingPoint, float]:
    """A simulated sampled sweep: (its estimate of the corpus fraction, the detector's measured
    operating point, the true fraction)."""
    files = simulated_corpus(rng) if sources is None else simulated_corpus(rng, sources)
    op = OperatingPoint(tp=int(rng.binomial(labelled, tpr)), n_pos=labelled, fp=int(rng.binomial(labelled, fpr)),
                        n_neg=labelled)
    units = []
    for source, docs, members, size in files:
        if file_rate < 1 and rng.random() >= file_rate:
            units.append(Unit(size, False))
            continue
        m, o = rng.binomial(members, rate), rng.binomial(docs - members, rate)
        units.append(Unit(size, True, {source: (docs, m + o, int(rng.binomial(m, tpr) + rng.binomial(o, fpr)))}))
    _, corpus = flag_rates(units, file_rate, sources_within_files=False)
    truth = sum(f[2] for f in files) / sum(f[1] for f in files)
    return sampled_fraction(corpus, op, {}), op, truth


@pytest.mark.parametrize("file_rate", [1.0, 0.3, 0.1])
@pytest.mark.parametrize("rate", [0.001, 0.01, 0.1])
def test_the_corpus_interval_covers_the_truth_in_simulated_sweeps(rate, file_rate):
    """1000 simulated corpora per cell: one stage (every file read) and two (files read at
    file_rate), documents scored at `rate`; the 95% interval holds the sampling design and the
    detector's measured TPR/FPR. Per cell: ~3 s."""
    rng = np.random.default_rng(int(rate * 1000) + int(file_rate * 10))
    covered = []
    for _ in range(1000):
        e, _, truth = one_sweep(rng, rate, file_rate)
        covered.append(e["ci"][0] <= truth <= e["ci"][1])
    assert np.mean(covered) >= 0.93


@pytest.mark.parametrize("file_rate", [1.0, 0.1])
@pytest.mark.parametrize("rate", [0.001, 0.1])
def test_a_clean_corpus_interval_holds_zero(rate, file_rate):
    """Under the null (no source seen at all) the corpus interval reaches down to 0 in >= 93% of
    1000 simulated sweeps (measured: 98-99%)."""
    rng = np.random.default_rng(7)
    clean = ((60, 4000, 0.0), (30, 3000, 0.0), (15, 2000, 0.0))
    held = [one_sweep(rng, rate, file_rate, sources=clean)[0]["ci"][0] == 0.0 for _ in range(1000)]
    assert np.mean(held) >= 0.93
