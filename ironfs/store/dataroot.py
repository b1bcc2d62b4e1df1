"""A server's data root: settings, TLS identity, the account store and one folder
of volumes per account.

    <root>/ironfs.json        format and settings (and a test clock's offset: store/clock.py)
    <root>/tls/cert.pem       self-signed certificate made by `ironfs init`
    <root>/tls/key.pem        its private key (0600)
    <root>/accounts.db        AccountStore
    <root>/accounts/<name>/   that account's volumes, one folder per set
    <root>/logs/              the server's logs
"""
import datetime
import json
import os
import socket
import threading
import time

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ironfs.errors import MissingData, UsageError, VolumeFormatError
from ironfs.format.fsutil import write_atomic
from ironfs.store.accounts import AccountStore
from ironfs.store.clock import ServerClock

FORMAT = 1
CERT_DAYS = 3650


def cert_fingerprint(cert_pem: bytes) -> str:
    """SHA-256 of the certificate's DER bytes, as clients pin it: 64 hex digits."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.fingerprint(hashes.SHA256()).hex()


def make_self_signed(hostname: str) -> tuple[bytes, bytes]:
    """(certificate PEM, private key PEM) for `hostname`, localhost and loopback."""
    import ipaddress
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    alt = x509.SubjectAlternativeName([x509.DNSName(hostname), x509.DNSName("localhost"),
                                       x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                       x509.IPAddress(ipaddress.ip_address("::1"))])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS)).add_extension(alt, critical=False)
            .sign(key, hashes.SHA256()))
    return (cert.public_bytes(serialization.Encoding.PEM),
            key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption()))


def make_layout(path: str) -> None:
    """The folders of a new data root and its self-signed TLS certificate."""
    for sub in ("tls", "accounts", "logs"):
        os.makedirs(os.path.join(path, sub), mode=0o700, exist_ok=True)
    cert, key = make_self_signed(socket.gethostname())
    fd = os.open(os.path.join(path, "tls", "key.pem"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    write_atomic(os.path.join(path, "tls", "cert.pem"), cert)


class DataRoot:
    def __init__(self, path: str):
        self.path = os.path.abspath(path)
        try:
            with open(os.path.join(self.path, "ironfs.json")) as f:
                self.settings = json.load(f)
        except FileNotFoundError:
            raise MissingData(f"{self.path} is not an Ironcore data root.",
                              "Make one with 'ironfs init --data-root DIR', or give the right --data-root.") from None
        if self.settings.get("format") != FORMAT:
            raise VolumeFormatError(f"{self.path} has data root format {self.settings.get('format')!r}; "
                                    f"this program reads format {FORMAT}.")
        self._local = threading.local()
        self.clock = ServerClock(os.path.join(self.path, "ironfs.json"))

    @classmethod
    def init(cls, path: str, admin_name: str, admin_password: str) -> "DataRoot":
        path = os.path.abspath(path)
        if os.path.exists(os.path.join(path, "ironfs.json")):
            raise UsageError(f"{path} is a data root already.", "Use it as it is, or choose an empty folder.")
        make_layout(path)
        store = AccountStore(os.path.join(path, "accounts.db"))
        store.add(admin_name, admin_password, quota=None, admin=True)
        store.close()
        settings = {"format": FORMAT, "created_ns": time.time_ns(), "admin_sees_all_accounts": False}
        write_atomic(os.path.join(path, "ironfs.json"), json.dumps(settings, indent=1).encode())
        return cls(path)

    @property
    def cert_path(self) -> str:
        return os.path.join(self.path, "tls", "cert.pem")

    @property
    def key_path(self) -> str:
        return os.path.join(self.path, "tls", "key.pem")

    def fingerprint(self) -> str:
        with open(self.cert_path, "rb") as f:
            return cert_fingerprint(f.read())

    @property
    def accounts(self) -> AccountStore:
        """This thread's account store (SQLite connections are not shared between threads)."""
        store = getattr(self._local, "accounts", None)
        if store is None:
            store = self._local.accounts = AccountStore(os.path.join(self.path, "accounts.db"))
        return store

    def account_dir(self, name: str) -> str:
        return os.path.join(self.path, "accounts", name)

    def close(self) -> None:
        store = getattr(self._local, "accounts", None)
        if store is not None:
            store.close()
            self._local.accounts = None
