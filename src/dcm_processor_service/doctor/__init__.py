"""``dcm-service doctor``: check a node and say what is wrong and how to fix it.

:func:`run_doctor` runs every check and returns a :class:`DoctorReport` of
:class:`Finding` values (``ok``, ``warn``, ``fail``, ``skip``; every ``warn`` and
``fail`` carries a fix). The checks, in order:

- :mod:`.node`: this package and its dependencies (versions against the package's
  requirements), the dcm2niix binary, highdicom and the store drivers importable, and
  the environment variables a job would see;
- :mod:`.store_checks`: the store reachable, its schema version (read, never changed),
  writable (a probe session, removed again), free space, and the clock skew against
  the database server;
- :mod:`.peer_checks`: every peer of the store answers C-ECHO (a DICOMweb peer: a
  QIDO-RS probe), with latency, and a TLS peer's certificates are valid and not about
  to expire.

:mod:`.versions` also backs ``dcm-service --version``.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..store.address import StoreAddress
from .findings import DoctorReport, Finding, Status
from .node import (
    check_dcm2niix,
    check_dependencies,
    check_environment,
    check_imports,
    check_package,
)
from .peer_checks import check_peer
from .store_checks import StoreProbe

__all__ = ["DoctorReport", "Finding", "Status", "run_doctor"]


def run_doctor(
    address: StoreAddress,
    *,
    timeout: float = 5.0,
    environ: Mapping[str, str] | None = None,
) -> DoctorReport:
    """Check this node against the store at ``address`` and its peers.

    Args:
        address: the store a job would use (its peers are checked too).
        timeout: seconds to wait for the database server and for each peer.
        environ: the environment to read (default ``os.environ``).

    Returns:
        The findings; :attr:`DoctorReport.ok` is false when any check failed. Problems
        are findings, not exceptions: a check that cannot run says why.
    """
    report = DoctorReport()
    probe = StoreProbe(address, timeout=max(timeout, 1.0))
    report.findings += check_package()
    report.findings += check_dependencies()
    report.findings += check_dcm2niix()
    report.findings += check_imports(probe.kind)
    report.findings += check_environment(address, environ)
    try:
        report.findings += probe.run()
        if probe.store is None:
            report.findings.append(
                Finding(
                    "peers",
                    Status.SKIP,
                    "peers not checked: there is no store to read them from (see the store findings)",
                )
            )
            return report
        peers = probe.store.list_peers()
    finally:
        probe.close()
    if not peers:
        report.findings.append(
            Finding(
                "peers",
                Status.SKIP,
                "the store has no peers (add one: dcm-service peers add NAME AET HOST PORT)",
            )
        )
    for peer in peers:
        report.findings += check_peer(peer, timeout)
    return report
