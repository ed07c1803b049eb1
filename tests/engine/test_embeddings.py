"""Textual-inversion embeddings through the runner: tiny embeddings (random vectors as wide as the
tiny text encoders) change the prompts that use their token and nothing else, work in the negative
prompt with guidance, and keep an image's pixels independent of its batch."""

import numpy as np
import pytest

from farm.jobs.spec import Catalog, JobRequest, resolve_job
from farm.models.catalog import EmbeddingEntry
from farm.models.embeddings import inspect_embedding
from farm.models.layers import encoder_widths
from tests.usersfiles import embedding_file

torch = pytest.importorskip("torch")

TOKENS = {"tiny-sd": "toystyle", "tiny-sdxl": "ToyStyleXL"}


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    root = tmp_path_factory.mktemp("embeddings")
    entries = {}
    for arch, token in TOKENS.items():
        path = embedding_file(root / f"{arch}.safetensors", list(encoder_widths(arch).values()), vectors=2, seed=4,
                              scale=2.0)
        found = inspect_embedding(path, arch)  # what `farm embeddings add` checks and records
        name = token.lower()
        entries[name] = EmbeddingEntry(name, str(path), arch, token, found.vectors, found.sha256, builtin=False)
    return Catalog(embeddings=entries)


@pytest.fixture(scope="module")
def runner(model_cache, catalog):
    from engine.runner import Runner

    return Runner(device="cpu", model_cache=model_cache, catalog=lambda: catalog)


def job(catalog, model, prompt, **fields):
    # 2 LCM steps, not the recipe's 4: an embedding changes the text conditioning every step uses,
    # and the per-image noise between steps (batch invariance) is drawn at 2 steps as at 4
    fields.setdefault("steps", 2)
    return resolve_job(JobRequest(prompt=prompt, seed=fields.pop("seed", 5), model=model, **fields), catalog, model)


def pixels(runner, *jobs):
    return runner.render(list(jobs)).pixels


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_a_prompt_with_the_token_renders_differently_and_others_do_not_change(model_cache, catalog, model):
    from engine.runner import Runner

    fresh = Runner(device="cpu", model_cache=model_cache, catalog=lambda: catalog)
    plain = job(catalog, model, "a red fox in snow")
    [before] = pixels(fresh, plain)  # nothing loaded yet
    styled = job(catalog, model, f"a red fox in snow, {TOKENS[model]}")
    assert styled.embeddings == (TOKENS[model].lower(),) and plain.embeddings == ()
    [with_token] = pixels(fresh, styled)
    assert not np.array_equal(with_token, before)
    [after] = pixels(fresh, plain)  # the embedding is loaded now: a prompt without its token is unchanged
    assert np.array_equal(after, before)
    [again] = pixels(fresh, styled)  # loaded once, the same pixels
    assert np.array_equal(again, with_token)
    pipe = fresh.resident[model].pipe
    assert sum("<ti-" in t for t in pipe.tokenizer.get_vocab()) == 2  # two vectors, loaded once
    if model.endswith("xl"):
        assert sum("<ti-" in t for t in pipe.tokenizer_2.get_vocab()) == 2  # clip_g into the second encoder


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_an_embedding_in_the_negative_prompt_with_guidance(runner, catalog, model):
    cfg = {"guidance": 1.5}  # LCM-LoRA with classifier-free guidance on
    negative = job(catalog, model, "a red fox", negative_prompt=f"blurry, {TOKENS[model].upper()}", **cfg)
    assert negative.embeddings == (TOKENS[model].lower(),)
    [with_token] = pixels(runner, negative)
    [without] = pixels(runner, job(catalog, model, "a red fox", negative_prompt="blurry,", **cfg))
    assert not np.array_equal(with_token, without)


@pytest.mark.parametrize("model", ["tiny-sd", "tiny-sdxl"])
def test_an_image_is_the_same_alone_and_in_a_batch_of_prompts_with_and_without_embeddings(runner, catalog, model):
    token = TOKENS[model]
    batch = [job(catalog, model, f"a fox number {i}" + (f", {token}" if i % 2 else ""), seed=20 + i,
                 negative_prompt=token if i == 3 else "", guidance=1.5) for i in range(8)]
    assert len({j.group_key for j in batch}) == 1  # one pipeline call, embeddings or not
    together = pixels(runner, *batch)
    for position in (0, 1, 3, 6):
        [alone] = pixels(runner, batch[position])
        assert np.array_equal(alone, together[position]), f"image {position} differs in the batch"


def test_an_embedding_removed_since_submission_fails_the_job_as_bad_input(model_cache, catalog):
    from engine.runner import Runner
    from farm.errors import InputError

    styled = job(catalog, "tiny-sd", "a fox, toystyle")
    gone = Runner(device="cpu", model_cache=model_cache, catalog=Catalog)
    with pytest.raises(InputError, match="unknown embedding 'toystyle'"):
        gone.render([styled])
