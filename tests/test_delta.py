"""Delta encoder: both implementations, round trips, cross-checks, vectors.

Every API test runs against the C kernel and the pure-Python reference (the
`impl` fixture).  The C kernel is skipped only when it is not built and
IRONFS_REQUIRE_NATIVE is not 1.  Pure-Python inputs stay at 64 KiB or less.
"""

import hashlib
import os
import random
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ironfs.format import delta
from ironfs.format.delta import COPY, LITERAL, LITERAL_MAX, Signature

BLOCK_SIZES = [16, 64, 512]


def _load(name):
    try:
        return delta.implementation(name)
    except ImportError as exc:
        if os.environ.get("IRONFS_REQUIRE_NATIVE") == "1":
            pytest.fail(f"IRONFS_REQUIRE_NATIVE=1 but the C kernel is missing: {exc}")
        pytest.skip(f"C delta kernel not built: {exc}")


# Module scope: they hand out immutable module-like objects, and hypothesis
# tests may share them across examples.
@pytest.fixture(scope="module", params=["native", "python"])
def impl(request):
    return _load(request.param)


@pytest.fixture(scope="module")
def native():
    return _load("native")


@pytest.fixture(scope="module")
def both():
    return _load("native"), _load("python")


def literal_bytes(ops):
    return sum(len(op[1]) for op in ops if op[0] == LITERAL)


def copy_bytes(ops):
    return sum(op[2] for op in ops if op[0] == COPY)


def assert_canonical(ops, old_size):
    """Ops are well formed: no empty op, copies inside the old file, contiguous
    copies merged, literal runs cut only at LITERAL_MAX."""
    prev = None
    for op in ops:
        if op[0] == COPY:
            assert len(op) == 3 and op[2] > 0 and 0 <= op[1] and op[1] + op[2] <= old_size
            if prev is not None and prev[0] == COPY:
                assert prev[1] + prev[2] != op[1], "contiguous copies not merged"
        else:
            assert op[0] == LITERAL and len(op) == 2 and isinstance(op[1], bytes)
            assert 0 < len(op[1]) <= LITERAL_MAX
            if prev is not None and prev[0] == LITERAL:
                assert len(prev[1]) == LITERAL_MAX, "adjacent literals not merged"
        prev = op


def random_bytes(rnd, n):
    return rnd.getrandbits(8 * n).to_bytes(n, "little") if n else b""


# ---- hypothesis: random pairs --------------------------------------------

edits = st.lists(
    st.one_of(
        st.tuples(st.just("insert"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=300)),
        st.tuples(st.just("delete"), st.integers(0, 1 << 16), st.integers(1, 700)),
        st.tuples(st.just("overwrite"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=300)),
        st.tuples(st.just("move"), st.integers(0, 1 << 16), st.integers(1, 700), st.integers(0, 1 << 16)),
    ),
    max_size=6,
)


def apply_edits(a, ops):
    b = bytearray(a)
    for e in ops:
        n = len(b)
        if e[0] == "insert":
            p = e[1] % (n + 1)
            b[p:p] = e[2]
        elif n == 0:
            continue
        elif e[0] == "delete":
            p = e[1] % n
            del b[p : p + e[2]]
        elif e[0] == "overwrite":
            p = e[1] % n
            b[p : p + len(e[2])] = e[2]
        else:
            p = e[1] % n
            piece = bytes(b[p : p + e[2]])
            del b[p : p + e[2]]
            q = e[3] % (len(b) + 1)
            b[q:q] = piece
    return bytes(b)


# Old data: random bytes, or few distinct bytes (repeated blocks, weak sums
# that collide, runs of one value).
old_data = st.one_of(
    st.binary(max_size=3000),
    st.lists(st.sampled_from([b"\x00" * 16, b"ab", b"\xff", b"xyz" * 7]), max_size=150).map(b"".join),
)
pairs = st.one_of(
    st.tuples(old_data, st.binary(max_size=3000)),
    old_data.flatmap(lambda a: st.tuples(st.just(a), edits.map(lambda e: apply_edits(a, e)))),
)

HYP = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@HYP
@given(pair=pairs, bs=st.sampled_from(BLOCK_SIZES))
def test_round_trip_both_implementations_agree(both, pair, bs):
    a, b = pair
    nat, py = both
    sig_n = nat.signature(a, bs)
    sig_p = py.signature(a, bs)
    assert sig_n.to_bytes() == sig_p.to_bytes()
    ops_n = nat.encode(sig_n, b)
    ops_p = py.encode(sig_p, b)
    assert ops_n == ops_p
    assert delta.apply(a, ops_n) == b
    assert_canonical(ops_n, len(a))


