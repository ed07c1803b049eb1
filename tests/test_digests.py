"""A job's digest decides whether a stored image is reused: every kind of submission that existed
before the job shape changed must keep its digest, or earlier renders stop being reused and
idempotency keys stop matching. The expected values were computed by the code before the change
(commit c19a72e) and are pinned here."""

import pytest

from farm.jobs.plan import request_digest
from farm.jobs.spec import Catalog, JobRequest, resolve_job
from farm.jobs.variants import PromptRow

BEFORE = {
    "default": (JobRequest(prompt="a lighthouse at dusk", seed=100),
                "f97fc8b95dda41179a33806a09e258fff737a13b92f6f51c66c76c221fa0ef35"),
    "sdxl-style": (JobRequest(prompt="a fox", seed=7, model="tiny-sdxl", adapters=("tiny-sdxl-toy:0.8",),
                              guidance=1.5, negative_prompt="blurry"),
                   "3c51e25c31e2ed8a410eb1913ffbe7aeb55fa12605a0328d9a75230fc464efc2"),
    "plain": (JobRequest(prompt="a fox", seed=1, recipe="plain", steps=20, guidance=6, width=64, height=96),
              "3db8a55f57de34d5891e37bb81656404a38abcaa7484fdc7b64a352a9752da17"),
    "tiny-decoder": (JobRequest(prompt="a fox", seed=3, decoder="tiny"),
                     "a411745f3c506d51dd42220ec22812f435c8dfbee29edaca0190de901c0f8ebc"),
    "lightning": (JobRequest(prompt="x", seed=5, model="tiny-sdxl", recipe="lightning", steps=4),
                  "5ec38ba6dfc6d2cd50951909b29165a73fead100f0dba58a54f9c66a0f7c1cfb"),
    "turbo": (JobRequest(prompt="x", seed=5, model="tiny-sdxl", recipe="turbo"),
              "35b0325b97299d71df0335e67483fdfe7d8ff189f6c239566e8dafe8bd3de861"),
    "hyper": (JobRequest(prompt="x", seed=5, model="tiny-sdxl", recipe="hyper", steps=8),
              "e6e9f957323d07907bd4c1e2af59831de6eca262a298faaa51c680490b3a1ece"),
    "lcm-blend": (JobRequest(prompt="x", seed=5, recipe="lcm-blend"),
                  "467c7085dd912359328a16378ec6307d1419fd302412ff25f1d1157137d5426b"),
}


@pytest.mark.parametrize("name", sorted(BEFORE))
def test_job_digests_are_the_same_as_before_the_job_kind(name):
    request, digest = BEFORE[name]
    spec = resolve_job(request, Catalog(), "tiny-sd")
    assert spec.kind == "txt2img"
    assert spec.digest == digest


def test_an_explicit_txt2img_kind_is_the_same_job():
    request, digest = BEFORE["default"]
    from dataclasses import replace

    assert resolve_job(replace(request, kind="txt2img"), Catalog(), "tiny-sd").digest == digest


def test_request_digests_of_idempotency_keys_are_the_same_as_before():
    rows = [PromptRow(JobRequest(prompt="a"))]
    assert request_digest(rows, JobRequest(steps=4), 2, 10, 0) == \
        "3d7eff290938e6b84e5877b81087de6297531746fdfcc08730e5e4dca965870a"
    assert request_digest(rows, JobRequest(decoder="tiny"), 2, 10, 0) == \
        "2475f61141d2bfbe2df279d1dc0a1a0123c021661d692be5a61681449e4dced7"
    # a field given explicitly is part of the request
    assert request_digest(rows, JobRequest(kind="txt2img"), 2, 10, 0) != request_digest(rows, JobRequest(), 2, 10, 0)


def test_an_unknown_kind_is_bad_input():
    from farm.errors import InputError

    # (img2img became a kind with issue 13; an image job without its image is bad input too)
    with pytest.raises(InputError, match="^kind: 'outpaint' is not a job kind"):
        resolve_job(JobRequest(prompt="x", seed=1, kind="outpaint"), Catalog(), "tiny-sd")
    with pytest.raises(InputError, match="^init_image: an img2img job needs --init-image"):
        resolve_job(JobRequest(prompt="x", seed=1, kind="img2img"), Catalog(), "tiny-sd")
