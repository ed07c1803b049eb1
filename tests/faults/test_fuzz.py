"""Property-based fuzzing of specs, prompt files and sweep specs: a clear one-line error or a valid
batch, never a traceback or a half-written ledger."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from farm.errors import InputError
from farm.jobs.plan import plan
from farm.jobs.spec import Catalog, JobRequest
from farm.jobs.sweep import load_spec
from farm.jobs.variants import read_prompt_file

pytestmark = pytest.mark.slow

scalars = st.one_of(st.none(), st.booleans(), st.integers(-10, 10**12), st.floats(allow_nan=True),
                    st.text(max_size=30), st.sampled_from(["tiny-sd", "tiny-sdxl", "lcm-lora", "plain", "64x64",
                                                           "1-8", "0,1", "tiny-sd-toy:0.5", "nan", "-1"]))
fields = st.sampled_from(["prompt", "negative_prompt", "seed", "steps", "guidance", "width", "height", "model",
                          "recipe", "adapters", "size", "variants", "seeds", "axes", "wildcards", "bogus",
                          "adapter:tiny-sd-toy", "prompts"])


def one_line_error(exc: InputError) -> None:
    message = str(exc)
    assert message and "\n" not in message and len(message) < 2000


def try_plan(rows, defaults=JobRequest(), variants=1, sweep=None):
    kwargs = {"sweep": sweep} if sweep is not None else {}
    try:
        planned = plan(rows, defaults, variants=variants, seed=None, catalog=Catalog(), default_model="tiny-sd",
                       rng=random.Random(0), **kwargs)
    except InputError as exc:
        one_line_error(exc)
        return None
    assert planned.specs and len(planned.specs) == len(planned.axes)
    for spec in planned.specs:  # what validation let through is within bounds
        assert 64 <= spec.width <= 2048 and spec.width % 8 == 0 and 0 <= spec.seed < 2**32
    return planned


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["prompt", "negative_prompt", "seed", "steps", "guidance", "width",
                                        "height", "model", "recipe", "adapters"]), scalars, max_size=10),
       st.integers(-3, 20))
def test_job_fields(values, variants):
    from farm.jobs.variants import PromptRow

    try:
        request = JobRequest(**values)
    except TypeError:
        return
    try_plan([PromptRow(request)], variants=variants)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["p.txt", "p.csv", "p.jsonl", "p", "p.xlsx"]),
       st.one_of(st.text(max_size=300),
                 st.lists(st.dictionaries(fields, scalars, max_size=6), max_size=5).map(
                     lambda rows: "\n".join(json.dumps(r, default=str) for r in rows)),
                 st.lists(st.lists(st.text(max_size=10), max_size=4), max_size=5).map(
                     lambda rows: "prompt,seed,steps,size\n" + "\n".join(",".join(r) for r in rows))))
def test_prompt_files(name, text):
    try:
        rows = read_prompt_file(name, text)
    except InputError as exc:
        one_line_error(exc)
        return
    try_plan(rows)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(["s.yaml", "s.json"]),
       st.dictionaries(fields, st.one_of(scalars, st.lists(scalars, max_size=4),
                                         st.lists(st.dictionaries(fields, st.lists(scalars, max_size=3), max_size=3),
                                                  max_size=3)), max_size=6))
def test_sweep_specs(name, data):
    import yaml

    text = yaml.safe_dump(data) if name.endswith(".yaml") else json.dumps(data, default=str)
    try:
        spec = load_spec(name, text)
    except InputError as exc:
        one_line_error(exc)
        return
    from farm.jobs.variants import PromptRow

    try_plan([PromptRow(JobRequest(prompt=p)) for p in spec.prompts], sweep=spec.sweep)


def test_bad_input_never_half_writes_the_ledger(tmp_path, monkeypatch, redis_server):
    """Through the CLI: random argument lists either submit a batch or leave the ledger as it was."""
    from click.testing import CliRunner
    from sqlalchemy import create_engine, text

    from farm.cli import cli

    monkeypatch.setenv("FARM_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("FARM_BROKER_URL", redis_server.url)
    monkeypatch.setenv("FARM_QUEUE", "fuzz")
    runner = CliRunner()
    assert runner.invoke(cli, ["submit", "seed batch", "--json"]).exit_code == 0
    engine = create_engine(f"sqlite:///{tmp_path / 'home' / 'ledger.db'}")

    def rows():
        with engine.connect() as conn:
            return tuple(conn.execute(text(f"select count(*) from {t}")).scalar() for t in ("batches", "jobs"))

    options = ["--steps", "--guidance", "--size", "--seed", "--seeds", "--variants", "--model", "--recipe",
               "--adapter", "--negative", "--priority", "--key"]
    values = ["1-8", "0", "-1", "9", "64x64", "100x100", "nan", "tiny-sd", "lightning", "tiny-sd-toy:0.5",
              "x" * 3000, "", "1,2,3", "4294967295", "7.5", "a b"]
    rng = random.Random(1234)
    for _ in range(120):
        args = ["submit", rng.choice(["a fox", "", "  ", "\x01bad"])]
        for _ in range(rng.randint(0, 4)):
            args += [rng.choice(options), rng.choice(values)]
        before = rows()
        result = runner.invoke(cli, args)
        assert "Traceback" not in (result.stdout + result.stderr)
        if result.exit_code == 0:
            assert rows()[0] == before[0] + 1
        else:
            assert result.exit_code == 2, (args, result.stderr)
            assert len(result.stderr.strip().splitlines()) == 1
            assert rows() == before
    engine.dispose()
