"""The CLI contract: bad input of every kind ends with one line, exit status 2, and an unchanged
ledger and queue; good input prints what scripts rely on."""

import json

import pytest
from click.testing import CliRunner
from sqlalchemy import create_engine, text

from farm.cli import cli

GOOD = ["a lighthouse at dusk", "--model", "tiny-sd"]


@pytest.fixture
def farm(tmp_path, redis_server, monkeypatch, model_cache):
    """A farm home with a real Redis (no workers): one valid batch already submitted."""
    home = tmp_path / "home"
    env = {"FARM_HOME": str(home), "FARM_BROKER_URL": redis_server.url, "FARM_MODEL_CACHE": str(model_cache),
           "FARM_QUEUE": f"q{tmp_path.name[-12:].replace('_', '')}"}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    result = invoke(["submit", *GOOD, "--variants", "3", "--seed", "5", "--json"])
    assert result.exit_code == 0, result.stderr
    return {"home": home, "env": env, "batch": json.loads(result.stdout)["batch"], "redis": redis_server}


def invoke(args):
    return CliRunner().invoke(cli, args, catch_exceptions=False)


def snapshot(farm):
    engine = create_engine(f"sqlite:///{farm['home'] / 'ledger.db'}")
    with engine.connect() as conn:
        counts = tuple(conn.execute(text(f"select count(*) from {t}")).scalar()
                       for t in ("batches", "jobs", "attempts", "artifacts"))
    engine.dispose()
    queue = farm["env"]["FARM_QUEUE"]
    depth = sum(farm["redis"].client().llen(k) for k in farm["redis"].client().keys(f"{queue}*"))
    return counts, depth


def assert_one_line_error(result, status=2, words=None):
    assert result.exit_code == status, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    if words:
        assert words in lines[0], lines[0]


def write(tmp_path, name, content):
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


BAD_ARGS = [
    ([""], "prompt: must not be empty"),
    (["   "], "prompt: must not be empty"),
    ([], "prompt: missing"),
    ([*GOOD, "--variants", "0"], "variants: 0 is outside"),
    ([*GOOD, "--variants", "-3"], "variants"),
    ([*GOOD, "--variants", "many"], "'--variants'"),
    ([*GOOD, "--variants", "100001"], "variants"),
    ([*GOOD, "--seed", "-1"], "seed: -1 is outside"),
    ([*GOOD, "--seed", "4294967296"], "seed"),
    ([*GOOD, "--seed", "4294967295", "--variants", "2"], "seed: seeds"),
    ([*GOOD, "--seed", "abc"], "'--seed'"),
    ([*GOOD, "--steps", "0"], "steps: 0 is outside"),
    ([*GOOD, "--steps", "9"], "steps: 9 is outside 1..8 for the lcm-lora recipe"),
    ([*GOOD, "--steps", "four"], "steps: expected an integer"),
    ([*GOOD, "--guidance", "7"], "guidance: 7 is outside"),
    ([*GOOD, "--guidance", "nan"], "guidance"),
    ([*GOOD, "--guidance", "loud"], "guidance: expected a number"),
    ([*GOOD, "--size", "100x100"], "width: 100 is not a multiple of 8"),
    ([*GOOD, "--size", "64x63"], "height"),
    ([*GOOD, "--size", "4096x4096"], "width: 4096 is outside"),
    ([*GOOD, "--size", "big"], "size: expected WIDTHxHEIGHT"),
    ([*GOOD, "--size", "64x"], "size"),
    (["p", "--model", "no-such"], "model: unknown model 'no-such'"),
    (["p", "--model", "../../etc"], "model: '../../etc' is not a valid name"),
    ([*GOOD, "--recipe", "warp"], "recipe: unknown recipe 'warp'"),
    ([*GOOD, "--recipe", "lightning"], "recipe: lightning does not support the sd15 family"),
    ([*GOOD, "--adapter", "nope"], "adapter: unknown adapter 'nope'"),
    ([*GOOD, "--adapter", "tiny-sdxl-toy"], "adapter: tiny-sdxl-toy is for tiny-sdxl models"),
    ([*GOOD, "--adapter", "tiny-sd-toy:lots"], "adapter: expected a number"),
    ([*GOOD, "--adapter", "tiny-sd-toy:99"], "adapter: weight 99"),
    ([*GOOD, "--negative", "n" * 3000], "negative_prompt: is 3000 characters"),
    ([*GOOD, "--priority", "10"], "priority: 10 is outside 0..9"),
    ([*GOOD, "--priority", "-1"], "priority"),
    ([*GOOD, "--key", ""], "key: an idempotency key"),
    ([*GOOD, "--key", "has space"], "key"),
    ([*GOOD, "--bogus"], "No such option"),
    ([*GOOD, "--decoder", "blurry"], "'--decoder'"),
    (["a prompt", "--file", "x.txt"], "give one of a PROMPT, --file or --spec, not PROMPT and --file"),
]


