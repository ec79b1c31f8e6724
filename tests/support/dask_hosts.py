"""Simulated hosts for cluster tests: network namespaces, a Dask scheduler and workers.

:class:`SimulatedHosts` creates, as root, a bridge in this (the "head") namespace with
the first address of a private /24 of our own, and one network namespace per host,
joined to the bridge by a veth pair, with the next addresses. Traffic goes only to
these addresses; everything is deleted again on exit.

:class:`DaskCluster` runs a real ``dask scheduler`` on the bridge address (here, in
the head namespace, beside the runner and PostgreSQL) and one ``dask worker`` per host,
each inside its own namespace, with its own temporary directory as HOME, TMPDIR,
working and local directory - nothing is shared with the head but the network. The
workers run without a nanny, so a worker's PID is the worker itself (a test kills it
with SIGKILL). :func:`postgres_on` starts PostgreSQL listening on the bridge address,
reachable from every host.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from support.postgres import PostgresServer

__all__ = ["DaskCluster", "SimulatedHosts", "WorkerHost", "postgres_on", "require_netns"]


def require_netns() -> None:
    """Skip unless this process may create network namespaces (root with ``ip``)."""
    import pytest

    if os.geteuid() != 0 or shutil.which("ip") is None:
        pytest.skip("cluster tests need root and iproute2 (ip netns) to simulate hosts")


def _ip(*args: str, netns: str | None = None) -> None:
    argv = ["ip", *args] if netns is None else ["ip", "netns", "exec", netns, "ip", *args]
    subprocess.run(argv, check=True, capture_output=True, text=True, timeout=30)


def _used_subnets() -> set[str]:
    text = subprocess.run(
        ["ip", "-4", "-o", "addr"], capture_output=True, text=True, check=True
    ).stdout
    return {part.rsplit(".", 1)[0] for part in text.split() if part.startswith("10.")}


class SimulatedHosts:
    """``count`` network namespaces joined to a bridge in this namespace (see the
    module doc). ``gateway`` is the bridge's address; ``addresses[i]`` host ``i``'s."""

    def __init__(self, count: int) -> None:
        self.tag = uuid.uuid4().hex[:6]
        used = _used_subnets()
        free = [n for n in range(1, 250) if f"10.213.{n}" not in used]
        self.prefix = f"10.213.{random.choice(free)}"
        self.gateway = f"{self.prefix}.1"
        self.bridge = f"dkb{self.tag}"
        self.names = [f"dkh{self.tag}{i}" for i in range(count)]
        self.addresses = [f"{self.prefix}.{i + 2}" for i in range(count)]
        self._links: list[str] = []
        self._namespaces: list[str] = []

    def __enter__(self) -> SimulatedHosts:
        try:
            _ip("link", "add", self.bridge, "type", "bridge")
            self._links.append(self.bridge)
            _ip("addr", "add", f"{self.gateway}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
            for i, (name, address) in enumerate(zip(self.names, self.addresses, strict=True)):
                outer, inner = f"dkv{self.tag}{i}", f"dkp{self.tag}{i}"
                _ip("netns", "add", name)
                self._namespaces.append(name)
                _ip("link", "add", outer, "type", "veth", "peer", "name", inner)
                self._links.append(outer)
                _ip("link", "set", inner, "netns", name)
                _ip("link", "set", outer, "master", self.bridge)
                _ip("link", "set", outer, "up")
                _ip("addr", "add", f"{address}/24", "dev", inner, netns=name)
                _ip("link", "set", inner, "up", netns=name)
                _ip("link", "set", "lo", "up", netns=name)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        for link in reversed(self._links):
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("link", "del", link)
        for name in self._namespaces:
            with contextlib.suppress(subprocess.CalledProcessError):
                _ip("netns", "del", name)
        self._links.clear()
        self._namespaces.clear()


def postgres_on(hosts: SimulatedHosts) -> PostgresServer:
    """A started PostgreSQL server listening on the hosts' gateway address, accepting
    password logins from the hosts' /24."""
    server = PostgresServer()
    server.host = hosts.gateway
    server.start()
    with (server.data / "pg_hba.conf").open("a") as hba:
        hba.write(f"host all all {hosts.prefix}.0/24 scram-sha-256\n")
    server.sql("SELECT pg_reload_conf()")
    return server


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_port(host: str, port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"process exited ({process.returncode}): {log.read_text()[-3000:]}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on {host}:{port}: {log.read_text()[-3000:]}")


def _end(process: subprocess.Popen[bytes] | None, grace: float = 5.0) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:  # a worker whose scheduler is gone may linger
        process.kill()
        process.wait(10)


@dataclass
class WorkerHost:
    """One ``dask worker`` in its namespace."""

    namespace: str
    address: str
    home: Path
    resources: Mapping[str, float] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    port: int = 0

    @property
    def dask_address(self) -> str:
        """The worker's address as the scheduler knows it."""
        return f"tcp://{self.address}:{self.port}"


