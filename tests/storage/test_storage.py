"""Local and S3 (moto's HTTP server) stores: put/get, deterministic keys, unsafe keys refused."""

import pytest

from farm.errors import InputError, NotFound
from farm.storage import artifact_key, check_key, open_store


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    if request.param == "file":
        return open_store((tmp_path / "store").as_uri())
    server = request.getfixturevalue("s3_server")
    bucket = request.getfixturevalue("s3_bucket")
    return open_store(f"s3://{bucket}/renders", s3_endpoint_url=server.endpoint)


def test_put_get_overwrite(store):
    key = artifact_key("abc123", 3, 100)
    assert key == "batches/abc123/00003-100.png"
    assert not store.exists(key)
    store.put(key, b"first", "image/png", {"sha256": "x"})
    store.put(key, b"second", "image/png")  # a re-run overwrites, never duplicates
    assert store.exists(key) and store.get(key) == b"second"
    with pytest.raises(NotFound):
        store.get("batches/abc123/missing.png")


def test_s3_objects_land_under_the_prefix(s3_server, s3_bucket):
    store = open_store(f"s3://{s3_bucket}/renders", s3_endpoint_url=s3_server.endpoint)
    store.put("batches/b/00000-1.png", b"png", "image/png")
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(Bucket=s3_bucket)["Contents"]]
    assert keys == ["renders/batches/b/00000-1.png"]


@pytest.mark.parametrize("key", ["../etc/passwd", "/abs/path", "a//b", "a/./b", "a/../b", "", "sp ace", "a\\b"])
def test_unsafe_keys_are_refused(key):
    with pytest.raises(InputError):
        check_key(key)


def test_local_store_stays_inside_its_root(tmp_path):
    store = open_store((tmp_path / "store").as_uri())
    with pytest.raises(InputError):
        store.put("../outside.png", b"x", "image/png")
    assert not (tmp_path / "outside.png").exists()


def test_put_file_streams_the_same_object_as_put(store, tmp_path):
    source = tmp_path / "weights.safetensors"
    source.write_bytes(bytes(range(256)) * 40_000)  # 10 MB, past boto3's multipart threshold (8 MB)
    store.put_file("registry/a/w.safetensors", source, "application/octet-stream", metadata={"sha256": "x"})
    assert store.get("registry/a/w.safetensors") == source.read_bytes()
    store.put_file("registry/a/w.safetensors", source, "application/octet-stream")  # overwrite in place
    assert store.exists("registry/a/w.safetensors")