@pytest.mark.parametrize("args, words", BAD_ARGS, ids=[" ".join(a)[-40:] or "empty" for a, _ in BAD_ARGS])
def test_bad_submit_arguments(farm, args, words):
    before = snapshot(farm)
    result = invoke(["submit", *args])
    assert_one_line_error(result, 2, words)
    assert snapshot(farm) == before


BAD_FILES = [
    ("missing.txt", None, "file: "),
    ("empty.txt", "", "holds no prompts"),
    ("nocol.csv", "text\nhello\n", "'prompt' column"),
    ("bad.csv", "prompt,steps\nok,4\nbad,99\n", "bad.csv:3: steps: 99 is outside"),
    ("badrow.csv", "prompt,seed\nok,1\nbad,-5\n", "badrow.csv:3: seed"),
    ("bad.jsonl", '{"prompt": "ok"}\n{"prompt": \n', "bad.jsonl:2: invalid JSON"),
    ("badfield.jsonl", '{"prompt": "ok", "model": "nope"}\n', "badfield.jsonl:1: model: unknown"),
    ("binary.txt", b"\xff\xfe\x00\x01", "not UTF-8"),
    ("prompts.xlsx", "whatever", "unknown format"),
    ("last-bad.txt", "ok\n" * 5 + "\x07bell\n", "last-bad.txt:6: prompt: contains control characters"),
]


@pytest.mark.parametrize("name, content, words", BAD_FILES, ids=[n for n, _, _ in BAD_FILES])
def test_bad_prompt_files(farm, tmp_path, name, content, words):
    path = str(tmp_path / name) if content is None else write(tmp_path, name, content)
    before = snapshot(farm)
    result = invoke(["submit", "--file", path, "--model", "tiny-sd"])
    assert_one_line_error(result, 2, words)
    assert snapshot(farm) == before


def test_a_directory_is_not_a_prompt_file(farm, tmp_path):
    assert_one_line_error(invoke(["submit", "--file", str(tmp_path)]), 2, "is a directory")


def test_good_files_of_each_format(farm, tmp_path):
    files = {
        "p.txt": "a cat\n# skip\na dog\n",
        "p.csv": "prompt,seed,steps\na cat,1,4\na dog,2,6\n",
        "p.jsonl": '{"prompt": "a cat", "variants": 2}\n"a dog"\n',
    }
    expected = {"p.txt": 4, "p.csv": 4, "p.jsonl": 4}
    for name, content in files.items():
        result = invoke(["submit", "--file", write(tmp_path, name, content), "--variants", "2", "--json",
                         "--model", "tiny-sd"])
        assert result.exit_code == 0, result.stderr
        assert json.loads(result.stdout)["jobs"] == expected[name]


