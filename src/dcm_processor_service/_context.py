"""Runtime context: the job's identity and store, read from the environment.

The platform's worker injects the context as environment variables whose names contain
hyphens (``DCM-PROCESSOR-SERVICE-SESSION-ID``). They cannot be ``export``-ed from a shell,
so the underscore spelling (``DCM_PROCESSOR_SERVICE_SESSION_ID``) is accepted too; when
both are set the hyphenated one wins.

:class:`RuntimeContext` is read once into a frozen dataclass by
:meth:`RuntimeContext.from_env`; :func:`current_context` reuses the context it read last
while the context variables of ``os.environ`` keep their values (every change is seen by
the next call). :func:`use_context` runs code under an explicit context
(the local runner and tests use it) by setting the variables for the duration of a
``with`` block, so code that reads ``os.environ`` directly sees the same values.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Final

from ._errors import InvalidInputError, MissingContextError

__all__ = [
    "ENV_PREFIX",
    "JOB_EVENTS",
    "RuntimeContext",
    "context_environ",
    "current_context",
    "env_variable_name",
    "use_context",
]

ENV_PREFIX: Final = "DCM-PROCESSOR-SERVICE-"

#: Events that trigger a job, in the order the platform runs them.
JOB_EVENTS: Final = ("stable-series", "stable-study", "stable-patient")

#: One table: context field -> hyphenated environment variable.
_ENV_TABLE: Final[dict[str, str]] = {
    "db_provider": "DCM-PROCESSOR-SERVICE-DB-PROVIDER",
    "db_url": "DCM-PROCESSOR-SERVICE-DB-URL",
    "db_name": "DCM-PROCESSOR-SERVICE-DB-NAME",
    "session_id": "DCM-PROCESSOR-SERVICE-SESSION-ID",
    "job_id": "DCM-PROCESSOR-SERVICE-JOB-ID",
    "job_event": "DCM-PROCESSOR-SERVICE-JOB-EVENT",
    "job_name": "DCM-PROCESSOR-SERVICE-JOB-NAME",
    "job_service_name": "DCM-PROCESSOR-SERVICE-JOB-SERVICE-NAME",
    "peer_id": "DCM-PROCESSOR-SERVICE-PEER-ID",
}


#: Every spelling of every context variable, in a fixed order (other
#: DCM-PROCESSOR-SERVICE-* settings, such as the calling AE title, are not part of a
#: job's context and pass through).
_SPELLINGS: Final = tuple(
    name for var in _ENV_TABLE.values() for name in (var, var.replace("-", "_"))
)
_CONTEXT_VARIABLES: Final = frozenset(_SPELLINGS)


def env_variable_name(field: str) -> str:
    """Return the hyphenated environment variable that holds context ``field``."""
    try:
        return _ENV_TABLE[field]
    except KeyError:
        raise InvalidInputError(
            f"unknown context field {field!r}; known: {', '.join(_ENV_TABLE)}"
        ) from None


def _lookup(environ: Mapping[str, str], variable: str) -> str | None:
    value = environ.get(variable)
    if value is None or value == "":
        value = environ.get(variable.replace("-", "_"))
    return value if value not in (None, "") else None


@dataclass(frozen=True)
class RuntimeContext:
    """The values the worker injects for one job. Any of them may be ``None``
    when not set; :meth:`require` raises :class:`MissingContextError` naming the
    variable."""

    db_provider: str | None = None
    db_url: str | None = None
    db_name: str | None = None
    session_id: str | None = None
    job_id: str | None = None
    job_event: str | None = None
    job_name: str | None = None
    job_service_name: str | None = None
    peer_id: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> RuntimeContext:
        """Read the context from ``environ`` (default: ``os.environ``)."""
        env = os.environ if environ is None else environ
        ctx = cls(**{f: _lookup(env, var) for f, var in _ENV_TABLE.items()})
        if ctx.job_event is not None and ctx.job_event not in JOB_EVENTS:
            raise InvalidInputError(
                f"invalid value {ctx.job_event!r} for '{_ENV_TABLE['job_event']}' - "
                f"must be one of {', '.join(JOB_EVENTS)}"
            )
        return ctx

    def require(self, field: str) -> str:
        """Return ``field``'s value or raise :class:`MissingContextError` naming its
        environment variable (:class:`InvalidInputError` when it is only blanks)."""
        value = getattr(self, field)
        if value is None:
            raise MissingContextError(env_variable_name(field))
        if not str(value).strip():
            raise InvalidInputError(
                f"invalid value {value!r} for '{env_variable_name(field)}' - must not be blank"
            )
        return str(value)

    def replace(self, **changes: str | None) -> RuntimeContext:
        """Return a copy with ``changes`` applied."""
        data = asdict(self)
        unknown = set(changes) - set(data)
        if unknown:
            raise InvalidInputError(f"unknown context field(s): {', '.join(sorted(unknown))}")
        data.update(changes)
        return RuntimeContext(**data)

    def to_environ(self) -> dict[str, str]:
        """The hyphenated environment variables for this context (set values only)."""
        return {
            _ENV_TABLE[f.name]: str(getattr(self, f.name))
            for f in fields(self)
            if getattr(self, f.name) is not None
        }


#: (the raw values of :data:`_SPELLINGS` in ``os.environ``, the context they make): the
#: context read last, reused while the environment holds the same values
_last_read: tuple[tuple[object, ...], RuntimeContext] | None = None


def _raw_values() -> tuple[object, ...]:
    """The values of every context variable as ``os.environ`` holds them now (encoded:
    no decoding per call). ``os.environ`` keeps them in a dict (``_data``) that every
    change of ``os.environ`` updates; where it does not (another implementation),
    the decoded values."""
    data = getattr(os.environ, "_data", None)
    if isinstance(data, dict):
        return tuple(map(data.get, _encoded_spellings()))
    return tuple(map(os.environ.get, _SPELLINGS))


_encoded: tuple[object, ...] = ()


def _encoded_spellings() -> tuple[object, ...]:
    """:data:`_SPELLINGS` as keys of ``os.environ._data`` (bytes on POSIX)."""
    global _encoded
    if not _encoded:
        _encoded = tuple(os.environ.encodekey(name) for name in _SPELLINGS)
    return _encoded


def current_context() -> RuntimeContext:
    """The context of the running job, as ``os.environ`` holds it now.

    Read once and reused while the context variables keep their values: each call
    compares the variables' raw values (a few dict look-ups) with those of the last
    read, and reads the context again when any differs - so a job that changes
    ``os.environ``, a :func:`use_context` block, a forked child, and every thread see
    the environment's current values, as if it were read afresh."""
    global _last_read
    raw = _raw_values()
    last = _last_read
    if last is not None and last[0] == raw:
        return last[1]
    ctx = RuntimeContext.from_env(
        {
            name: os.fsdecode(value) if isinstance(value, bytes) else str(value)
            for name, value in zip(_SPELLINGS, raw, strict=True)
            if value is not None
        }
    )
    _last_read = (raw, ctx)  # one assignment: threads see the old pair or the new one
    return ctx


