#!/usr/bin/env bash
# Install what dcm-processor-service needs on a fresh Debian/Ubuntu machine:
#   system packages (with --system): dcmtk, Orthanc, PostgreSQL, openssl, libmagic, iproute2 — the real
#   peers and database the tests run against, and what the platform's packages (which the
#   tests build a virtualenv for) need; then a virtual environment in .venv with the package.
# Usage: bash scripts/bootstrap.sh [--system] [EXTRAS]     (EXTRAS default: all)
set -euo pipefail
cd "$(dirname "$0")/.."

want_system=0
if [ "${1:-}" = "--system" ]; then want_system=1; shift; fi
extras="${1:-all}"

if [ "$want_system" = 1 ]; then
  missing=()
  [ -x /usr/bin/storescp ] || missing+=(dcmtk)
  [ -x /usr/sbin/Orthanc ] || missing+=(orthanc)
  # the DICOMweb plugin: STOW-RS / QIDO-RS / WADO-RS peer of tests/test_dicomweb*.py
  [ -f /usr/share/orthanc/plugins/libOrthancDicomWeb.so ] || missing+=(orthanc-dicomweb)
  ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
  command -v openssl >/dev/null || missing+=(openssl)
  { command -v runuser && command -v setpriv; } >/dev/null || missing+=(util-linux)
  # iproute2: the cluster tests simulate hosts with network namespaces (ip netns)
  command -v ip >/dev/null || missing+=(iproute2)
  # libmagic: the platform's own packages (tests run services through them) need it
  ldconfig -p 2>/dev/null | grep -q 'libmagic\.so\.1' || missing+=(libmagic1)
  if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
    echo "installing system packages: ${missing[*]}" >&2
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e ".[${extras}]"
