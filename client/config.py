"""Client state under $IRONCORE_HOME (default ~/.ironcore, the seed's .ICM folder):
one JSON file per backup set in sets/, and the file caches in cache/."""
import json
import os
import secrets
import socket
import sys
from dataclasses import asdict, dataclass, field
from urllib.parse import unquote, urlparse

from ironfs.errors import NotFound, UsageError
from ironfs.format.fsutil import tmp_name, write_atomic
from ironfs.store.sets import check_set_name


def home() -> str:
    path = os.environ.get("IRONCORE_HOME") or os.path.join(os.path.expanduser("~"), ".ironcore")
    os.makedirs(os.path.join(path, "sets"), mode=0o700, exist_ok=True)
    os.makedirs(os.path.join(path, "cache"), mode=0o700, exist_ok=True)
    return path


def host_name() -> str:
    """This machine's name as servers see it (IRONCORE_HOSTNAME overrides, e.g. in containers)."""
    return os.environ.get("IRONCORE_HOSTNAME") or socket.gethostname()


def machine_id() -> str:
    """This installation's id (random, made at login, kept in $IRONCORE_HOME/machine-id):
    a server's writer lease names it, so machines that share a host name (cloned VMs,
    containers) never take each other's lease over."""
    path = os.path.join(home(), "machine-id")
    try:
        with open(path) as f:
            return f.read().strip()
    except FileNotFoundError:
        pass
    tmp = tmp_name(home())
    with open(tmp, "w") as f:
        f.write(secrets.token_hex(16) + "\n")
    try:
        os.link(tmp, path)   # never replaces an id another process made first
    except FileExistsError:
        pass
    finally:
        os.unlink(tmp)
    with open(path) as f:
        return f.read().strip()


@dataclass
class BackupSet:
    name: str
    sources: list[str]
    destination: str
    excludes: list[str] = field(default_factory=list)
    allow_empty_source: bool = False   # back up a missing or emptied source as removed files (else the run fails)

    @property
    def on_server(self) -> bool:
        return self.destination.startswith(("https://", "http://"))

    @property
    def volume_dir(self) -> str:
        """The local volume folder of a file:// destination."""
        url = urlparse(self.destination)
        if url.scheme != "file" or url.netloc not in ("", "localhost"):
            raise UsageError(f"Destination {self.destination!r} is not a local folder (file:///DIR).")
        return unquote(url.path)


def check_destination(url: str) -> str:
    parsed = urlparse(url)
    if parsed.scheme != "file" or not parsed.path.startswith("/"):
        raise UsageError(f"Destination {url!r} is not a folder or the server this machine is logged in to.",
                         "Use file:///ABSOLUTE/DIR, or log in with 'ironcore login' and leave --to out.")
    return url


def set_path(name: str) -> str:
    return os.path.join(home(), "sets", check_set_name(name) + ".json")


def save_set(bset: BackupSet) -> None:
    write_atomic(set_path(bset.name), json.dumps(asdict(bset), indent=1).encode())


def load_set(name: str) -> BackupSet:
    try:
        with open(set_path(name)) as f:
            return BackupSet(**json.load(f))
    except FileNotFoundError:
        raise NotFound(f"There is no backup set named {name!r} on this machine.",
                       "List sets with 'ironcore set list' or add one with 'ironcore set add'.") from None


def list_sets() -> list[BackupSet]:
    folder = os.path.join(home(), "sets")
    return [load_set(n[:-5]) for n in sorted(os.listdir(folder)) if n.endswith(".json")]


def read_secret(password_stdin: bool, confirm: bool = False, env: str = "IRONCORE_PASSWORD",
                prompt: str = "Password: ") -> bytes:
    """The set's secret: --password-stdin, else the environment, else a terminal prompt."""
    if password_stdin:
        line = sys.stdin.buffer.readline().rstrip(b"\r\n")
        if not line:
            raise UsageError("--password-stdin was given but standard input held no password.")
        return line
    if os.environ.get(env):
        return os.environ[env].encode()
    if sys.stdin.isatty():
        import getpass
        secret = getpass.getpass(prompt).encode()
        if confirm and getpass.getpass("Password again: ").encode() != secret:
            raise UsageError("The two passwords differ.")
        if not secret:
            raise UsageError("An empty password is not allowed.")
        return secret
    raise UsageError("No password given.", f"Use --password-stdin or set {env}.")
