"""Sweep expansion and wildcards, pure: zip vs product, ranges, determinism, error messages."""

import random

import pytest

from farm.errors import InputError
from farm.jobs.plan import plan
from farm.jobs.spec import Catalog, JobRequest
from farm.jobs.sweep import Sweep, axis_values, group, load_spec
from farm.jobs.variants import PromptRow
from farm.jobs.wildcards import expand_wildcards, parse_list_file


def expand(sweep, prompt="a fox", variants=1, **defaults):
    return plan([PromptRow(JobRequest(prompt=prompt))], JobRequest(**defaults), variants=variants, seed=100,
                catalog=Catalog(), default_model="tiny-sd", rng=random.Random(0), sweep=sweep)


def test_separate_axes_are_crossed_last_fastest():
    p = expand(Sweep((group({"steps": "1-3"}), group({"seeds": "0,1"}))))
    assert [(s.steps, s.seed) for s in p.specs] == [(1, 0), (1, 1), (2, 0), (2, 1), (3, 0), (3, 1)]
    assert p.axes[1] == {"steps": 1, "seed": 1}


def test_axes_in_one_group_are_zipped():
    p = expand(Sweep((group({"guidance": [1.0, 1.5], "size": ["64x64", "96x64"]}),)), variants=2)
    assert [(s.guidance, s.width, s.seed) for s in p.specs] == [(1.0, 64, 100), (1.0, 64, 101), (1.5, 96, 100),
                                                               (1.5, 96, 101)]
    assert p.axes[2] == {"guidance": 1.5, "size": "96x64", "seed": 100}


def test_adapter_weight_axis_and_determinism():
    sweep = Sweep((group({"adapter:tiny-sd-toy": "0.2,0.5,0.8"}),))
    a, b = expand(sweep), expand(sweep)
    assert [s.adapters[1].weight for s in a.specs] == [0.2, 0.5, 0.8]
    assert [s.digest for s in a.specs] == [s.digest for s in b.specs]


@pytest.mark.parametrize("field, raw, expected", [
    ("steps", "1-8", tuple(range(1, 9))), ("seed", "0-3", (0, 1, 2, 3)), ("seed", "5", (5,)),
    ("guidance", "1,1.5,2", (1.0, 1.5, 2.0)), ("steps", [2, 4], (2, 4)), ("size", "64x64,96x96", ((64, 64), (96, 96))),
    ("prompt", "a, b", ("a, b",)),
])
def test_axis_values(field, raw, expected):
    assert axis_values(field, raw) == expected


@pytest.mark.parametrize("make, words", [
    (lambda: group({"steps": [1, 2], "seed": [1, 2, 3]}), "equal lengths (steps:2, seed:3)"),
    (lambda: group({"steps": "8-1"}), "runs backwards"),
    (lambda: group({"steps": "1-x"}), "steps: expected an integer"),
    (lambda: group({"colour": [1]}), "cannot sweep 'colour'"),
    (lambda: group({"guidance": "a,b"}), "guidance: expected a number"),
    (lambda: group({"steps": ""}), "steps: no values"),
    (lambda: Sweep((group({"steps": "1-2"}),)).crossed(Sweep((group({"steps": "3-4"}),))), "swept twice"),
    (lambda: Sweep((group({"seed": "0-999"}), group({"steps": "0-199"}))).cells(), "the limit is 100000"),
    (lambda: expand(Sweep((group({"seeds": "0-3"}),)), variants=2), "not both"),
    (lambda: expand(Sweep((group({"steps": "1-9"}),))), "steps: 9 is outside 1..8"),
])
def test_malformed_sweeps_say_why(make, words):
    with pytest.raises(InputError) as info:
        make()
    assert words in str(info.value) and "\n" not in str(info.value)


def test_spec_files():
    spec = load_spec("s.yaml", "prompt: a fox\nmodel: tiny-sd\nseeds: 0-3\nsteps: [2, 4]\n"
                               "axes:\n  - {guidance: [1.0, 1.5], size: [64x64, 96x96]}\nnegative: fog\n")
    assert spec.prompts == ["a fox"] and spec.base == {"model": "tiny-sd", "negative_prompt": "fog"}
    assert spec.sweep.summary() == "seed:4 x steps:2 x (guidance:2 | size:2)"
    assert len(spec.sweep.cells()) == 16
    same = load_spec("s.json", '{"prompts": ["a fox"], "model": "tiny-sd", "seeds": "0-3", "steps": [2, 4], '
                               '"axes": [{"guidance": [1.0, 1.5], "size": ["64x64", "96x96"]}], "negative": "fog"}')
    assert same.sweep.cells() == spec.sweep.cells()


@pytest.mark.parametrize("name, text, words", [
    ("s.yaml", "prompt: [unclosed\n", "invalid YAML"),
    ("s.json", "{", "invalid JSON"),
    ("s.toml", "", ".yaml, .yml or .json"),
    ("s.yaml", "- a\n- b\n", "mapping at the top level"),
    ("s.yaml", "model: tiny-sd\n", "has no prompt"),
    ("s.yaml", "prompt: x\ncolour: red\n", "unknown field 'colour'"),
    ("s.yaml", "prompt: x\naxes: {steps: [1]}\n", "list of groups"),
    ("s.yaml", "prompt: x\nwildcards: {mode: random, sead: 1}\n", "unknown setting 'sead'"),
])
def test_bad_spec_files(name, text, words):
    with pytest.raises(InputError, match=words):
        load_spec(name, text)


def test_wildcards_combinatorial_and_random():
    lists = {"animal": ["fox", "hare"]}
    assert expand_wildcards("a {red|grey} __animal__ in snow", lists) == [
        "a red fox in snow", "a red hare in snow", "a grey fox in snow", "a grey hare in snow"]
    assert expand_wildcards("plain {braces} stay", {}) == ["plain {braces} stay"]
    picks = expand_wildcards("a {red|grey|white} __animal__", lists, mode="random", count=5, seed=7)
    assert picks == expand_wildcards("a {red|grey|white} __animal__", lists, mode="random", count=5, seed=7)
    assert len(picks) == 5 and all(p.split()[1] in ("red", "grey", "white") for p in picks)
    assert picks != expand_wildcards("a {red|grey|white} __animal__", lists, mode="random", count=5, seed=8)
    with pytest.raises(InputError, match="__plant__ has no list"):
        expand_wildcards("a __plant__", lists)
    with pytest.raises(InputError, match="is empty"):
        parse_list_file("empty", "# nothing\n\n")
