"""Reaching a Dask cluster from the runner: connect, start a local one, ship the service.

* :func:`connect_cluster` - a :class:`distributed.Client` of the scheduler at
  ``tcp://HOST:PORT`` (``dcm-service run --cluster``), with a clear error when it
  cannot be reached;
* :func:`start_local_cluster` - an in-process cluster of ``N`` worker processes on
  this machine (``dcm-service run --workers N``);
* :func:`ship_service` - the service folder zipped and registered with Dask's upload
  mechanism, so every worker (also one that joins later) gets the code;
* :func:`worker_resources` - what each worker advertises (placement checks).

``distributed`` is an optional dependency (``pip install dcm-processor-service[cluster]``);
:func:`require_distributed` says so when it is missing.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ..._errors import ServiceError
from .dask_worker import ShippedService

__all__ = [
    "ALLOWED_FAILURES",
    "MAX_SERVICE_BYTES",
    "connect_cluster",
    "require_distributed",
    "service_archive",
    "ship_service",
    "start_local_cluster",
    "worker_resources",
]

logger = logging.getLogger(__name__)

#: How often a job may lose its worker before it fails (the local cluster's
#: ``distributed.scheduler.allowed-failures``; an external scheduler has its own).
ALLOWED_FAILURES = 3
#: A service folder larger than this is refused (model weights belong elsewhere).
MAX_SERVICE_BYTES = 200 * 1024 * 1024
#: Folders and files never shipped with a service.
_SKIP_DIRS = {"__pycache__", ".git", ".hg", ".svn", ".venv", "venv", ".mypy_cache", ".ruff_cache"}


def require_distributed() -> Any:
    """The ``distributed`` module, or a :class:`ServiceError` saying how to install it."""
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - the test extra installs it
        raise ServiceError(
            "running on a Dask cluster needs the 'distributed' package - install "
            "dcm-processor-service[cluster] (pip install 'dcm-processor-service[cluster]')"
        ) from exc
    return distributed


def connect_cluster(address: str, *, timeout: float = 15.0) -> Any:
    """A client of the Dask scheduler at ``address`` (``tcp://HOST:PORT``)."""
    distributed = require_distributed()
    if "://" not in address:
        address = f"tcp://{address}"
    try:
        return distributed.Client(address, timeout=timeout, set_as_default=False)
    except (OSError, TimeoutError) as exc:
        raise ServiceError(
            f"cannot reach the Dask scheduler at {address!r} within {timeout:g}s ({exc}) - "
            "start it with 'dask scheduler --host HOST' and check the address and firewall"
        ) from exc


def start_local_cluster(workers: int, *, threads: int = 1) -> Any:
    """A client of a new in-process cluster: ``workers`` worker processes on this
    machine, ``threads`` jobs at once each, dashboard on a free loopback port."""
    distributed = require_distributed()
    import dask

    if workers < 1:
        raise ServiceError(f"--workers {workers}: give at least 1 worker")
    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = distributed.LocalCluster(
            n_workers=workers,
            threads_per_worker=threads,
            processes=True,
            host="127.0.0.1",
            dashboard_address="127.0.0.1:0",
        )
    client = distributed.Client(cluster, set_as_default=False)
    return client


def _files(root: Path) -> list[Path]:
    out = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS)
        for name in sorted(names):
            if not name.endswith((".pyc", ".pyo")):
                out.append(Path(folder) / name)
    return out


def service_archive(root: Path, into: Path) -> tuple[Path, str]:
    """Zip the service folder ``root`` into the folder ``into``; the zip's path and
    its content digest (the same files give the same digest)."""
    files = _files(root)
    size = sum(p.stat().st_size for p in files)
    if size > MAX_SERVICE_BYTES:
        raise ServiceError(
            f"the service folder {str(root)!r} holds {size / 1e6:.0f} MB - more than the "
            f"{MAX_SERVICE_BYTES / 1e6:.0f} MB shipped to the workers; keep model weights "
            "out of it (install them on the workers, or load them from the store)"
        )
    digest = hashlib.sha256()
    for path in files:
        digest.update(str(path.relative_to(root)).encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    text = digest.hexdigest()[:16]
    archive = into / f"dcm-service-{text}.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in files:
            zipped.write(path, path.relative_to(root).as_posix())
    return archive, text


def ship_service(client: Any, root: Path) -> ShippedService:
    """Zip ``root`` and register it with Dask's upload mechanism (a worker plugin
    named after the content digest: every worker, also one joining later, gets it)."""
    from distributed.diagnostics.plugin import UploadFile

    root = root.resolve()
    with tempfile.TemporaryDirectory(prefix="dcm-service-ship-") as tmp:
        archive, digest = service_archive(root, Path(tmp))
        client.register_plugin(UploadFile(str(archive), load=False), name=f"dcm-service-{digest}")
    logger.info("service folder %s shipped to the workers (digest %s)", root, digest)
    return ShippedService(archive=archive.name, digest=digest, root=str(root))


def worker_resources(client: Any) -> dict[str, dict[str, float]]:
    """``{worker address: {resource: amount}}`` of the cluster's workers now."""
    info = client.scheduler_info(n_workers=-1)
    return {
        address: dict(worker.get("resources") or {})
        for address, worker in (info.get("workers") or {}).items()
    }
