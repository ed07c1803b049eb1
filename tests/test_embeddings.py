"""Textual-inversion embeddings without torch (farm.models.embeddings): which a prompt uses, how the worker
respells prompts, the job field and its digest, and files refused at add naming the file."""

import re

import pytest

from farm.errors import InputError
from farm.jobs.spec import Catalog, JobRequest, resolve_job
from farm.models.catalog import EmbeddingEntry
from farm.models.embeddings import check_token, inspect_embedding, respell, tokens_in, used_embeddings
from tests.usersfiles import header_file

SD = EmbeddingEntry("easyneg", "/e/easyneg.safetensors", "tiny-sd", "easyneg", 2, "a" * 64, builtin=False)
XL = EmbeddingEntry("easyneg-xl", "/e/xl.safetensors", "tiny-sdxl", "easyneg", 2, "b" * 64, builtin=False)
STYLE = EmbeddingEntry("style-v2", "/e/s.safetensors", "tiny-sd", "Style-v2", 1, "c" * 64, builtin=False)
SHORT = EmbeddingEntry("style", "/e/t.safetensors", "tiny-sd", "style", 1, "d" * 64, builtin=False)
CATALOG = Catalog(embeddings={e.name: e for e in (SD, XL, STYLE, SHORT)})


def test_tokens_are_words_matched_as_a1111_s_tokenizer_sees_them():
    tokens = ["easyneg", "style", "style-v2"]
    assert tokens_in("a fox, EasyNeg, (style-v2:1.2)", tokens) == ["easyneg", "style-v2"]  # longest first
    assert tokens_in("easynegative, stylesheet, my_style", tokens) == []  # not inside a longer word
    assert tokens_in("style. style-v2 style", tokens) == ["style", "style-v2"]
    assert respell("Style-v2 and style, easyneg", {"style": "<s>", "style-v2": "<v2>"}) == "<v2> and <s>, easyneg"
    assert respell("", {"x": "y"}) == "" and respell("a b", {}) == "a b"


def test_a_submission_records_the_embeddings_its_prompts_use():
    def spec(**fields):
        return resolve_job(JobRequest(seed=1, **{"prompt": "a fox", **fields}), CATALOG, "tiny-sd")

    plain = spec()
    assert plain.embeddings == () and plain.warnings == ()
    used = spec(prompt="a fox, style-v2", negative_prompt="blurry, EASYNEG", guidance=1.5)
    assert used.embeddings == ("easyneg", "style-v2")  # sorted names; the negative prompt counts
    assert used.digest != spec(negative_prompt="blurry", guidance=1.5).digest  # part of the digest when used
    assert spec(model="tiny-sdxl", prompt="a fox easyneg").embeddings == ("easyneg-xl",)  # the model's arch
    assert used.group_key == spec(prompt="another fox", guidance=1.5).group_key  # one pipeline call for both
    # an embedding for other models only: read as words, and said so
    other = resolve_job(JobRequest(prompt="a fox easyneg", seed=1, model="tiny-sd"),
                        Catalog(embeddings={"easyneg-xl": XL}), "tiny-sd")
    assert other.embeddings == () and "easyneg-xl (tiny-sdxl)" in other.warnings[0]


def test_the_digest_of_a_job_without_embeddings_is_what_it_was():
    from farm.ledger.mapping import spec_from_row

    spec = resolve_job(JobRequest(prompt="a fox", seed=1), CATALOG, "tiny-sd")
    assert spec.embeddings == ()
    # a ledger row gives a list (or NULL on rows from before the column): the same spec, the same digest
    row = {**{k: getattr(spec, k) for k in spec.__dataclass_fields__ if k != "warnings"},
           "adapters": spec.adapter_dicts(), "embeddings": None}

    class Row:
        _mapping = row

    assert spec_from_row(Row()).digest == spec.digest
    row["embeddings"] = ["easyneg"]
    assert spec_from_row(Row()).embeddings == ("easyneg",)


@pytest.mark.parametrize("arch,tensors", [
    ("sd15", {"emb_params": (3, 768)}),
    ("sd15", {"string_to_param.*": (768,)}),
    ("sdxl", {"clip_l": (2, 768), "clip_g": (2, 1280)}),
    ("tiny-sdxl", {"clip_l": (4, 32), "clip_g": (4, 64)}),
])
def test_a1111_embeddings_of_the_arch_are_accepted(tmp_path, arch, tensors):
    found = inspect_embedding(header_file(tmp_path / "e.safetensors", tensors), arch)
    assert found.vectors == max(shape[0] if len(shape) == 2 else 1 for shape in tensors.values())
    assert len(found.sha256) == 64


@pytest.mark.parametrize("arch,tensors,words", [
    ("sd15", {"emb_params": (2, 1024)}, "vectors are 1024 wide; the sd15 text encoder it is for takes 768"),
    ("sd15", {"clip_l": (2, 768), "clip_g": (2, 1280)}, "an SDXL embedding (clip_l, clip_g); sd15 has one text encoder"),
    ("sdxl", {"emb_params": (2, 768)}, "a one-encoder embedding (768 wide); sdxl embeddings hold clip_l [n, 768]"),
    ("sdxl", {"clip_l": (2, 1280), "clip_g": (2, 768)}, "clip_l vectors are 1280 wide"),
    ("sdxl", {"clip_l": (2, 768), "clip_g": (3, 1280)}, "different numbers of vectors"),
    ("tiny-sd", {"emb_params": (2, 64)}, "vectors are 64 wide"),
    ("tiny-sd", {"a": (2, 32), "b": (2, 32)}, "holds 2 tensors"),
    ("tiny-sd", {"emb_params": (2, 4, 32)}, "an embedding is [n_vectors, width]"),
    ("tiny-sd", {"emb_params": (80, 32)}, "holds 80 vectors; 1..75 fit"),
])
def test_an_embedding_that_fits_no_encoder_is_refused_naming_the_file(tmp_path, arch, tensors, words):
    path = header_file(tmp_path / "e.safetensors", tensors)
    with pytest.raises(InputError, match=f"^source: {re.escape(str(path))}: .*{re.escape(words)}"):
        inspect_embedding(path, arch)


def test_integer_tensors_and_pickles_are_refused(tmp_path):
    with pytest.raises(InputError, match="holds I64 values"):
        inspect_embedding(header_file(tmp_path / "i.safetensors", {"emb_params": (2, 32)}, dtype="I64"), "tiny-sd")
    pt = tmp_path / "embedding.safetensors"
    pt.write_bytes(b"PK\x03\x04 a torch.save zip")
    with pytest.raises(InputError, match="zip archive"):
        inspect_embedding(pt, "tiny-sd")


def test_tokens():
    assert check_token("EasyNegative") == "EasyNegative"
    for bad in ("", "two words", "<tag>", "a:b", "x" * 65):
        with pytest.raises(InputError, match="not a valid token"):
            check_token(bad)


def test_used_embeddings_warns_once_per_token():
    names, warnings = used_embeddings(["easyneg easyneg", "easyneg"], {"easyneg-xl": XL}, "tiny-sd")
    assert names == () and len(warnings) == 1
