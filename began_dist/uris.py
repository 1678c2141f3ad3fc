"""Storage locations: a local path, or a URI of one of the schemes docs/design.md lists.

This module imports nothing from began_dist, so any layer (config, data, run
directories) can check a location before it touches `pyarrow.fs`.
"""

from __future__ import annotations

import re

SCHEMES = ("file", "s3", "gs")
_URI = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def uri_scheme(location: str, name: str, error: type[Exception] = ValueError) -> str:
    """'' for a local path, else the URI's scheme (lower case) when it is one of SCHEMES.

    Any other scheme, or `://` that does not start a URI, raises `error` naming `name` (the
    config key or argument). Call this before `pyarrow.fs.FileSystem.from_uri`: pyarrow
    resolves more schemes than we support, and for some (hdfs://, viewfs://) it loads a
    native library picked by the environment.
    """
    if "://" not in location:
        return ""
    match = _URI.match(location)
    scheme = match.group(1).lower() if match else ""
    if scheme not in SCHEMES:
        allowed = ", ".join(f"{s}://" for s in SCHEMES)
        what = f"scheme {scheme}://" if scheme else "'://' inside a path"
        raise error(f"{name}={location}: {what} is not supported; use a local path or {allowed}")
    return scheme


def join(location: str, *parts: str) -> str:
    """`location`/parts, for a local path or a URI (parts go before a URI's `?query`)."""
    base, mark, query = location.partition("?") if "://" in location else (location, "", "")
    return "/".join([base.rstrip("/"), *parts]) + mark + query
