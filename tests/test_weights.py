"""Reading safetensors headers without torch, refusing what is not one, and A1111's hashes."""

import hashlib
import json
import struct

import pytest

from farm.errors import InputError
from farm.models.weights import a1111_model_hash, a1111_short_hash, addnet_sha256, read_header, sha256_file


def write_safetensors(path, tensors: dict, metadata: dict | None = None):
    """A valid file by the format's definition (float32 zeros): no torch needed."""
    header, data, offset = {}, b"", 0
    for name, shape in tensors.items():
        count = 1
        for d in shape:
            count *= d
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + 4 * count]}
        data += b"\0" * (4 * count)
        offset += 4 * count
    if metadata:
        header["__metadata__"] = metadata
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


def test_a_header_reads_back(tmp_path):
    path = write_safetensors(tmp_path / "a.safetensors", {"w": (2, 3), "b": (3,)}, {"ss_network_dim": "4"})
    header = read_header(path)
    assert header.tensors["w"].shape == (2, 3) and header.tensors["b"].dtype == "F32"
    assert header.metadata == {"ss_network_dim": "4"}
    assert header.data_start == 8 + struct.unpack("<Q", path.read_bytes()[:8])[0]


@pytest.mark.parametrize("content,words", [
    (b"PK\x03\x04rest of a zip", "zip archive"),
    (b"\x80\x02}q\x00.", "pickle"),
    (b"hello", "not a safetensors file"),
    (struct.pack("<Q", 10**6) + b"{}", "header length does not fit"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
    (struct.pack("<Q", 4) + b"\xff\xfe{}", "not JSON"),
])
def test_what_is_not_safetensors_is_refused_naming_the_file(tmp_path, content, words):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"^source: {path}: .*{words}"):
        read_header(path)


def test_a_truncated_file_is_refused(tmp_path):
    path = write_safetensors(tmp_path / "t.safetensors", {"w": (64, 64)})
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        read_header(path)


def test_hashes_as_a1111_writes_them(tmp_path):
    path = write_safetensors(tmp_path / "l.safetensors", {"w": (4, 4)}, {"note": "one"})
    whole = hashlib.sha256(path.read_bytes()).hexdigest()
    assert sha256_file(path) == whole and a1111_model_hash(whole) == whole[:10]
    tensors_only = addnet_sha256(path)
    assert tensors_only == hashlib.sha256(path.read_bytes()[read_header(path).data_start:]).hexdigest()
    assert len(a1111_short_hash(tensors_only)) == 12
    # the LoRA hash ignores metadata edits; the file hash does not
    other = write_safetensors(tmp_path / "m.safetensors", {"w": (4, 4)}, {"note": "two, longer"})
    assert addnet_sha256(other) == tensors_only and sha256_file(other) != whole


def test_a_diffusers_directory_config_is_read_or_refused_in_one_line(tmp_path):
    """ControlNet and motion-adapter directories are checked by one reader of config.json."""
    import json

    from farm.errors import InputError
    from farm.models import controlnets, motion
    from farm.models.weights import read_diffusers_config

    with pytest.raises(InputError, match="no config.json \\(a diffusers motion adapter directory has one\\)"):
        motion.inspect_directory(tmp_path, "tiny-sd")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InputError, match="config.json: unreadable"):
        controlnets.inspect_directory(tmp_path, "tiny-sd")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel"}))
    with pytest.raises(InputError, match="a UNet2DConditionModel, not a MotionAdapter"):
        motion.inspect_directory(tmp_path, "tiny-sd")
    with pytest.raises(InputError, match="a UNet2DConditionModel, not a ControlNetModel"):
        controlnets.inspect_directory(tmp_path, "tiny-sd")
    (tmp_path / "config.json").write_text(json.dumps({"cross_attention_dim": 32}))
    assert read_diffusers_config(tmp_path, "ControlNetModel", "ControlNet", class_required=False) == \
        {"cross_attention_dim": 32}
    with pytest.raises(InputError, match="a None, not a MotionAdapter"):
        read_diffusers_config(tmp_path, "MotionAdapter", "motion adapter")
