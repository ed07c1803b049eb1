"""Textual-inversion embeddings in a resident pipeline.

Each embedding a micro-batch uses is loaded once per pipeline with diffusers'
``load_textual_inversion`` (SDXL: its ``clip_l`` vectors into the first tokenizer and text
encoder, its ``clip_g`` vectors into the second), under a private token (farm.models.embeddings): the
prompts are respelt with it before they are encoded. A prompt that uses no embedding is tokenized
as it always was, whatever the pipeline loaded before, so its pixels do not depend on history.
Loading happens outside inference mode: the text encoders' embedding tables are resized in place.
"""

from __future__ import annotations

from engine import offload as offloading
from farm.errors import InputError
from farm.models.catalog import EmbeddingEntry
from farm.models.embeddings import XL_KEYS, private_token, respell


def _entry(runner, name: str) -> EmbeddingEntry:
    entry = runner.catalog.embeddings.get(name)
    if entry is None:
        runner.catalog = runner._load_catalog()  # registered after this worker read the catalog
        entry = runner.catalog.embeddings.get(name)
    if entry is None:
        raise InputError("embedding", f"unknown embedding {name!r} (removed since the job was submitted?)")
    return entry


def _load(runner, pipe, entry: EmbeddingEntry, token: str) -> None:
    from safetensors.torch import load_file

    location = runner._resolve(entry)
    tensors = load_file(location.path)
    encoders = [("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")]
    if getattr(pipe, "text_encoder_2", None) is not None:
        parts = [(tensors[key], encoder, tokenizer) for key, (encoder, tokenizer) in zip(XL_KEYS, encoders)]
    else:
        [vectors] = tensors.values()  # farm.models.embeddings checked the file at add: one tensor
        parts = [(vectors, *encoders[0])]
    for vectors, encoder, tokenizer in parts:
        pipe.load_textual_inversion(vectors.reshape(-1, vectors.shape[-1]), token=token,
                                    text_encoder=getattr(pipe, encoder), tokenizer=getattr(pipe, tokenizer))


def prepare(runner, pipe, jobs) -> list[tuple[str, str]]:
    """Load the embeddings ``jobs`` use into ``pipe`` (once each) and return every job's (prompt,
    negative prompt) spelt with the tokens the tokenizers learnt for them."""
    spelt: dict[str, str] = {}  # name -> private token
    tokens: dict[str, str] = {}  # name -> the word prompts use
    for name in sorted({n for job in jobs for n in job.embeddings}):
        entry = _entry(runner, name)
        private = private_token(entry)
        if private not in pipe.tokenizer.get_vocab():
            # offload hooks off while the text encoders' tables grow (as for an adapter change)
            with offloading.hooks_off(pipe, getattr(runner, "offload", "none"), runner.device):
                _load(runner, pipe, entry, private)
        spelt[name], tokens[name] = private, entry.token.lower()
    pairs = []
    for job in jobs:
        # only the job's own embeddings: one registered after it was submitted changes nothing
        spelling = {tokens[name]: spelt[name] for name in job.embeddings}
        pairs.append((respell(job.prompt, spelling), respell(job.negative_prompt or "", spelling)))
    return pairs
