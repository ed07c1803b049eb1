"""Planning and micro-batching a submission (pure)."""

import random

from farm.fleet.producer import micro_batches
from farm.jobs.plan import plan
from farm.jobs.spec import Catalog, JobRequest
from farm.jobs.variants import PromptRow


def make(rows, variants=1, **defaults):
    return plan(rows, JobRequest(**defaults), variants=variants, seed=10, catalog=Catalog(),
                default_model="tiny-sd", rng=random.Random(1))


def test_jobs_with_identical_settings_share_micro_batches_of_bounded_size():
    rows = [PromptRow(JobRequest(prompt="a")), PromptRow(JobRequest(prompt="b", steps=6)),
            PromptRow(JobRequest(prompt="c"))]
    planned = make(rows, variants=5)
    ids = list(range(100, 115))
    groups = micro_batches(planned.specs, ids, 4)
    # prompts a and c (4 steps) share groups; b (6 steps) is apart
    assert [ids for _, ids in groups] == [[100, 101, 102, 103], [104, 110, 111, 112], [113, 114],
                                          [105, 106, 107, 108], [109]]
    assert {model for model, _ in groups} == {"tiny-sd"}


def test_random_base_seed_is_drawn_once_and_recorded():
    planned = plan([PromptRow(JobRequest(prompt="a"))], JobRequest(), variants=3, seed=None, catalog=Catalog(),
                   default_model="tiny-sd", rng=random.Random(7))
    assert [s.seed for s in planned.specs] == [planned.base_seed + i for i in range(3)]
    assert planned.record()["seed"] is None


def test_request_digest_ignores_the_random_seed():
    a = plan([PromptRow(JobRequest(prompt="a"))], JobRequest(), variants=2, seed=None, catalog=Catalog(),
             default_model="tiny-sd", rng=random.Random(1))
    b = plan([PromptRow(JobRequest(prompt="a"))], JobRequest(), variants=2, seed=None, catalog=Catalog(),
             default_model="tiny-sd", rng=random.Random(2))
    assert a.base_seed != b.base_seed and a.request_digest == b.request_digest


def test_workers_poll_the_queues_of_resident_models_first():
    from farm.fleet.dispatch import preferred_queue_order

    queues = ["farm.sd15", "farm.sdxl", "farm.tiny-sd", "farm.tiny-sdxl"]
    assert preferred_queue_order(queues, "farm", []) == queues
    assert preferred_queue_order(queues, "farm", ["tiny-sd", "sdxl"]) == [
        "farm.sdxl", "farm.tiny-sd", "farm.sd15", "farm.tiny-sdxl"]  # most recently used first
    assert preferred_queue_order(queues, "farm", ["not-served"]) == queues