@HYP
@given(pair=pairs, bs=st.sampled_from(BLOCK_SIZES))
def test_round_trip(impl, pair, bs):
    a, b = pair
    sig = impl.signature(a, bs)
    ops = impl.encode(sig, b)
    assert delta.apply(a, ops) == b
    assert_canonical(ops, len(a))
    if a == b and a:
        assert ops == [(COPY, 0, len(a))]


@settings(max_examples=60, deadline=None)
@given(pair=pairs, bs=st.sampled_from(BLOCK_SIZES), seed=st.integers(0, 2**32 - 1))
def test_streaming_matches_whole_buffer(impl, pair, bs, seed):
    a, b = pair
    rnd = random.Random(seed)
    builder = impl.SignatureBuilder(bs)
    pos = 0
    while pos < len(a):
        n = rnd.randint(0, 2 * bs)
        builder.update(memoryview(a)[pos : pos + n])
        pos += n
    sig = builder.finish()
    assert sig == impl.signature(a, bs)

    enc = impl.Encoder(sig)
    ops = []
    pos = 0
    while pos < len(b):
        n = rnd.choice([0, 1, rnd.randint(1, bs), rnd.randint(1, 5 * bs)])
        ops += enc.feed(bytearray(b[pos : pos + n]))
        pos += n
    ops += enc.finish()
    assert ops == impl.encode(sig, b)


# ---- streaming and files ---------------------------------------------------


def edited(rnd, a, count, size):
    b = bytearray(a)
    for _ in range(count):
        p = rnd.randrange(len(b))
        kind = rnd.randrange(3)
        if kind == 0:
            b[p:p] = random_bytes(rnd, rnd.randint(1, size))
        elif kind == 1:
            del b[p : p + rnd.randint(1, size)]
        else:
            b[p : p + size] = random_bytes(rnd, size)
    return bytes(b)


def test_streaming_large_chunks_native(native):
    rnd = random.Random(7)
    a = random_bytes(rnd, 3 << 20)
    b = edited(rnd, a, 30, 5000) + random_bytes(rnd, 3 << 20)  # long literal tail: split at 1 MiB
    sig = native.signature(a, 4096)
    enc = native.Encoder(sig)
    ops = []
    pos = 0
    while pos < len(b):
        n = rnd.randint(1, 700_000)
        ops += enc.feed(b[pos : pos + n])
        pos += n
    ops += enc.finish()
    whole = native.encode(sig, b)
    assert ops == whole
    assert delta.apply(a, whole) == b
    assert_canonical(whole, len(a))
    assert max(len(op[1]) for op in whole if op[0] == LITERAL) == LITERAL_MAX


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_encode_file_round_trip(impl, tmp_path, threads):
    rnd = random.Random(threads)
    bs = 256
    a = random_bytes(rnd, 40_000)
    b = edited(rnd, a, 8, 300)
    old = tmp_path / "old"
    new = tmp_path / "new"
    old.write_bytes(a)
    new.write_bytes(b)
    sig = impl.signature_file(old, bs, threads=threads, chunk_size=3000)
    assert sig == impl.signature(a, bs)
    ops = impl.encode_file(sig, new, threads=threads, chunk_size=1000)
    assert delta.apply(a, ops) == b
    assert_canonical(ops, len(a))
    assert copy_bytes(ops) >= 0.8 * len(b)
    if threads == 1:
        assert ops == impl.encode(sig, b)


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_encode_file_same_ops_in_both_implementations(both, tmp_path, threads):
    rnd = random.Random(100 + threads)
    a = random_bytes(rnd, 30_000)
    b = edited(rnd, a, 6, 400)
    (tmp_path / "new").write_bytes(b)
    nat, py = both
    sig = nat.signature(a, 128)
    assert nat.encode_file(sig, tmp_path / "new", threads=threads, chunk_size=700) == py.encode_file(
        sig, tmp_path / "new", threads=threads, chunk_size=700
    )


@pytest.mark.parametrize("threads", [2, 3])
def test_encode_file_segments_native(native, tmp_path, threads):
    rnd = random.Random(threads)
    bs = 4096
    a = random_bytes(rnd, 6 << 20)
    # Edits near the segment boundaries and a long new run that crosses one.
    b = bytearray(edited(rnd, a, 40, 3000))
    mid = len(b) // 2
    b[mid - 3 * LITERAL_MAX // 2 : mid - 3 * LITERAL_MAX // 2] = random_bytes(rnd, 3 * LITERAL_MAX)
    b = bytes(b)
    (tmp_path / "old").write_bytes(a)
    (tmp_path / "new").write_bytes(b)
    sig = native.signature_file(tmp_path / "old", bs, threads=threads, chunk_size=1 << 20)
    assert sig == native.signature(a, bs)
    ops = native.encode_file(sig, tmp_path / "new", threads=threads, chunk_size=1 << 20)
    assert delta.apply(a, ops) == b
    assert_canonical(ops, len(a))
    assert copy_bytes(ops) >= len(a) - 40 * (3000 + 2 * bs) - 2 * threads * bs


def test_empty_file_and_tiny_files(impl, tmp_path):
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "tiny").write_bytes(b"abc")
    sig = impl.signature_file(tmp_path / "empty", 64)
    assert (sig.block_count, sig.file_size) == (0, 0)
    assert impl.encode_file(sig, tmp_path / "tiny", threads=3) == [(LITERAL, b"abc")]
    sig = impl.signature_file(tmp_path / "tiny", 64, threads=3)
    assert impl.encode_file(sig, tmp_path / "empty") == []
    assert impl.encode_file(sig, tmp_path / "tiny", threads=3) == [(COPY, 0, 3)]


