"""The doctor's checks of the node itself: this package and its dependencies, the
dcm2niix binary, the optional libraries and drivers, and the environment variables a
job would see."""

from __future__ import annotations

import importlib
import os
import platform
from collections.abc import Mapping
from dataclasses import fields

from .._context import RuntimeContext, context_environ, env_variable_name
from .._errors import InvalidInputError
from .._safe_text import mask_secrets
from ..net.options import CALLING_AET_ENV, default_calling_ae_title
from ..store.address import StoreAddress
from .findings import Finding, Status
from .versions import (
    DISTRIBUTION,
    STORE_DRIVERS,
    dcm2niix_info,
    distribution_version,
    requirement_problem,
    requirements,
)

__all__ = [
    "check_dcm2niix",
    "check_dependencies",
    "check_environment",
    "check_imports",
    "check_package",
]

_REINSTALL = f"pip install --upgrade '{DISTRIBUTION}'"
#: Importable modules checked by name: (module, what it is for, the extra that installs it).
_OPTIONAL_MODULES = (
    ("reportlab", "PDF reports of the example service (a plain PDF is written without it)", "pdf"),
    ("pylibjpeg", "decoding JPEG-compressed DICOM", "codecs"),
)
_DRIVER_MODULES = {"postgresql": ("psycopg", "psycopg_pool"), "mongodb": ("pymongo",)}


def check_package() -> list[Finding]:
    """This package's version and the Python running it."""
    version = distribution_version(DISTRIBUTION)
    python = platform.python_version()
    if version is None:
        return [
            Finding(
                "package",
                Status.FAIL,
                f"{DISTRIBUTION} is imported from source but not installed (Python {python})",
                f"install it: pip install '{DISTRIBUTION}' (or pip install -e . in a checkout)",
            )
        ]
    return [
        Finding(
            "package",
            Status.OK,
            f"{DISTRIBUTION} {version} on Python {python}",
            details={"version": version, "python": python},
        )
    ]


def check_dependencies() -> list[Finding]:
    """Every required distribution is installed, at a version the package accepts."""
    findings = []
    for name, specifier in requirements():
        installed = distribution_version(name)
        check = f"dependency/{name}"
        if installed is None:
            findings.append(
                Finding(
                    check,
                    Status.FAIL,
                    f"{name} is not installed (needs {specifier})",
                    f"pip install '{name}{specifier}' (or {_REINSTALL})",
                )
            )
            continue
        problem = requirement_problem(installed, specifier)
        if problem:
            findings.append(
                Finding(
                    check,
                    Status.FAIL,
                    f"{name} {problem}",
                    f"pip install '{name}{specifier}'",
                    {"version": installed, "required": specifier},
                )
            )
        else:
            findings.append(
                Finding(
                    check,
                    Status.OK,
                    f"{name} {installed}",
                    details={"version": installed, "required": specifier},
                )
            )
    return findings


def check_dcm2niix() -> list[Finding]:
    """The dcm2niix binary the converters run is there and runs."""
    info = dcm2niix_info()
    if info.error:
        return [
            Finding(
                "dcm2niix",
                Status.FAIL,
                info.error,
                "pip install dcm2niix (a dependency of this package: reinstalling it "
                f"brings it back: {_REINSTALL}), or put a dcm2niix binary on PATH",
                {"path": info.path},
            )
        ]
    return [
        Finding(
            "dcm2niix",
            Status.OK,
            f"dcm2niix {info.version} at {info.path}",
            details={"path": info.path, "version": info.version},
        )
    ]


