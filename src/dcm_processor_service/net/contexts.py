"""Presentation contexts: propose them from the data, pick one per instance.

Proposal (per SOP class present in the data, in first-seen order):

* one context per transfer syntax the instances are stored in - so they can be sent
  as stored, byte for byte;
* one *fallback* context offering the uncompressed little-endian syntaxes not already
  proposed (Explicit, then Implicit VR Little Endian) plus any ``extra_syntaxes`` - so
  a peer that refuses the stored (e.g. compressed) syntax can still receive a
  converted copy.

A-ASSOCIATE-RQ allows 128 contexts (odd ids 1..255). When more are needed the SOP
classes are split into groups, each sent over its own association; all contexts of one
SOP class stay in the same group.

Routing an instance (:func:`choose_route`): the stored syntax if accepted; else a
conversion to an accepted syntax (decompress / re-encode, or lossless compression when
the peer accepts only that and pydicom has an encoder); else a failure naming the
SOP class, the stored syntax and what the peer said.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal, NamedTuple

from .._uids import (
    EXPLICIT_VR_BIG_ENDIAN,
    JPEG2000_LOSSLESS,
    JPEG_LS_LOSSLESS,
    RLE_LOSSLESS,
    UNCOMPRESSED_LE,
    is_compressed,
)
from .pdu import NegotiatedContext, ProposedContext
from .results import STATUS_CANNOT_CONVERT, STATUS_SOP_CLASS_NOT_SUPPORTED

__all__ = [
    "MAX_CONTEXTS",
    "ContextPlan",
    "Route",
    "choose_route",
    "plan_contexts",
    "uid_name",
]

#: Presentation contexts one A-ASSOCIATE-RQ may carry (PS3.8 9.3.2.2: ids 1, 3 ... 255).
MAX_CONTEXTS: Final = 128

_UNCOMPRESSED: Final = (*UNCOMPRESSED_LE, EXPLICIT_VR_BIG_ENDIAN)
# Lossless encodings pydicom can write, tried when a peer accepts only compressed data.
_LOSSLESS_TARGETS: Final = (RLE_LOSSLESS, JPEG_LS_LOSSLESS, JPEG2000_LOSSLESS)

Conversion = Literal["none", "reencode", "decompress", "compress"]


def uid_name(uid: str) -> str:
    """``'CT Image Storage (1.2.840.10008.5.1.4.1.1.2)'`` - a UID with its name if known
    (from pydicom's dictionary: only messages need it)."""
    from pydicom.uid import UID

    name = UID(uid).name
    return f"{name} ({uid})" if name and name != uid else uid


@dataclass
class ContextPlan:
    """Proposed contexts, split into association groups, and each SOP class's group."""

    groups: list[list[ProposedContext]] = field(default_factory=list)
    group_of: dict[str, int] = field(default_factory=dict)


def plan_contexts(
    pairs: Iterable[tuple[str, str]],
    *,
    extra_sop_classes: Sequence[str] = (),
    extra_syntaxes: Sequence[str] = (),
    limit: int = MAX_CONTEXTS,
) -> ContextPlan:
    """Plan the presentation contexts for the (SOP class, transfer syntax) ``pairs``
    found in the data to send; see the module docstring."""
    stored: dict[str, list[str]] = {}
    for sop_class, ts in pairs:
        syntaxes = stored.setdefault(str(sop_class), [])
        if str(ts) not in syntaxes:
            syntaxes.append(str(ts))

    def fallback(already: Sequence[str]) -> tuple[str, ...]:
        seen = set(already)
        out: list[str] = []
        for ts in (*UNCOMPRESSED_LE, *extra_syntaxes):
            if str(ts) not in seen:
                seen.add(str(ts))
                out.append(str(ts))
        return tuple(out)

    wanted: list[tuple[str, list[tuple[str, ...]]]] = []
    for sop_class, syntaxes in stored.items():
        sets: list[tuple[str, ...]] = [(ts,) for ts in syntaxes]
        extra = fallback(syntaxes)
        if extra:
            sets.append(extra)
        wanted.append((sop_class, sets[:limit]))

    plan = ContextPlan()
    current: list[tuple[str, tuple[str, ...]]] = []
    for sop_class, sets in wanted:
        if current and len(current) + len(sets) > limit:
            plan.groups.append(_numbered(current))
            current = []
        plan.group_of[sop_class] = len(plan.groups)
        current.extend((sop_class, ts) for ts in sets)
    # Additional SOP classes (compat 'additional_sops') ride along where there is room.
    for sop_class in extra_sop_classes:
        if str(sop_class) in stored or len(current) >= limit:
            continue
        current.append((str(sop_class), fallback(())))
    if current:
        plan.groups.append(_numbered(current))
    return plan


def _numbered(items: Sequence[tuple[str, tuple[str, ...]]]) -> list[ProposedContext]:
    return [ProposedContext(2 * i + 1, sop, ts) for i, (sop, ts) in enumerate(items)]


class Route(NamedTuple):
    """How to send one instance: on ``context_id`` in ``transfer_syntax`` after
    ``conversion``; or not at all (``context_id is None``) with ``status``/``reason``."""

    context_id: int | None
    transfer_syntax: str | None
    conversion: Conversion | None
    status: int = 0
    reason: str | None = None

    @classmethod
    def refused(cls, status: int, reason: str) -> Route:
        """Not to be sent: ``status`` (a local code) and ``reason`` say why."""
        return cls(None, None, None, status, reason)

    @property
    def sendable(self) -> bool:
        """True when the instance can be sent."""
        return self.context_id is not None


def _encoder_available(ts: str) -> bool:
    try:
        from pydicom.pixels import get_encoder

        return bool(get_encoder(ts).is_available)
    except Exception:  # no encoder registered for this syntax
        return False


def choose_route(
    sop_class: str,
    stored_ts: str,
    negotiated: Iterable[NegotiatedContext],
    *,
    has_pixel_data: bool = True,
) -> Route:
    """Pick the context for an instance of ``sop_class`` stored in ``stored_ts``."""
    mine = [c for c in negotiated if c.abstract_syntax == sop_class]
    accepted = [c for c in mine if c.accepted]
    if not accepted:
        why = "; ".join(sorted({c.result_text for c in mine})) or "not proposed"
        return Route.refused(
            STATUS_SOP_CLASS_NOT_SUPPORTED,
            f"not sent: the peer accepted no presentation context for SOP class "
            f"{uid_name(sop_class)} ({why})",
        )
    by_ts = {c.transfer_syntax: c for c in reversed(accepted)}  # first accepted wins
    if stored_ts in by_ts:
        return Route(by_ts[stored_ts].context_id, stored_ts, "none")
    compressed = is_compressed(stored_ts)
    if compressed is None:  # a syntax our table does not know: pydicom's answer
        from pydicom.uid import UID

        compressed = UID(stored_ts).is_compressed
    for target in _UNCOMPRESSED:
        if target in by_ts:
            conversion: Conversion = "decompress" if compressed else "reencode"
            return Route(by_ts[target].context_id, target, conversion)
    if has_pixel_data:
        for target in _LOSSLESS_TARGETS:
            if target in by_ts and _encoder_available(target):
                return Route(by_ts[target].context_id, target, "compress")
    offered = ", ".join(uid_name(str(ts)) for ts in by_ts)
    return Route.refused(
        STATUS_CANNOT_CONVERT,
        f"not sent: the peer accepts {uid_name(sop_class)} only as {offered}; the instance "
        f"is stored as {uid_name(stored_ts)} and cannot be converted to any of them",
    )
