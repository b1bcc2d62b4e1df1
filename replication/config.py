"""Which servers a replica follows, and how it proves it may.

A TOML file (`--config FILE`) has one table per source:

    [sources.east]
    url = "https://backup-east.example:8443"
    fingerprint = "3f5a..."   # optional: the SHA-256 'ironfs init' printed; else pinned on first contact
    token = "ic1_..."         # from 'ironfs replica token' on that server
    # or: user = "admin" and password = "..."

For a single source, IRONFS_SOURCE_USER and IRONFS_SOURCE_PASSWORD may stand
in for the file. The table name (or, without a file, the URL's host and port)
names the source's folder on the replica, which keeps sources apart."""
import os
import re
import tomllib
from dataclasses import dataclass
from urllib.parse import urlparse

from client.remote import split_url
from ironfs.errors import UsageError

SOURCE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True)
class Source:
    name: str
    url: str
    fingerprint: str | None = None
    token: str | None = None
    user: str | None = None
    password: str | None = None

    def __repr__(self) -> str:   # never print a secret
        return f"Source({self.name!r}, {self.url!r})"


def check_url(url: str) -> str:
    split_url(url)
    return url.rstrip("/")


def name_from_url(url: str) -> str:
    parsed = urlparse(url)
    return f"{parsed.hostname}-{parsed.port or 443}".replace(":", "-")


def check_source(name: str, table: dict) -> Source:
    if not SOURCE_NAME_RE.fullmatch(name):
        raise UsageError(f"{name!r} is not a valid source name.",
                         "Use letters, digits, '.', '_' and '-', starting with a letter or digit.")
    if not isinstance(table, dict) or not isinstance(table.get("url"), str):
        raise UsageError(f"Source {name} needs a url.")
    if not (table.get("token") or (table.get("user") and table.get("password"))):
        raise UsageError(f"Source {name} needs a token, or a user and a password.",
                         "Make a token on that server with 'ironfs replica token'.")
    fingerprint = table.get("fingerprint")
    if fingerprint is not None:
        fingerprint = str(fingerprint).lower().replace(":", "")
    return Source(name, check_url(table["url"]), fingerprint, table.get("token"), table.get("user"),
                  table.get("password"))


def load_sources(config_path: str | None, urls: tuple[str, ...], env=os.environ) -> list[Source]:
    """The sources to follow: those of the config file (only those with these URLs,
    when URLs are given), or one URL with credentials from the environment."""
    if config_path:
        try:
            with open(config_path, "rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            raise UsageError(f"There is no config file {config_path}.") from None
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(f"{config_path} is not valid TOML: {exc}.") from None
        sources = [check_source(name, table) for name, table in (data.get("sources") or {}).items()]
        if urls:
            wanted = {check_url(u) for u in urls}
            unknown = wanted - {s.url for s in sources}
            if unknown:
                raise UsageError(f"{', '.join(sorted(unknown))} has no table in {config_path}.",
                                 "Add a [sources.NAME] table with its url and credentials.")
            sources = [s for s in sources if s.url in wanted]
    elif len(urls) == 1:
        user, password = env.get("IRONFS_SOURCE_USER"), env.get("IRONFS_SOURCE_PASSWORD")
        if not (user and password):
            raise UsageError("The source's credentials are missing.",
                             "Set IRONFS_SOURCE_USER and IRONFS_SOURCE_PASSWORD, or give --config FILE.")
        sources = [check_source(name_from_url(urls[0]), {"url": urls[0], "user": user, "password": password})]
    else:
        raise UsageError("Name the sources to follow.",
                         "Give --config FILE (one table per source), or one --source URL with credentials in "
                         "IRONFS_SOURCE_USER and IRONFS_SOURCE_PASSWORD.")
    if not sources:
        raise UsageError("The config file names no sources.")
    if len({s.name for s in sources}) != len(sources) or len({s.url for s in sources}) != len(sources):
        raise UsageError("Two sources have the same name or URL.")
    return sources
