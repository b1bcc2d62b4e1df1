"""Large files are read and written past the page cache: the bytes must be the
same as through it, on ext4 (direct I/O) and on tmpfs, whatever the offsets,
holes and tails."""
import os

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from ironfs.format import directio

FILESYSTEMS = ["tmp_path"] + (["/dev/shm"] if os.path.isdir("/dev/shm") else [])


@pytest.fixture(params=FILESYSTEMS)
def folder(request, tmp_path):
    if request.param == "tmp_path":
        yield str(tmp_path)
        return
    path = os.path.join(request.param, f"ironcore-directio-{os.getpid()}")
    os.makedirs(path, exist_ok=True)
    yield path
    for name in os.listdir(path):
        os.unlink(os.path.join(path, name))
    os.rmdir(path)


# pieces of a file: (hole before it, data length); lengths around block and stage sizes
pieces = st.lists(st.tuples(st.sampled_from([0, 0, 0, 4096, 12288, 5000]),
                            st.integers(min_value=1, max_value=3 * 8192 + 17)), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(pieces, st.booleans())
def test_writer_writes_what_plain_writes_would(folder, monkeypatch, layout, trailing_hole):
    monkeypatch.setattr(directio, "DIRECT_MIN", 0)           # every file counts as large
    monkeypatch.setattr(directio.Writer, "STAGE", 8192)       # and the stage fills often
    expected = bytearray()
    path = os.path.join(folder, "f")
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        out = directio.Writer(fd, 1)
        for hole, length in layout:
            expected += bytes(hole)
            data = os.urandom(length)
            out.write(len(expected), data)
            expected += data
        out.close()
        if trailing_hole:
            expected += bytes(777)
            os.ftruncate(fd, len(expected))
    finally:
        os.close(fd)
    with open(path, "rb") as f:
        assert f.read() == bytes(expected)


@pytest.mark.parametrize("size", [directio.DIRECT_MIN, directio.DIRECT_MIN + 4095, directio.DIRECT_MIN + 1])
def test_reader_reads_every_byte_directly_where_it_can(folder, size):
    data = os.urandom(size)
    path = os.path.join(folder, "f")
    with open(path, "wb") as f:
        f.write(data)
    fd = os.open(path, os.O_RDONLY)
    reader = directio.Reader(fd, size)
    try:
        if not folder.startswith("/dev/shm"):
            assert reader.direct is not None, "ext4 takes direct reads"
        buf = directio.buffer(1 << 20)
        got, pos = bytearray(), 0
        while pos < size:
            n = reader.read_into(pos, buf, min(1 << 20, size - pos))
            got += buf[:n]
            pos += n
            if n == 0:
                break
        assert bytes(got) == data
    finally:
        reader.close()
        os.close(fd)


def test_a_reader_of_a_small_file_uses_the_page_cache(tmp_path):
    path = tmp_path / "small"
    path.write_bytes(b"x" * 1000)
    fd = os.open(path, os.O_RDONLY)
    try:
        reader = directio.Reader(fd, 1000)
        assert reader.direct is None
        buf = directio.buffer(1000)
        assert reader.read_into(0, buf, 1000) == 1000 and buf[:1000] == b"x" * 1000
    finally:
        os.close(fd)
