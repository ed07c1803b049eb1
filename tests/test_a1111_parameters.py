"""The hashes image sites link files by, in A1111's format: read back by a parser written from
A1111's own (tests/a1111.py)."""

from farm.jobs.spec import Catalog, JobRequest, resolve_job
from farm.models.catalog import AdapterEntry, EmbeddingEntry, ModelEntry
from farm.results.metadata import a1111_parameters, job_record, resource_hashes
from tests.a1111 import hash_list, parse

MODEL = ModelEntry("my-sd", "/m/model.safetensors", "sd15", "tiny-sd", 64, sha256="1" * 10 + "f" * 54,
                   builtin=False, layout="single-file")
KOHYA = AdapterEntry("toy-kohya", "/l/toy.safetensors", "tiny-sd", "style", sha256="2" * 64, layout="kohya",
                     addnet_sha256="3" * 12 + "e" * 52, builtin=False)
TI = EmbeddingEntry("easyneg", "/e/easyneg.safetensors", "tiny-sd", "EasyNeg", 2, "4" * 12 + "d" * 52, builtin=False)
CATALOG = Catalog(models={"my-sd": MODEL, "tiny-sd": Catalog().models["tiny-sd"]},
                  adapters={**Catalog().adapters, "toy-kohya": KOHYA}, embeddings={"easyneg": TI})


def record(**fields):
    spec = resolve_job(JobRequest(seed=7, **fields), CATALOG, "tiny-sd")
    return job_record(spec, job_id=3, batch="b", index=0, worker="w", device="cpu", versions={},
                      hashes=resource_hashes(spec, CATALOG))


def test_model_lora_and_ti_hashes_parse_as_a1111_reads_them():
    job = record(prompt="a fox, in snow, EasyNeg", negative_prompt="blurry", model="my-sd",
                 adapters=["toy-kohya:0.8"], guidance=1.5)
    text = a1111_parameters(job)
    read = parse(text)
    assert read["Prompt"] == "a fox, in snow, EasyNeg <lora:tiny-sd-lcm-lora:1> <lora:toy-kohya:0.8>"
    assert read["Negative prompt"] == "blurry"
    assert (read["Steps"], read["Seed"], read["Size"]) == ("4", "7", "64x64")
    assert read["Model hash"] == "1111111111" and read["Model"] == "my-sd"
    assert hash_list(read["Lora hashes"]) == {"toy-kohya": "333333333333"}  # only LoRAs whose file is known
    assert hash_list(read["TI hashes"]) == {"EasyNeg": "444444444444"}  # by the word the prompt uses
    assert hash_list(read["Lora weights"])["toy-kohya"] == "0.8"
    last = text.splitlines()[-1]
    # A1111's order: Model hash right before Model, the hash lists among the extras after it
    assert last.index("Size: ") < last.index("Model hash: ") < last.index("Model: ") < last.index("Lora hashes: ")
    assert last.index("Lora hashes: ") < last.index("TI hashes: ")
    assert 'Lora hashes: "toy-kohya: 333333333333"' in last and 'TI hashes: "EasyNeg: 444444444444"' in last
    # the full sha256s are in the JSON record
    assert job["hashes"] == {"model": MODEL.sha256, "loras": {"toy-kohya": KOHYA.addnet_sha256},
                             "embeddings": {"EasyNeg": TI.sha256}}


def test_no_hash_where_none_is_known():
    # a built-in diffusers directory has no single file A1111 would hash; built-in LoRAs no file
    job = record(prompt="a fox", adapters=["tiny-sd-toy:0.5"])
    text = a1111_parameters(job)
    assert "hash" not in text and "hashes" not in job
    assert parse(text)["Model"] == "tiny-sd"


def test_values_with_commas_and_colons_are_quoted():
    job = record(prompt="x", model="my-sd")
    job["model_revision"] = "refs/pr/1: a, b"
    read = parse(a1111_parameters(job))
    assert read["Model revision"] == "refs/pr/1: a, b" and read["Model"] == "my-sd" and read["Recipe"] == "lcm-lora"
