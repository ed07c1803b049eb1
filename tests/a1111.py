"""A reader of A1111's ``parameters`` text, written from AUTOMATIC1111's
``modules/infotext_utils.py`` (``parse_generation_parameters``), to check that what the farm writes
parses as third-party tools read it: the lines before the last are the prompt and ``Negative
prompt: ...``; the last line is ``key: value`` pairs separated by commas (A1111 treats it as the
settings line only when it holds at least 3 pairs), where a value holding a comma, colon or newline
is a JSON string; ``Lora hashes`` / ``TI hashes`` are ``"name: hash, name: hash"``."""

from __future__ import annotations

import json
import re

RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')


def parse(text: str) -> dict:
    result: dict = {}
    *lines, last = text.strip().split("\n")
    if len(RE_PARAM.findall(last)) < 3:
        lines.append(last)
        last = ""
    prompt, negative, in_negative = [], [], False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative, line = True, line[len("Negative prompt:"):].strip()
        (negative if in_negative else prompt).append(line)
    result["Prompt"], result["Negative prompt"] = "\n".join(prompt), "\n".join(negative)
    for key, value in RE_PARAM.findall(last):
        if value[:1] == '"' and value[-1:] == '"':
            value = json.loads(value)
        result[key] = value
    return result


def hash_list(value: str) -> dict[str, str]:
    """``Lora hashes`` / ``TI hashes`` as A1111's pasting code splits them."""
    pairs = {}
    for item in value.split(","):
        name, _, short = item.partition(":")
        pairs[name.strip()] = short.strip()
    return pairs
