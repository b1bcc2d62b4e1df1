"""Accounts of a data root: names, argon2id password hashes, quotas, the admin
flag. SQLite in WAL mode, one connection per thread (cheroot serves from many);
the database and its -wal and -shm are readable by their owner only (0600).

An account removed with `remove` stops at once (it can no longer log in) but
its volumes stay on disk until `ironfs gc`, so a mistaken removal is not yet a
loss."""
import base64
import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from argon2.low_level import ARGON2_VERSION

from ironfs.errors import IroncoreError, NotFound, UsageError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")

SCHEMA = """
CREATE TABLE IF NOT EXISTS accounts(
    name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, quota INTEGER, admin INTEGER NOT NULL DEFAULT 0,
    created_ns INTEGER NOT NULL, removed_ns INTEGER);
CREATE TABLE IF NOT EXISTS tokens(
    id TEXT PRIMARY KEY, account TEXT NOT NULL, secret_hash BLOB NOT NULL, host TEXT, role TEXT NOT NULL,
    created_ns INTEGER NOT NULL, last_used_ns INTEGER, revoked_ns INTEGER);
"""
TOKEN_PREFIX = "ic1"
LAST_USED_STEP_NS = 60 * 10**9
PRIVATE_MODE = 0o600


class AccountExists(IroncoreError):
    pass


class AuthFailed(IroncoreError):
    """Wrong name or password; deliberately does not say which."""

    exit_code = 3


def check_account_name(name: str) -> str:
    if not NAME_RE.fullmatch(name):
        raise UsageError(f"{name!r} is not a valid account name.",
                         "Use lower-case letters, digits, '.', '_' and '-' (at most 64), starting with a letter or digit.")
    return name


def make_private(path: str) -> None:
    """The store's files made 0600, and first the database: SQLite gives the -wal and -shm
    it creates the database's mode. Files left group- or world-readable by an older
    version are put right. (Only stat and chmod: opening and closing the database file
    here would drop the POSIX locks of this process's SQLite connections to it.)"""
    for name in (path, path + "-wal", path + "-shm"):
        try:
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, PRIVATE_MODE)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise UsageError(f"{name} holds password hashes and is readable by others, but its mode cannot be "
                             f"changed ({exc.strerror}).", f"Run as its owner, or 'chmod 600 {name}'.") from None


def unmatchable_hash(hasher: PasswordHasher) -> str:
    """An argon2 hash string with the hasher's parameters and random salt and digest: no
    password matches it, and verifying one against it costs what a real account's check
    costs, so an unknown name answers as slowly as a wrong password."""
    def b64(n: int) -> str:
        return base64.b64encode(secrets.token_bytes(n)).decode().rstrip("=")
    return (f"$argon2{hasher.type.name.lower()}$v={ARGON2_VERSION}"
            f"$m={hasher.memory_cost},t={hasher.time_cost},p={hasher.parallelism}"
            f"${b64(hasher.salt_len)}${b64(hasher.hash_len)}")