def context_environ(ctx: RuntimeContext, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """A full process environment for a child process running under ``ctx``: ``base``
    (default ``os.environ``) with every context variable (both spellings) removed, then
    the hyphenated variables of ``ctx`` added."""
    env = {
        k: v
        for k, v in (os.environ if base is None else base).items()
        if k not in _CONTEXT_VARIABLES
    }
    env.update(ctx.to_environ())
    return env


@contextlib.contextmanager
def use_context(
    ctx: RuntimeContext | None = None, **values: str | None
) -> Iterator[RuntimeContext]:
    """Run the ``with`` block under ``ctx`` (plus ``values`` overrides).

    The context variables of ``os.environ`` (both spellings) are replaced for the
    duration of the block and restored afterwards. Not thread-safe: the process
    environment is global.

    Raises:
        InvalidInputError: ``values`` names a field :class:`RuntimeContext` does not have.
    """
    effective = (ctx or RuntimeContext()).replace(**values) if values else (ctx or RuntimeContext())
    saved = {k: v for k, v in os.environ.items() if k in _CONTEXT_VARIABLES}
    try:
        for key in saved:
            del os.environ[key]
        os.environ.update(effective.to_environ())
        yield effective
    finally:
        for key in [k for k in os.environ if k in _CONTEXT_VARIABLES]:
            del os.environ[key]
        os.environ.update(saved)
