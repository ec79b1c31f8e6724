"""Validity dates of X.509 certificates, read from their DER encoding.

The standard library verifies certificates but only reports the dates of one that
verified (:meth:`ssl.SSLSocket.getpeercert`). The doctor also needs them for a
certificate that did *not* verify (expired) and for the PEM files a peer record names,
without a third-party dependency: the few DER fields up to ``validity`` are read here
(RFC 5280 §4.1: ``Certificate ::= SEQUENCE { tbsCertificate SEQUENCE { [0] version
OPTIONAL, serialNumber, signature, issuer, validity SEQUENCE { notBefore, notAfter },
...}, ...}``).
"""

from __future__ import annotations

import os
import re
import ssl
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

__all__ = ["CertificateDates", "certificate_dates", "pem_certificates"]

_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.DOTALL)


@dataclass(frozen=True)
class CertificateDates:
    """When a certificate starts and stops being valid (UTC)."""

    not_before: datetime
    not_after: datetime

    def days_left(self, now: datetime | None = None) -> float:
        """Days until ``not_after`` (negative once expired)."""
        current = now or datetime.now(timezone.utc)
        return (self.not_after - current).total_seconds() / 86400.0


def _read_tlv(der: bytes, offset: int) -> tuple[int, int, int]:
    """The tag, the content's start and its end, of the DER element at ``offset``."""
    if offset + 2 > len(der):
        raise ValueError("truncated DER element")
    tag, first = der[offset], der[offset + 1]
    start = offset + 2
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or start + count > len(der):
            raise ValueError("unsupported DER length")
        length = int.from_bytes(der[start : start + count], "big")
        start += count
    if start + length > len(der):
        raise ValueError("truncated DER element")
    return tag, start, start + length


def _time(der: bytes, offset: int) -> tuple[datetime, int]:
    tag, start, end = _read_tlv(der, offset)
    text = der[start:end].decode("ascii")
    if tag == 0x17:  # UTCTime YYMMDDHHMMSSZ (RFC 5280: years 50-99 are 19xx)
        value = datetime.strptime(text, "%y%m%d%H%M%SZ")
        if value.year >= 2050:
            value = value.replace(year=value.year - 100)
    elif tag == 0x18:  # GeneralizedTime YYYYMMDDHHMMSSZ
        value = datetime.strptime(text, "%Y%m%d%H%M%SZ")
    else:
        raise ValueError(f"unexpected time tag 0x{tag:02x}")
    return value.replace(tzinfo=timezone.utc), end


def certificate_dates(der: bytes) -> CertificateDates:
    """The validity dates of a DER-encoded certificate. Raises :class:`ValueError`
    when ``der`` is not a certificate."""
    tag, start, _ = _read_tlv(der, 0)
    if tag != 0x30:
        raise ValueError("not a DER certificate (no outer SEQUENCE)")
    tag, offset, _ = _read_tlv(der, start)  # tbsCertificate
    if tag != 0x30:
        raise ValueError("not a DER certificate (no tbsCertificate)")
    if der[offset] == 0xA0:  # [0] EXPLICIT version
        offset = _read_tlv(der, offset)[2]
    for _ in range(3):  # serialNumber, signature, issuer
        offset = _read_tlv(der, offset)[2]
    tag, offset, _ = _read_tlv(der, offset)  # validity
    if tag != 0x30:
        raise ValueError("not a DER certificate (no validity)")
    not_before, offset = _time(der, offset)
    not_after, _ = _time(der, offset)
    return CertificateDates(not_before, not_after)


def pem_certificates(path: str | os.PathLike[str]) -> list[bytes]:
    """The certificates of a PEM file (a bundle may hold several), DER-encoded.
    Raises :class:`OSError` when the file cannot be read."""
    text = Path(path).read_text(encoding="ascii", errors="replace")
    return [ssl.PEM_cert_to_DER_cert(block) for block in _PEM_BLOCK.findall(text)]