def test_submit_json_and_idempotency_key(farm):
    first = json.loads(invoke(["submit", *GOOD, "--variants", "2", "--key", "nightly-42", "--json"]).stdout)
    before = snapshot(farm)
    again = invoke(["submit", *GOOD, "--variants", "2", "--key", "nightly-42", "--json"])
    assert json.loads(again.stdout)["batch"] == first["batch"] and first["jobs"] == 2
    assert snapshot(farm) == before  # nothing written, nothing enqueued twice
    assert_one_line_error(invoke(["submit", *GOOD, "--variants", "3", "--key", "nightly-42"]), 2,
                          "used for a different submission")


def test_random_base_seed_is_recorded(farm):
    out = json.loads(invoke(["submit", *GOOD, "--variants", "2", "--json"]).stdout)
    jobs = json.loads(invoke(["jobs", "list", "--batch", out["batch"], "--json"]).stdout)
    assert [j["seed"] for j in jobs] == [out["base_seed"], out["base_seed"] + 1]


def test_negative_prompt_with_cfg_off_is_accepted_with_a_warning(farm):
    result = invoke(["submit", *GOOD, "--negative", "blurry", "--json"])
    assert result.exit_code == 0
    assert "warning: negative prompt ignored" in result.stderr


def test_status_and_jobs_list(farm):
    status = json.loads(invoke(["status", farm["batch"], "--json"]).stdout)
    assert status["jobs"] == 3 and status["counts"]["queued"] == 3
    jobs = json.loads(invoke(["jobs", "list", "--batch", farm["batch"], "--json"]).stdout)
    assert [j["seed"] for j in jobs] == [5, 6, 7] and all(j["state"] == "queued" for j in jobs)
    assert "0/3 done (queued 3)" in invoke(["status", farm["batch"]]).stdout


@pytest.mark.parametrize("args, words", [
    (["status", "nope"], "no batch 'nope'"),
    (["jobs", "list", "--batch", "nope"], "no batch"),
    (["jobs", "list", "--state", "weird"], "'--state'"),
    (["results", "get", "nope", "--out", "x"], "no batch"),
    (["results", "get", "nope"], "--out"),
    (["frobnicate"], "No such command"),
    (["up", "--devices", "zero"], "devices: 'zero' is not a GPU index"),
    (["up", "--devices", "0,0"], "listed twice"),
    (["up", "--workers", "2", "--devices", "0"], "not both"),
])
def test_other_bad_commands(farm, args, words):
    before = snapshot(farm)
    assert_one_line_error(invoke(args), 2, words)
    assert snapshot(farm) == before


def test_bad_configuration_names_the_variable(farm, monkeypatch):
    monkeypatch.setenv("FARM_DATABASE_URL", "mysql://nope")
    assert_one_line_error(invoke(["status", farm["batch"]]), 2, "FARM_DATABASE_URL")
    monkeypatch.delenv("FARM_DATABASE_URL")
    monkeypatch.setenv("FARM_MICRO_BATCH", "0")
    assert_one_line_error(invoke(["submit", *GOOD]), 2, "FARM_MICRO_BATCH")


def test_run_with_bad_input_starts_nothing(tmp_path, monkeypatch):
    home = tmp_path / "fresh"
    monkeypatch.setenv("FARM_HOME", str(home))
    monkeypatch.delenv("FARM_BROKER_URL", raising=False)
    assert_one_line_error(invoke(["run", "p", "--steps", "99"]), 2, "steps")
    assert_one_line_error(invoke(["run", "p", "--devices", "x"]), 2, "devices")
    assert not (home / "run").exists() and not (home / "ledger.db").exists()


def test_recipes_list_json():
    recipes = json.loads(invoke(["recipes", "list", "--json"]).stdout)
    assert [r["name"] for r in recipes] == ["lcm-lora", "lcm", "turbo", "lightning", "hyper", "lcm-blend", "plain",
                                            "schnell", "sd35-turbo", "flux-hyper", "animatediff-lightning"]
    assert recipes[0]["steps"] == {"min": 1, "max": 8, "default": 4, "choices": None}