class DaskCluster:
    """A ``dask scheduler`` on the hosts' gateway and a ``dask worker`` per host,
    ``resources[i]`` advertised by worker ``i``."""

    def __init__(self, hosts: SimulatedHosts, resources: list[Mapping[str, float]]) -> None:
        self.hosts = hosts
        self.root = Path(tempfile.mkdtemp(prefix="dcm-dask-"))
        self.port = _free_port(hosts.gateway)
        self.address = f"tcp://{hosts.gateway}:{self.port}"
        self.scheduler: subprocess.Popen[bytes] | None = None
        self.workers = [
            WorkerHost(ns, addr, self.root / f"host{i}", res)
            for i, (ns, addr, res) in enumerate(
                zip(hosts.names, hosts.addresses, resources, strict=True)
            )
        ]

    def _env(self, home: Path) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.upper().startswith(("DCM", "DASK"))}
        env.update(HOME=str(home), TMPDIR=str(home / "tmp"))
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        env["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] = "3"
        return env

    def __enter__(self) -> DaskCluster:
        try:
            home = self.root / "scheduler"
            (home / "tmp").mkdir(parents=True)
            log = home / "scheduler.log"
            with log.open("ab") as out:
                self.scheduler = subprocess.Popen(
                    [
                        sys.executable, "-m", "dask", "scheduler",
                        "--host", self.hosts.gateway, "--port", str(self.port),
                        "--dashboard-address", f"{self.hosts.gateway}:{_free_port(self.hosts.gateway)}",
                    ],
                    stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                    env=self._env(home), cwd=home,
                )  # fmt: skip
            _wait_port(self.hosts.gateway, self.port, self.scheduler, log)
            for index in range(len(self.workers)):
                self.start_worker(index, wait=False)
            self.wait_for_workers(len(self.workers))
        except BaseException:
            self.__exit__()
            raise
        return self

    def start_worker(self, index: int, *, wait: bool = True) -> WorkerHost:
        """Start worker ``index`` (again) in its namespace, with a fresh home."""
        worker = self.workers[index]
        _end(worker.process)
        shutil.rmtree(worker.home, ignore_errors=True)
        (worker.home / "tmp").mkdir(parents=True)
        worker.port = 20000 + index * 100 + random.randrange(100)
        resources = " ".join(f"{k}={v:g}" for k, v in worker.resources.items())
        argv = [
            "ip", "netns", "exec", worker.namespace,
            sys.executable, "-m", "dask", "worker", self.address,
            "--no-nanny", "--nthreads", "1", "--host", worker.address,
            "--worker-port", str(worker.port), "--no-dashboard",
            "--local-directory", str(worker.home / "dask"), "--name", f"host{index}",
        ]  # fmt: skip
        if resources:
            argv += ["--resources", resources]
        with (worker.home / "worker.log").open("ab") as out:
            worker.process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self._env(worker.home),
                cwd=worker.home,
            )
        if wait:
            self.wait_for_workers(len([w for w in self.workers if w.process]))
        return worker

    def kill_worker(self, index: int) -> None:
        """SIGKILL worker ``index`` (by its PID)."""
        process = self.workers[index].process
        assert process is not None
        os.kill(process.pid, signal.SIGKILL)
        process.wait(10)

    def client(self) -> Any:
        """A client of the scheduler (close it when done)."""
        from distributed import Client

        return Client(self.address, timeout=30, set_as_default=False)

    def wait_for_workers(self, count: int, timeout: float = 90.0) -> None:
        """Wait until ``count`` workers are registered with the scheduler."""
        with contextlib.closing(self.client()) as client:
            client.wait_for_workers(count, timeout=timeout)

    def wait_idle(self, timeout: float = 60.0) -> None:
        """Wait until no worker runs a task, nor a job process: a task whose client
        left is forgotten by the scheduler, but runs to its end on its worker."""
        import psutil

        def busy() -> bool:
            for worker in self.workers:
                if worker.process is not None and worker.process.poll() is None:
                    with contextlib.suppress(psutil.NoSuchProcess):
                        if psutil.Process(worker.process.pid).children():
                            return True
            return False

        deadline = time.monotonic() + timeout
        with contextlib.closing(self.client()) as client:
            while time.monotonic() < deadline:
                if not any(client.processing().values()) and not busy():
                    return
                time.sleep(0.2)
        raise TimeoutError("the cluster's workers are still busy")

    def __exit__(self, *exc: object) -> None:
        for worker in self.workers:
            _end(worker.process)
        _end(self.scheduler)
        shutil.rmtree(self.root, ignore_errors=True)


@contextlib.contextmanager
def cluster_with_store(
    resources: list[Mapping[str, float]],
) -> Iterator[tuple[DaskCluster, PostgresServer]]:
    """Hosts (one per ``resources`` item), PostgreSQL and a Dask cluster on them."""
    with SimulatedHosts(len(resources)) as hosts:
        server = postgres_on(hosts)
        try:
            with DaskCluster(hosts, resources) as cluster:
                yield cluster, server
        finally:
            server.stop()
