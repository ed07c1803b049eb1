"""Variant expansion and prompt files (txt, CSV, JSON Lines), pure."""

import pytest

from farm.errors import InputError
from farm.jobs.spec import JobRequest
from farm.jobs.variants import PromptRow, detect_format, expand, read_prompt_file


def test_variants_get_consecutive_seeds():
    out = expand([PromptRow(JobRequest(prompt="p"))], JobRequest(), 8, 100)
    assert [r.seed for _, r, _ in out] == list(range(100, 108))


def test_each_prompt_gets_the_same_seeds_and_rows_override_defaults():
    rows = read_prompt_file("p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "seed": 7, "variants": 2, "steps": 6}\n')
    out = [r for _, r, _ in expand(rows, JobRequest(steps=4), 3, 100)]
    assert [(r.prompt, r.seed, r.steps) for r in out] == [
        ("a", 100, 4), ("a", 101, 4), ("a", 102, 4), ("b", 7, 6), ("b", 8, 6)]


def test_seeds_may_not_run_past_the_limit():
    with pytest.raises(InputError, match="^seed: "):
        expand([PromptRow(JobRequest(prompt="p"))], JobRequest(), 10, 2**32 - 5)


@pytest.mark.parametrize("variants", [0, -1, 10_001, "many"])
def test_variants_bounds(variants):
    with pytest.raises(InputError, match="^variants: "):
        expand([PromptRow(JobRequest(prompt="p"))], JobRequest(), variants, 0)


def test_text_file_skips_blank_and_comment_lines():
    rows = read_prompt_file("prompts.txt", "# header\na cat\n\n  a dog  \n")
    assert [r.request.prompt for r in rows] == ["a cat", "a dog"]
    assert rows[1].where == "prompts.txt:4"


def test_csv_with_overrides():
    text = "prompt,seed,steps,size,adapters,negative\na cat,5,6,64x64,tiny-sd-toy:0.5,blurry\na dog,,,,,\n"
    rows = read_prompt_file("p.csv", text)
    cat, dog = (r.request for r in rows)
    assert (cat.prompt, cat.seed, cat.steps, cat.width, cat.height) == ("a cat", "5", "6", 64, 64)
    assert cat.adapters == ("tiny-sd-toy:0.5",) and cat.negative_prompt == "blurry"
    assert dog.seed is None and dog.steps is None


def test_jsonl_accepts_plain_strings_and_adapter_lists():
    rows = read_prompt_file("p.jsonl", '"just a prompt"\n{"prompt": "x", "adapters": [["tiny-sd-toy", 0.8]]}\n')
    assert rows[0].request.prompt == "just a prompt"
    assert rows[1].request.adapters == (("tiny-sd-toy", 0.8),)


@pytest.mark.parametrize("name, text, words", [
    ("p.txt", "", "holds no prompts"),
    ("p.txt", "# only comments\n\n", "holds no prompts"),
    ("p.csv", "text\nhello\n", "'prompt' column"),
    ("p.csv", "", "'prompt' column"),
    ("p.csv", "prompt,seed\na,1,extra\n", "p.csv:2: more values"),
    ("p.csv", "prompt,colour\na,red\n", "p.csv:2: unknown field 'colour'"),
    ("p.csv", "prompt,size\na,big\n", "p.csv:2: size:"),
    ("p.csv", "prompt,variants\na,0\n", "p.csv:2: variants:"),
    ("p.csv", "prompt,seed\n,5\n", "p.csv:2: prompt: missing"),
    ("p.jsonl", "{not json}\n", "p.jsonl:1: invalid JSON"),
    ("p.jsonl", "[1, 2]\n", "p.jsonl:1: expected a JSON object"),
    ("p.jsonl", '{"prompt": "a"}\n{"steps": 4}\n', "p.jsonl:2: prompt: missing"),
    ("p.jsonl", '{"prompt": "a", "sedd": 4}\n', "p.jsonl:1: unknown field 'sedd'"),
])
def test_bad_files_name_the_problem(name, text, words):
    with pytest.raises(InputError) as info:
        read_prompt_file(name, text)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_unknown_extension():
    with pytest.raises(InputError, match="unknown format"):
        detect_format("prompts.xlsx")
    assert detect_format("prompts") == "txt" and detect_format("a.NDJSON") == "jsonl"


def test_a_carriage_return_in_a_csv_header_is_bad_input_not_a_crash():
    """Found by the fuzzer: the csv module raised while reading the header."""
    with pytest.raises(InputError, match="^file: p.csv: "):
        read_prompt_file("p.csv", "\r0")