def _import_error(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # an import may fail with anything (a missing shared library)
        return f"{type(exc).__name__}: {exc}"
    return None


def check_imports(provider: str) -> list[Finding]:
    """highdicom (SEG, SR), the store drivers and the optional libraries import. The
    driver of ``provider`` (the store in use) is required; the others are reported."""
    findings = []
    error = _import_error("highdicom")
    if error:
        findings.append(
            Finding(
                "import/highdicom",
                Status.FAIL,
                f"highdicom does not import: {error}",
                f"pip install --force-reinstall 'highdicom' (or {_REINSTALL})",
            )
        )
    else:
        findings.append(Finding("import/highdicom", Status.OK, "highdicom imports"))
    for driver_provider, modules in _DRIVER_MODULES.items():
        extra = f"pip install '{DISTRIBUTION}[{driver_provider}]'"
        errors = [f"{m}: {e}" for m in modules if (e := _import_error(m))]
        check = f"import/{driver_provider}"
        names = ", ".join(STORE_DRIVERS[driver_provider])
        if not errors:
            findings.append(Finding(check, Status.OK, f"{names} import ({driver_provider} stores)"))
        elif driver_provider == provider:
            findings.append(
                Finding(
                    check,
                    Status.FAIL,
                    f"the {provider} store's driver does not import: {'; '.join(errors)}",
                    extra,
                )
            )
        else:
            findings.append(
                Finding(
                    check,
                    Status.SKIP,
                    f"{names} not usable ({'; '.join(errors)}) - needed only for "
                    f"{driver_provider} stores ({extra})",
                )
            )
    for module, purpose, extra_name in _OPTIONAL_MODULES:
        error = _import_error(module)
        status, text = (
            (Status.OK, f"{module} imports - for {purpose}")
            if error is None
            else (
                Status.SKIP,
                f"{module} not installed - optional, for {purpose} "
                f"(pip install '{DISTRIBUTION}[{extra_name}]')",
            )
        )
        findings.append(Finding(f"import/{module}", status, text))
    return findings


def check_environment(
    address: StoreAddress, environ: Mapping[str, str] | None = None
) -> list[Finding]:
    """The ``DCM-PROCESSOR-SERVICE-*`` variables: the context a job would see for the
    store ``address`` (URL masked), the context variables of this shell (inside a
    job: its own context, validated), both spellings set to different values, and the
    calling AE title peers will see."""
    env = os.environ if environ is None else environ
    findings = []
    names = [env_variable_name(f.name) for f in fields(RuntimeContext)]
    present = {
        spelling: env[spelling]
        for name in names
        for spelling in (name, name.replace("-", "_"))
        if spelling in env
    }
    for name in names:
        underscore = name.replace("-", "_")
        if name in env and underscore in env and env[name] != env[underscore]:
            findings.append(
                Finding(
                    f"env/{name}",
                    Status.WARN,
                    f"{name} and {underscore} are both set, to different values; "
                    f"the hyphenated one ({mask_secrets(env[name])!r}) wins",
                    f"unset {underscore} (or set both to the same value)",
                )
            )
    try:
        RuntimeContext.from_env(env)
    except InvalidInputError as exc:
        findings.append(
            Finding(
                "env/context",
                Status.FAIL,
                str(exc),
                "set the variable to one of the values the message lists, or unset it",
            )
        )
    store_ctx = RuntimeContext(
        db_provider=address.provider, db_url=address.url, db_name=address.name
    )
    job_env = {k: mask_secrets(v) for k, v in context_environ(store_ctx, base={}).items()}
    job_env.update(
        {
            env_variable_name(f): "(set per job)"
            for f in (
                "session_id",
                "job_id",
                "job_event",
                "job_name",
                "job_service_name",
                "peer_id",
            )
        }
    )
    shell = (
        f"; this shell sets {len(present)} context variable(s), which dcm-service run "
        "replaces for its jobs"
        if present
        else ""
    )
    findings.append(
        Finding(
            "env/job",
            Status.OK,
            f"a job would see {env_variable_name('db_provider')}={address.provider}, "
            f"{env_variable_name('db_url')}={mask_secrets(address.url)}{shell}",
            details={
                "job_environment": job_env,
                "shell": {k: mask_secrets(v) for k, v in present.items()},
            },
        )
    )
    try:
        aet = default_calling_ae_title(env)
    except InvalidInputError as exc:
        findings.append(
            Finding(
                "env/calling-aet",
                Status.FAIL,
                str(exc),
                f"set {CALLING_AET_ENV} to 1-16 characters, no backslash",
            )
        )
    else:
        findings.append(
            Finding(
                "env/calling-aet",
                Status.OK,
                f"peers see our calling AE title {aet!r} (set {CALLING_AET_ENV} to change it)",
                details={"calling_aet": aet},
            )
        )
    return findings
