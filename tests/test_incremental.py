"""Only what changed is stored: unchanged trees, page rewrites, inserts, renames."""
import os
import random
import shutil

import pytest

from conftest import assert_same_tree

PAGE = 8192


def write_random(path, size, seed):
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        for _ in range(size // (1 << 20)):
            f.write(rnd.randbytes(1 << 20))
        f.write(rnd.randbytes(size % (1 << 20)))


def test_unchanged_tree_stores_no_new_blob(env, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(50):
        (src / "d" / f"f{i}").write_bytes(os.urandom(1000 * i))
    write_random(src / "big", 3 << 20, 1)
    env.add_set("s", src)
    first = env.backup_json()
    assert first["blobs_stored"] > 0
    second = env.backup_json()
    assert second["blobs_stored"] == 0 and second["bytes_stored"] == 0
    assert second["files_unchanged"] == 51 and second["bytes_read"] == 0


def test_page_rewrites_store_at_most_twice_the_changed_bytes(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    size = 256 << 20
    write_random(src / "db", size, 2)
    env.add_set("s", src)
    env.backup_json()
    rnd = random.Random(3)
    pages = rnd.sample(range(size // PAGE), size // PAGE // 100)
    with open(src / "db", "r+b") as f:
        for p in pages:
            f.seek(p * PAGE)
            f.write(rnd.randbytes(PAGE))
    changed = len(pages) * PAGE
    report = env.backup_json()
    data_stored = report["bytes_stored"] - report["signature_bytes_stored"]
    assert report["files_changed"] == 1
    assert data_stored <= 2 * changed, (data_stored, changed)
    full_signature = size // 4096 * 20
    assert report["signature_bytes_stored"] < full_signature // 4, report   # only changed record groups
    env.ironcore("restore", "s", "--to", tmp_path / "out")
    assert_same_tree(src, env.restored(tmp_path / "out", src))


def test_insert_at_start_stores_under_one_mib(env, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    write_random(src / "f", 64 << 20, 4)
    env.add_set("s", src)
    env.backup_json()
    data = (src / "f").read_bytes()
    (src / "f").write_bytes(os.urandom(100) + data)
    report = env.backup_json()
    assert report["bytes_stored"] < 1 << 20, report
    env.ironcore("restore", "s", "--to", tmp_path / "out")
    assert_same_tree(src, env.restored(tmp_path / "out", src))


def test_renamed_folder_stores_no_file_data(env, tmp_path):
    src = tmp_path / "src"
    (src / "before").mkdir(parents=True)
    for i in range(200):
        (src / "before" / f"file{i:03}").write_bytes(os.urandom(2000 + i))
    env.add_set("s", src)
    env.backup_json()
    os.rename(src / "before", src / "after")
    report = env.backup_json()
    assert report["blobs_stored"] == 0, report
    assert report["deleted"] == 201
    env.ironcore("restore", "s", "--to", tmp_path / "out")
    assert_same_tree(src, env.restored(tmp_path / "out", src))


@pytest.mark.parametrize("how", ["copy", "rename-file-with-new-ctime"])
def test_identical_content_anywhere_is_stored_once(env, tmp_path, how):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    write_random(src / "a" / "big", 5 << 20, 5)
    env.add_set("s", src)
    first = env.backup_json()
    (src / "b").mkdir()
    if how == "copy":
        (src / "b" / "copy").write_bytes((src / "a" / "big").read_bytes())
    else:
        os.rename(src / "a" / "big", src / "b" / "moved")
    report = env.backup_json()
    assert report["bytes_stored"] - report["signature_bytes_stored"] == 0, (first, report)


def test_lost_file_cache_is_rebuilt_from_the_volume(env, tmp_path):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(30):
        (src / "d" / f"f{i}").write_bytes(os.urandom(3000 * i))
    write_random(src / "big", 20 << 20, 6)
    env.add_set("s", src)
    env.backup_json()
    shutil.rmtree(env.home / "cache")
    report = env.backup_json()
    # every file is read again (no inode or ctime is known), but nothing is stored again
    assert report["bytes_read"] > 20 << 20
    assert report["blobs_stored"] == 0, report
    assert report["files_changed"] == 31 and report["deleted"] == 0
    again = env.backup_json()
    assert again["bytes_read"] == 0 and again["files_unchanged"] == 31
