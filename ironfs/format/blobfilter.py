"""A Bloom filter over blob ids, so that the common answer during a backup ("this
blob is new") costs a few bit tests instead of a catalog query, in bounded memory
(16 bits per blob). "No" is certain; "maybe" is settled by the catalog.

Blob ids are keyed hashes, uniform and independent in every byte, so the bit
positions are read straight out of the id: no further hashing."""

PROBES = 4          # positions per id, each from 4 bytes of it
BITS_PER_ID = 16    # about 0.25% false "maybe" at the planned size


class BlobFilter:
    def __init__(self, expected: int):
        bits = 1 << max(20, (max(expected, 1) * BITS_PER_ID - 1).bit_length())
        self.mask = bits - 1
        self.bits = bytearray(bits // 8)

    def _positions(self, blob_id: bytes):
        x = int.from_bytes(blob_id[:4 * PROBES], "little")
        m = self.mask
        return x & m, (x >> 32) & m, (x >> 64) & m, (x >> 96) & m   # PROBES = 4 words of 4 bytes

    def add(self, blob_id: bytes) -> None:
        bits = self.bits
        for p in self._positions(blob_id):
            bits[p >> 3] |= 1 << (p & 7)

    def __contains__(self, blob_id: bytes) -> bool:
        bits = self.bits
        a, b, c, d = self._positions(blob_id)
        return bool(bits[a >> 3] & (1 << (a & 7)) and bits[b >> 3] & (1 << (b & 7))
                    and bits[c >> 3] & (1 << (c & 7)) and bits[d >> 3] & (1 << (d & 7)))
