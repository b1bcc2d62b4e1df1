"""Keys, key slots and blob sealing for format 1.

A volume has one random 64-byte master key: the first half is the AES-256-GCM
encryption key, the second the BLAKE2b key that names blobs and contents. The
master key is stored only wrapped in key slots, each under a key derived from a
secret with argon2id, so changing or adding a secret never re-encrypts data."""
import base64
import os
import secrets
import threading
from dataclasses import dataclass, field

import zstandard
from argon2.low_level import Type, hash_secret_raw
from blake3 import blake3
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ironfs.errors import CorruptData, VolumeFormatError, WrongSecret

MASTER_KEY_LEN = 64
BLOB_ID_LEN = 16
NONCE_LEN = 12
TAG_LEN = 16
SEAL_OVERHEAD = NONCE_LEN + 1 + TAG_LEN   # a sealed blob is at most this much longer than its plaintext
SLOT_AD = b"ironcore keyslot v1\x00"

# Codec byte that leads every sealed blob's plaintext.
CODEC_RAW = 0
CODEC_ZSTD = 1
ZSTD_LEVEL = 2   # level 3 compresses text no better here and 1.5x slower

# argon2id defaults: about 0.1-0.3 s and 64 MiB on a current core; stored per slot.
KDF_DEFAULTS = {"alg": "argon2id", "time_cost": 3, "memory_cost": 65536, "parallelism": 2}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    return base64.b64decode(text.encode("ascii"), validate=True)


def derive_slot_key(secret: bytes, kdf: dict) -> bytes:
    if kdf.get("alg") != "argon2id":
        raise VolumeFormatError(f"Key slot uses an unknown KDF {kdf.get('alg')!r}.")
    return hash_secret_raw(
        secret=secret,
        salt=unb64(kdf["salt"]),
        time_cost=int(kdf["time_cost"]),
        memory_cost=int(kdf["memory_cost"]),
        parallelism=int(kdf["parallelism"]),
        hash_len=32,
        type=Type.ID,
    )


def make_slot(name: str, secret: bytes, master: bytes, volume_id: bytes, kdf_params: dict | None = None) -> dict:
    kdf = dict(kdf_params or KDF_DEFAULTS)
    kdf["salt"] = b64(secrets.token_bytes(16))
    nonce = secrets.token_bytes(NONCE_LEN)
    wrapped = AESGCM(derive_slot_key(secret, kdf)).encrypt(nonce, master, SLOT_AD + volume_id)
    return {"name": name, "kdf": kdf, "nonce": b64(nonce), "wrapped": b64(wrapped)}


def open_slots(slots: list[dict], secret: bytes, volume_id: bytes) -> tuple[bytes, str]:
    """Return (master key, slot name) from the first slot the secret opens."""
    for slot in slots:
        try:
            key = derive_slot_key(secret, slot["kdf"])
            master = AESGCM(key).decrypt(unb64(slot["nonce"]), unb64(slot["wrapped"]), SLOT_AD + volume_id)
        except InvalidTag:
            continue
        if len(master) != MASTER_KEY_LEN:
            raise VolumeFormatError(f"Key slot {slot['name']!r} holds a key of the wrong length.")
        return master, slot["name"]
    names = ", ".join(s["name"] for s in slots) or "none"
    raise WrongSecret(
        "The secret does not open this volume.",
        f"Key slots present: {names}. Check the password or key and try again; without a secret "
        "that opens one of these slots the data cannot be decrypted by anyone.",
    )


BLOB_KEY_CONTEXT = "ironcore volume format 1 blob id"
CONTENT_KEY_CONTEXT = "ironcore volume format 1 content id"


@dataclass(frozen=True)
class MasterKey:
    """The two halves of a volume's master key and the operations that use them.
    Blob and content ids are keyed BLAKE3 under keys derived from the id half,
    one per purpose, so neither can stand in for the other."""

    raw: bytes
    blob_key: bytes = field(init=False, repr=False, compare=False)
    content_key: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "blob_key", derive_key(BLOB_KEY_CONTEXT, self.id_key))
        object.__setattr__(self, "content_key", derive_key(CONTENT_KEY_CONTEXT, self.id_key))

    @classmethod
    def generate(cls) -> "MasterKey":
        return cls(secrets.token_bytes(MASTER_KEY_LEN))

    @property
    def enc_key(self) -> bytes:
        return self.raw[:32]

    @property
    def id_key(self) -> bytes:
        return self.raw[32:]

    def blob_id(self, plaintext) -> bytes:
        return blake3(plaintext, key=self.blob_key).digest(BLOB_ID_LEN)


def derive_key(context: str, material: bytes) -> bytes:
    return blake3(material, derive_key_context=context).digest(32)