# ---- matching behaviour -----------------------------------------------------


def test_short_final_block_matches_at_end(impl):
    rnd = random.Random(3)
    a = random_bytes(rnd, 1000)  # 15 full blocks of 64 and one of 40
    sig = impl.signature(a, 64)
    assert impl.encode(sig, a) == [(COPY, 0, 1000)]
    assert impl.encode(sig, b"new" + a) == [(LITERAL, b"new"), (COPY, 0, 1000)]
    # The short block is only tried at the very end of the new data.
    assert impl.encode(sig, a[960:] + a[:960]) == [(LITERAL, a[960:]), (COPY, 0, 960)]


def test_repeated_blocks_stay_one_copy(impl):
    a = bytes(4096) + b"x" * 100 + bytes(4096)
    sig = impl.signature(a, 64)
    assert impl.encode(sig, a) == [(COPY, 0, len(a))]
    b = bytes(4096) + b"y" * 100 + bytes(4096)
    ops = impl.encode(sig, b)
    assert delta.apply(a, ops) == b
    assert literal_bytes(ops) <= 100 + 2 * 64


def test_many_ops_agree(both):
    # More ops than the C side hands back per call (1024), none of them mergeable.
    nat, py = both
    rnd = random.Random(9)
    blocks = [random_bytes(rnd, 16) for _ in range(2500)]
    a = b"".join(blocks)
    b = b"".join(reversed(blocks)) + b"tail"
    sig = nat.signature(a, 16)
    ops = nat.encode(sig, b)
    assert len(ops) == 2501
    assert ops == py.encode(sig, b)
    assert delta.apply(a, ops) == b


def test_literal_runs_split_at_1_mib(native):
    rnd = random.Random(11)
    b = random_bytes(rnd, 2 * LITERAL_MAX + 5)
    ops = native.encode(native.signature(b"unrelated old data" * 10, 16), b)
    assert [len(op[1]) for op in ops] == [LITERAL_MAX, LITERAL_MAX, 5]


def test_insert_at_start_native(native):
    rnd = random.Random(1)
    a = random_bytes(rnd, 4 << 20)
    b = random_bytes(rnd, 100) + a
    ops = native.encode(native.signature(a, 4096), b)
    assert delta.apply(a, ops) == b
    assert literal_bytes(ops) < 64 * 1024