class AccountStore:
    def __init__(self, path: str):
        self.db = sqlite3.connect(path, timeout=30, isolation_level=None)   # creates the file, still empty
        try:
            make_private(path)   # before anything is written, and before the -wal and -shm exist
        except UsageError:
            self.db.close()
            raise
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.executescript(SCHEMA)
        self._hasher = PasswordHasher()   # argon2id with the library's current defaults
        self._unknown_name_hash = unmatchable_hash(self._hasher)

    def close(self) -> None:
        self.db.close()

    def add(self, name: str, password: str, quota: int | None, admin: bool = False) -> None:
        check_account_name(name)
        if not password:
            raise UsageError("An empty password is not allowed.")
        try:
            self.db.execute("INSERT INTO accounts(name, password_hash, quota, admin, created_ns) VALUES(?,?,?,?,?)",
                            (name, self._hasher.hash(password), quota, int(admin), time.time_ns()))
        except sqlite3.IntegrityError:
            removed = self.db.execute("SELECT removed_ns FROM accounts WHERE name=?", (name,)).fetchone()[0]
            if removed is not None:
                raise AccountExists(f"The account {name!r} was removed and its data is kept until 'ironfs gc'.",
                                    "Pick another name, or run 'ironfs gc' first.") from None
            raise AccountExists(f"An account named {name!r} exists already.",
                                "Pick another name, or change that account with 'ironfs account passwd/quota'.") from None

    def _row(self, name: str):
        row = self.db.execute("SELECT name, password_hash, quota, admin, created_ns FROM accounts "
                              "WHERE name=? AND removed_ns IS NULL", (name,)).fetchone()
        if row is None:
            raise NotFound(f"There is no account named {name!r}.", "List them with 'ironfs account list'.")
        return row

    def get(self, name: str) -> dict:
        name, _, quota, admin, created = self._row(name)
        return {"name": name, "quota": quota, "admin": bool(admin), "created_ns": created}

    def list(self) -> list[dict]:
        return [{"name": n, "quota": q, "admin": bool(a), "created_ns": c} for n, q, a, c in self.db.execute(
            "SELECT name, quota, admin, created_ns FROM accounts WHERE removed_ns IS NULL ORDER BY name")]

    def authenticate(self, name: str, password: str) -> dict:
        """The account if the password is right; AuthFailed otherwise, with the same
        message and after the same argon2 work for an unknown name, so names cannot be
        probed."""
        try:
            row = self._row(name)
        except NotFound:
            row = None
        try:
            self._hasher.verify(self._unknown_name_hash if row is None else row[1], password)
        except (VerificationError, InvalidHashError):
            raise AuthFailed("Wrong account name or password.", "Check both and try again.") from None
        if self._hasher.check_needs_rehash(row[1]):
            self.db.execute("UPDATE accounts SET password_hash=? WHERE name=?", (self._hasher.hash(password), name))
        return self.get(name)

    def credential(self, name: str) -> str | None:
        """What a login of `name` cached by the server must still match to stay valid: the
        stored password hash, which every new password (and a replica's update) replaces;
        None once the account is removed or for no such account. One indexed read."""
        row = self.db.execute("SELECT password_hash FROM accounts WHERE name=? AND removed_ns IS NULL",
                              (name,)).fetchone()
        return row[0] if row else None

    def set_password(self, name: str, password: str) -> None:
        self._row(name)
        if not password:
            raise UsageError("An empty password is not allowed.")
        self.db.execute("UPDATE accounts SET password_hash=? WHERE name=?", (self._hasher.hash(password), name))

    def set_quota(self, name: str, quota: int | None) -> None:
        self._row(name)
        self.db.execute("UPDATE accounts SET quota=? WHERE name=?", (quota, name))

    def remove(self, name: str) -> None:
        self._row(name)
        now = time.time_ns()
        self.db.execute("UPDATE accounts SET removed_ns=? WHERE name=?", (now, name))
        self.db.execute("UPDATE tokens SET revoked_ns=? WHERE account=? AND revoked_ns IS NULL", (now, name))

    # --- replication: a replica keeps the accounts of its source, password hashes included,
    # so that its users can log in to it when it serves their restores or is promoted.
    def export(self) -> "list[dict]":
        return [{"name": n, "password_hash": h, "quota": q, "admin": bool(a), "created_ns": c}
                for n, h, q, a, c in self.db.execute(
                    "SELECT name, password_hash, quota, admin, created_ns FROM accounts WHERE removed_ns IS NULL "
                    "ORDER BY name")]

    def mirror(self, rows: "list[dict]") -> None:
        """Make the accounts those of `rows` (from a source's `export`); accounts the
        source no longer has are marked removed, their data kept."""
        now = time.time_ns()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            for row in rows:
                check_account_name(row["name"])
                self.db.execute(
                    "INSERT INTO accounts(name, password_hash, quota, admin, created_ns) VALUES(?,?,?,?,?) "
                    "ON CONFLICT(name) DO UPDATE SET password_hash=excluded.password_hash, quota=excluded.quota, "
                    "admin=excluded.admin, created_ns=excluded.created_ns, removed_ns=NULL",
                    (row["name"], row["password_hash"], row["quota"], int(row["admin"]), row["created_ns"]))
            names = [row["name"] for row in rows]
            self.db.execute(f"UPDATE accounts SET removed_ns=? WHERE removed_ns IS NULL AND name NOT IN "
                            f"({','.join('?' * len(names))})", (now, *names))

    # --- client tokens: what a logged-in machine keeps instead of the password ---------
    def issue_token(self, name: str, host: str, role: str = "client") -> str:
        """A new random token for `name`; only its SHA-256 is stored (it is 256 random
        bits, so a fast hash is enough). Role "client" can back up and restore, never
        delete history."""
        self._row(name)
        token_id, secret = secrets.token_hex(8), secrets.token_urlsafe(32)
        self.db.execute("INSERT INTO tokens(id, account, secret_hash, host, role, created_ns) VALUES(?,?,?,?,?,?)",
                        (token_id, name, hashlib.sha256(secret.encode()).digest(), host, role, time.time_ns()))
        return f"{TOKEN_PREFIX}_{token_id}_{secret}"

    def authenticate_token(self, token: str) -> dict:
        parts = token.split("_", 2)
        row = None
        if len(parts) == 3 and parts[0] == TOKEN_PREFIX:
            row = self.db.execute("SELECT account, secret_hash, role FROM tokens WHERE id=? AND revoked_ns IS NULL",
                                  (parts[1],)).fetchone()
        if row is None or not hmac.compare_digest(row[1], hashlib.sha256(parts[2].encode()).digest()):
            raise AuthFailed("This machine's login is not valid (revoked or unknown).",
                             "Log in again with 'ironcore login'.")
        now = time.time_ns()   # "last used" to the minute: not a database write per request
        self.db.execute("UPDATE tokens SET last_used_ns=? WHERE id=? AND (last_used_ns IS NULL OR last_used_ns < ?)",
                        (now, parts[1], now - LAST_USED_STEP_NS))
        account = self.get(row[0])
        account["role"] = row[2]
        return account