class BlobSealer:
    """Compress-then-encrypt of blobs. Thread-safe: cheroot and the backup pool share one."""

    def __init__(self, key: MasterKey):
        self.key = key
        self._aead = AESGCM(key.enc_key)
        self._local = threading.local()   # zstd contexts are costly to make and not thread-safe

    def _zstd(self):
        loc = self._local
        if not hasattr(loc, "c"):
            loc.c = zstandard.ZstdCompressor(level=ZSTD_LEVEL)
            loc.d = zstandard.ZstdDecompressor()
        return loc

    def _nonce(self) -> bytes:
        """12 random bytes from the OS, fetched 4 KiB at a time per thread: one
        system call (and one hand-off of the GIL) per 341 blobs, not per blob."""
        loc = self._local
        pool = getattr(loc, "nonces", None)
        if pool is None:
            pool, loc.pid = b"", 0
        at = getattr(loc, "nonce_at", 0)
        if at + NONCE_LEN > len(pool) or loc.pid != os.getpid():   # never share a pool with a forked child
            pool, at = os.urandom(NONCE_LEN * 341), 0
            loc.nonces, loc.pid = pool, os.getpid()
        loc.nonce_at = at + NONCE_LEN
        return pool[at:at + NONCE_LEN]

    def seal(self, blob_id: bytes, plaintext) -> bytearray:
        """nonce || AES-GCM(codec || payload); `plaintext` may be any buffer (a
        memoryview slice of a larger read is not copied first)."""
        sealed = bytearray(SEAL_OVERHEAD + len(plaintext))
        with memoryview(sealed) as out:
            n = self.seal_into(blob_id, plaintext, out)
        del sealed[n:]   # in place: shorter when compressed
        return sealed

    def seal_into(self, blob_id: bytes, plaintext, out: memoryview, frame: memoryview | None = None) -> int:
        """Seal into `out` (at least SEAL_OVERHEAD bytes more than the plaintext);
        returns the sealed length. `frame`, if given, is a writable view one byte
        longer than the plaintext and ending with it: a blob that does not
        compress is then encrypted where it lies, its codec in the borrowed
        first byte (given back after), instead of being copied first."""
        loc = self._zstd()
        compressed = loc.c.compress(plaintext)
        if len(compressed) < len(plaintext):
            return self._encrypt_into(blob_id, self._framed(loc, CODEC_ZSTD, compressed), out)
        if frame is None:
            return self._encrypt_into(blob_id, self._framed(loc, CODEC_RAW, plaintext), out)
        borrowed = frame[0]
        frame[0] = CODEC_RAW
        try:
            return self._encrypt_into(blob_id, frame, out)
        finally:
            frame[0] = borrowed

    @staticmethod
    def _framed(loc, codec: int, payload) -> memoryview:
        """codec || payload in this thread's buffer (no new memory a blob)."""
        n = 1 + len(payload)
        scratch = getattr(loc, "body", None)
        if scratch is None or len(scratch) < n:
            scratch = loc.body = bytearray(max(n, 1 + (128 << 10)))
        body = memoryview(scratch)[:n]
        body[0] = codec
        body[1:] = payload
        return body

    def _encrypt_into(self, blob_id: bytes, body, out: memoryview) -> int:
        nonce = self._nonce()
        out[:NONCE_LEN] = nonce
        self._aead.encrypt_into(nonce, body, blob_id, out[NONCE_LEN:NONCE_LEN + len(body) + TAG_LEN])
        return NONCE_LEN + len(body) + TAG_LEN

    def open(self, blob_id: bytes, sealed, raw_length: int | None = None) -> bytes:
        """Decrypt and decompress; raise CorruptData unless the result hashes to blob_id."""
        sealed = memoryview(sealed)   # a slice of a larger read is decrypted where it lies
        if len(sealed) < NONCE_LEN + TAG_LEN + 1:
            raise CorruptData(f"Blob {blob_id.hex()} is truncated.")
        try:
            body = self._aead.decrypt(bytes(sealed[:NONCE_LEN]), sealed[NONCE_LEN:], blob_id)
        except InvalidTag:
            raise CorruptData(f"Blob {blob_id.hex()} failed authentication (damaged or wrong key).") from None
        codec = body[0]
        payload = memoryview(body)[1:] if codec == CODEC_ZSTD else body[1:]
        if codec == CODEC_ZSTD:
            try:
                plain = self._zstd().d.decompress(payload, max_output_size=raw_length or 0)
            except zstandard.ZstdError as exc:
                raise CorruptData(f"Blob {blob_id.hex()} does not decompress: {exc}") from None
        elif codec == CODEC_RAW:
            plain = payload
        else:
            raise CorruptData(f"Blob {blob_id.hex()} has unknown codec {codec}.")
        if self.key.blob_id(plain) != blob_id:
            raise CorruptData(f"Blob {blob_id.hex()} does not match its id.")
        return plain
