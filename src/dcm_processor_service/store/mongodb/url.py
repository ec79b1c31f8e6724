"""MongoDB store URLs: split without DNS look-ups, redacted in every message.

Forms: ``mongodb://[user:password@]host[:port][,host2...]/[db][?options]`` and
``mongodb+srv://...`` (resolved by pymongo when it connects). Query options go to
pymongo, except this package's own (removed before connecting):

``layout=platform`` (default)
    the dcm-processor platform's layout, as a guest in the platform's database;
``layout=exclusive``
    the same documents, plus unique indexes that make concurrent writers of one key
    converge — only for a database no platform component writes to.
"""

from __future__ import annotations

from typing import Final
from urllib.parse import parse_qsl, quote, unquote, urlencode

from ..._errors import InvalidInputError

__all__ = ["EXCLUSIVE", "LAYOUTS", "PLATFORM", "MongoURL", "parse_mongo_url"]

#: The platform's layout, safe to share with the platform's own writers (the default).
PLATFORM: Final = "platform"
#: The platform's documents plus unique indexes, for a database only this package uses.
EXCLUSIVE: Final = "exclusive"
LAYOUTS: Final = (PLATFORM, EXCLUSIVE)

_SCHEMES: Final = ("mongodb", "mongodb+srv")
#: URL query options of this package (lower case); never passed to pymongo.
_OWN_OPTIONS: Final = ("layout",)


class MongoURL:
    """A MongoDB URL split into the parts this provider needs."""

    def __init__(self, url: str) -> None:
        if not isinstance(url, str) or not url.strip():
            raise InvalidInputError(
                "invalid mongodb store 'url' value '' - give mongodb://host:port/db"
            )
        self.url = url.strip()
        scheme, sep, rest = self.url.partition("://")
        self.scheme = scheme.lower()
        if not sep or self.scheme not in _SCHEMES:
            shown = f"scheme {scheme + ':'!r}" if sep else "value (no scheme)"
            raise InvalidInputError(  # the URL itself is not shown: it may hold a password
                f"invalid mongodb store 'url' {shown} - must start with mongodb:// or mongodb+srv://"
            )
        netloc, _, tail = rest.partition("/")
        if "?" in netloc:
            netloc, _, query = netloc.partition("?")
            path = ""
        else:
            path, _, query = tail.partition("?")
        self._netloc = netloc
        self._path = path
        userinfo, at, hostpart = netloc.rpartition("@")
        self.username: str | None = None
        self.password: str | None = None
        if at:
            user, colon, password = userinfo.partition(":")
            self.username = unquote(user) or None
            self.password = unquote(password) if colon else None
        self._raw_password = userinfo.partition(":")[2] if at else ""
        self.hosts = [h for h in hostpart.split(",") if h]
        if not self.hosts:
            raise InvalidInputError(
                f"invalid mongodb store 'url' value {self.redact(self.url)!r} - no host "
                "given (mongodb://host:port/db)"
            )
        self.database = unquote(path) or None
        pairs = parse_qsl(query, keep_blank_values=True)
        self._driver_pairs = [(k, v) for k, v in pairs if k.lower() not in _OWN_OPTIONS]
        self.options = {k.lower(): v for k, v in pairs}
        self.layout = (self.options.get("layout") or PLATFORM).strip().lower()
        if self.layout not in LAYOUTS:
            raise InvalidInputError(
                f"invalid mongodb store URL option 'layout' value {self.options['layout']!r} "
                f"- must be one of {', '.join(LAYOUTS)} (default {PLATFORM})"
            )

    def driver_url(self) -> str:
        """The URL for pymongo: without this package's own options (unchanged when it
        has none)."""
        if not any(k in self.options for k in _OWN_OPTIONS):
            return self.url
        query = urlencode(self._driver_pairs)
        path = f"/{self._path}" if self._path or query else ""
        return f"{self.scheme}://{self._netloc}{path}" + (f"?{query}" if query else "")

    def host_list(self) -> str:
        """``host:port`` of every host (default port 27017), comma-separated."""
        if self.scheme != "mongodb":
            return ",".join(self.hosts)
        out = []
        for host in self.hosts:
            if host.startswith("["):  # IPv6 literal
                has_port = "]:" in host
            else:
                has_port = ":" in host or host.lower().endswith(".sock")
            out.append(host if has_port else f"{host}:27017")
        return ",".join(out)

    def redact(self, text: str) -> str:
        """``text`` with the URL's password (raw and decoded) replaced by ``***``."""
        for secret in {getattr(self, "_raw_password", ""), getattr(self, "password", None) or ""}:
            if secret:
                text = text.replace(secret, "***")
                text = text.replace(quote(secret, safe=""), "***")
        return text


def parse_mongo_url(url: str) -> MongoURL:
    """Split a ``mongodb://`` or ``mongodb+srv://`` URL (no DNS look-up)."""
    return MongoURL(url)
