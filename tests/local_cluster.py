"""A real multi-node local Ray cluster for tests, with all traffic on 127.0.0.1.

Why a network namespace: Ray rewrites ``127.0.0.1``/``localhost`` in
``--node-ip-address`` and ``--address`` to the machine's outward IP
(``services.resolve_ip_for_localhost``), so the GCS, raylets and drivers talk
over e.g. 192.0.2.2, and the GCS/raylet listen on all interfaces.  The only
switch that stops this, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, also refuses
every non-head node.  So the cluster runs in a network namespace that the test
creates (``ip netns add``) and that holds only ``lo``: there is no outward IP
to pick, nothing outside can reach it, and nothing in it can reach out.  Ports
are fixed per node, as the namespace's ports are all free.  Needs root.

Everything that must talk to the cluster (``ray job submit``, ``ss``) runs in
the namespace: use ``cluster.cmd([...])`` / ``cluster.run([...])`` with
``cluster.env``.  Every process in the namespace was started by this class, so
``stop()`` kills exactly those (``ip netns pids``), then deletes the namespace.

Env / flags:
  RAY_AUTH_MODE=token, RAY_AUTH_TOKEN_PATH  Ray's token auth, which a worker
      node needs to join; a token of our own, so ~/.ray/auth_token is untouched.
  PATH with the venv's bin first  `ray job submit` runs `python` from the
      PATH that the nodes were started with.
  other RAY_* dropped (RAY_ADDRESS...)  so nothing attaches to another cluster.
  --node-ip-address=127.0.0.1 / --address=127.0.0.1:PORT  the loopback address
      (resolved inside the namespace, where only lo exists).
  --block, in a new session  `ray start` stays the parent of its node.
  --temp-dir, a fresh short dir in /tmp  sessions never collide with another
      Ray (not under pytest's tmp_path: AF_UNIX socket paths max 107 bytes).
  --num-cpus / --object-store-memory  logical CPUs on a 2-core machine, small
      shared memory.
  --resources {"node_<i>": 1}  tells the nodes apart (head is node_0).
  --disable-usage-stats  no reporting attempts.
"""
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

IP, SS = "/usr/sbin/ip", "/usr/bin/ss"
BIN = str(Path(sys.executable).parent)
HOST = "127.0.0.1"
GCS_PORT, DASHBOARD_PORT, CLIENT_PORT = 6379, 8265, 10001

_NODES_PY = """
import json, sys
from ray._raylet import GcsClient
from ray.core.generated.gcs_pb2 import GcsNodeInfo
infos = GcsClient(address=sys.argv[1]).get_all_node_info(
    timeout=5, state_filter=GcsNodeInfo.GcsNodeState.ALIVE).values()
print(json.dumps([{"node_id": i.node_id.hex(), "ip": i.node_manager_address,
                   "resources": dict(i.resources_total)} for i in infos]))
"""