def test_rewritten_pages_native(native):
    rnd = random.Random(2)
    size, page = 16 << 20, 8192
    a = random_bytes(rnd, size)
    b = bytearray(a)
    changed = rnd.sample(range(size // page), size // page // 100)
    for i in changed:
        b[i * page : (i + 1) * page] = random_bytes(rnd, page)
    b = bytes(b)
    bs = delta.block_size_for(size)
    ops = native.encode(native.signature(a, bs), b)
    assert delta.apply(a, ops) == b
    assert literal_bytes(ops) <= 2 * len(changed) * page


# ---- known answers -----------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"abc", bytes(range(256)), b"\x00" * 127, b"\x01" * 128, b"\x02" * 129, b"Ironcore" * 1000],
)
def test_blake2b_128_known_answers(impl, data):
    want = hashlib.blake2b(data, digest_size=16).digest()
    assert impl._kernel.strong(data) == want
    # The signature of a block carries the same digest.
    sig = impl.signature(data, delta.BLOCK_MAX)
    assert [s for _, s in sig.blocks()] == ([want] if data else [])


# Computed once from the definition in the delta module docstring.
WEAK_VECTORS = [
    (b"", 0x0),
    (b"a", 0x62),
    (b"ab", 0x913C9625),
    (b"abc", 0x25CE4CF9),
    (bytes(range(256)), 0x256CF880),
    (b"\x00" * 8192, 0xD5452000),
    (b"Ironcore" * 1000, 0xAFCC65A8),
]


@pytest.mark.parametrize("data,want", WEAK_VECTORS)
def test_weak_known_answers(impl, data, want):
    sig = impl.signature(data, delta.BLOCK_MAX)
    assert [w for w, _ in sig.blocks()] == ([want] if data else [])
    assert impl._kernel.weak(data) == want


def test_native_self_test(native):
    assert native._kernel.lib.ic_selftest() == 0
    assert native._kernel.lib.ic_blake2b_x4_selftest() == 0
    assert native._kernel.weak(b"ab") == 0x913C9625


@pytest.mark.parametrize("length", [0, 1, 127, 128, 129, 4096, 8192 + 5])
def test_blake2b_four_lanes(native, length):
    # Four messages at once (SIMD lanes where the CPU has them) equal hashlib.
    ffi, lib = native._kernel.ffi, native._kernel.lib
    rnd = random.Random(length)
    msgs = [random_bytes(rnd, length) for _ in range(4)]
    keep = [ffi.from_buffer("uint8_t[]", m) for m in msgs]
    outs = [ffi.new("uint8_t[16]") for _ in range(4)]
    lib.ic_blake2b_128_x4(ffi.new("const uint8_t *[4]", keep), length, ffi.new("uint8_t *[4]", outs))
    assert [bytes(o) for o in outs] == [hashlib.blake2b(m, digest_size=16).digest() for m in msgs]


@pytest.mark.parametrize(
    "size,want",
    [
        (0, 4096),
        (500 * 2**20 - 1, 4096),
        (500 * 2**20, 8192),
        (2 * 2**30 - 1, 8192),
        (2 * 2**30, 16384),
        (8 * 2**30 - 1, 16384),
        (8 * 2**30, 32768),
        (15 * 2**30 - 1, 32768),
        (15 * 2**30, 65536),
        (2**50, 65536),
    ],
)
def test_block_size_for(size, want):
    assert delta.block_size_for(size) == want


# ---- signature serialisation -------------------------------------------------


def test_signature_bytes_round_trip(impl):
    rnd = random.Random(5)
    a = random_bytes(rnd, 1000)
    sig = impl.signature(a, 64)
    raw = sig.to_bytes()
    assert raw[:4] == b"ICDS" and len(raw) == 20 + 20 * 16
    back = Signature.from_bytes(raw)
    assert back == sig
    assert (back.block_size, back.file_size, back.block_count) == (64, 1000, 16)
    assert impl.encode(back, a) == [(COPY, 0, 1000)]
    assert Signature.from_bytes(memoryview(impl.signature(b"", 16).to_bytes())).block_count == 0


@pytest.mark.parametrize(
    "mangle,message",
    [
        (lambda r: r[:10], "truncated"),
        (lambda r: r[:-1], "truncated"),
        (lambda r: r[:20], "truncated"),
        (lambda r: b"XXXX" + r[4:], "magic"),
        (lambda r: r[:4] + b"\x02\x00" + r[6:], "version"),
        (lambda r: r[:6] + b"\x01\x00" + r[8:], "reserved"),
        (lambda r: r[:8] + b"\x00\x00\x00\x00" + r[12:], "block size"),
        (lambda r: r + b"\x00", "trailing"),
    ],
)
def test_signature_bad_input(mangle, message):
    raw = delta.implementation("python").signature(b"x" * 100, 16).to_bytes()
    with pytest.raises(ValueError, match=message):
        Signature.from_bytes(mangle(raw))


def test_bad_arguments(impl):
    with pytest.raises(ValueError):
        impl.SignatureBuilder(0)
    with pytest.raises(ValueError):
        impl.signature(b"abc", delta.BLOCK_MAX + 1)
    with pytest.raises(TypeError):
        impl.encode(b"not a signature", b"abc")
    enc = impl.Encoder(impl.signature(b"abc", 16))
    enc.finish()
    with pytest.raises(ValueError):
        enc.feed(b"more")
    with pytest.raises(ValueError):
        delta.apply(b"abc", [(COPY, 2, 5)])


# ---- implementation choice -----------------------------------------------------


def _probe(env_extra, prelude=""):
    env = {k: v for k, v in os.environ.items() if not k.startswith("IRONFS_")}
    env.update(env_extra)
    code = prelude + "from ironfs.format import delta; print(delta.IMPLEMENTATION)"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)


BLOCK_NATIVE = "import sys; sys.modules['ironfs._native'] = None\n"


def test_choice_pure_forced():
    res = _probe({"IRONFS_PURE": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "python"


def test_choice_falls_back_without_native():
    res = _probe({}, BLOCK_NATIVE)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "python"


def test_choice_require_native_fails_loudly():
    res = _probe({"IRONFS_REQUIRE_NATIVE": "1"}, BLOCK_NATIVE)
    assert res.returncode != 0
    assert "IRONFS_REQUIRE_NATIVE=1" in res.stderr and "ImportError" in res.stderr


def test_choice_native_by_default(native):
    res = _probe({"IRONFS_REQUIRE_NATIVE": "1"})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "native"