class LocalCluster:
    def __init__(self, tmp_dir, workers=1, cpus_per_node=4, object_store_mb=200):
        self.tmp = Path(tmp_dir)
        self.workers, self.cpus, self.store_mb = workers, cpus_per_node, object_store_mb
        self.ns = f"raytest-{os.getpid()}-{secrets.token_hex(3)}"
        self.address = f"{HOST}:{GCS_PORT}"
        self.dashboard_url = f"http://{HOST}:{DASHBOARD_PORT}"
        self.procs = []  # the `ray start --block` processes
        self.temp_dir = None
        token = self.tmp / "ray_auth_token"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        env.update(PATH=f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}", RAY_AUTH_MODE="token",
                   RAY_AUTH_TOKEN_PATH=str(token), RAY_USAGE_STATS_ENABLED="0")
        self.env = env
        self._token = token

    # --- running things in the namespace
    def cmd(self, args):
        return [IP, "netns", "exec", self.ns, *map(str, args)]

    def run(self, args, timeout=120, check=True, **kw):
        kw.setdefault("capture_output", True)
        return subprocess.run(self.cmd(args), env=self.env, text=True, timeout=timeout, check=check, **kw)

    # --- lifecycle
    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    def start(self, timeout=120):
        self.tmp.mkdir(parents=True, exist_ok=True)
        self._token.write_text(secrets.token_hex(32))
        self.temp_dir = tempfile.mkdtemp(prefix="ray-")
        subprocess.run([IP, "netns", "add", self.ns], check=True)
        try:
            subprocess.run([IP, "-n", self.ns, "link", "set", "lo", "up"], check=True)
            self._start_node(0, ["--head", f"--port={GCS_PORT}", "--include-dashboard=true",
                                 f"--dashboard-host={HOST}", f"--dashboard-port={DASHBOARD_PORT}",
                                 f"--ray-client-server-port={CLIENT_PORT}"])
            self.wait_for_nodes(1, timeout)
            for i in range(1, self.workers + 1):
                self._start_node(i, [f"--address={self.address}"])
            self.wait_for_nodes(1 + self.workers, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _start_node(self, i, args):
        base = 20000 + 1000 * i  # per-node port block; the namespace is empty
        args += [f"--node-ip-address={HOST}", f"--num-cpus={self.cpus}",
                 f"--object-store-memory={self.store_mb * 1024 * 1024}",
                 f"--resources={json.dumps({f'node_{i}': 1})}",
                 f"--temp-dir={self.temp_dir}", "--disable-usage-stats", "--block",
                 f"--node-manager-port={base + 1}", f"--object-manager-port={base + 2}",
                 f"--dashboard-agent-listen-port={base + 3}", f"--dashboard-agent-grpc-port={base + 4}",
                 f"--runtime-env-agent-port={base + 5}", f"--metrics-export-port={base + 6}",
                 f"--min-worker-port={base + 100}", f"--max-worker-port={base + 999}"]
        log = open(self.tmp / f"node_{i}.log", "w")
        self.procs.append(subprocess.Popen(self.cmd([f"{BIN}/ray", "start", *args]), env=self.env,
                                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        log.close()

    def wait_for_nodes(self, n, timeout=120):
        deadline, last = time.monotonic() + timeout, None
        while time.monotonic() < deadline:
            for i, p in enumerate(self.procs):
                if p.poll() is not None:
                    log = (self.tmp / f"node_{i}.log").read_text()[-3000:]
                    raise RuntimeError(f"ray start for node_{i} exited with {p.returncode}:\n{log}")
            try:
                last = self.nodes()
                if len(last) >= n:
                    bad = [x for x in last if x["ip"] != HOST]
                    assert not bad, f"nodes not on {HOST}: {bad}"
                    return last
            except subprocess.SubprocessError as e:
                last = e
            time.sleep(1)
        raise TimeoutError(f"{n} nodes not alive after {timeout}s; last: {last}")

    def stop(self, grace=5):
        """Kill every process in the namespace (all started by us), then delete it.

        SIGTERM first; gcs_server, raylet and `ray start --block` may ignore it,
        so SIGKILL after `grace` seconds.
        """
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in self.pids():
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + (grace if sig == signal.SIGTERM else 10)
            while self.pids() and time.monotonic() < deadline:
                for p in self.procs:
                    p.poll()  # reap our direct children
                time.sleep(0.2)
        for p in self.procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass
        subprocess.run([IP, "netns", "del", self.ns], capture_output=True)
        if self.temp_dir:
            shutil.rmtree(self.temp_dir, ignore_errors=True)

    # --- inspection
    def nodes(self):
        """Alive nodes: [{"node_id", "ip", "resources"}], straight from the GCS."""
        out = self.run([f"{BIN}/python", "-c", _NODES_PY, self.address], timeout=30).stdout
        return json.loads(out.strip().splitlines()[-1])

    def node_ids(self):
        return [n["node_id"] for n in self.nodes()]

    def pids(self):
        """Live pids of all processes in the namespace (the cluster and its jobs)."""
        r = subprocess.run([IP, "netns", "pids", self.ns], capture_output=True, text=True)
        pids = [int(x) for x in r.stdout.split()] if r.returncode == 0 else []
        return [p for p in pids if _alive(p)]

    def connections(self):
        """(local, peer) of every TCP connection that a cluster process holds (ss -tnp)."""
        pids = set(self.pids())
        out = self.run([SS, "-tnpH"], timeout=30).stdout
        conns = []
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 6 and pids & {int(p) for p in re.findall(r"pid=(\d+)", line)}:
                conns.append((f[3], f[4]))
        return conns


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def is_loopback(addr):
    """'127.0.0.1:80' or '[::ffff:127.0.0.1]:80' -> True."""
    host = addr.rsplit(":", 1)[0].strip("[]")
    return host.removeprefix("::ffff:") == HOST
