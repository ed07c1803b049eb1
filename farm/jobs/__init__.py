"""What a job is and how a submission becomes jobs. Pure: no I/O, no clock, no randomness of its own.

- ``spec``: a job request and its resolved, validated ``JobSpec`` (and its digest); ``values``: the
  typed values a user enters; ``kinds``: the image kinds (img2img, inpaint, ControlNet, upscale);
  ``training``: a distillation job; ``states``: job states and the one table of transitions;
- ``variants``, ``wildcards``, ``sweep``: expanding prompts, seeds and axes into requests;
  ``planning`` (options to a submission) and ``plan`` (a submission to a validated ``Plan``);
- ``inputs``, ``datasets``: what a job's input images and a training job's dataset are, once read
  (the reading is ``farm.intake``'s, handed in).

May import: ``farm.errors`` and ``farm.models`` (what the farm can load). Never the ledger, the
storage, the fleet, the CLI, click, celery, boto3 or sqlalchemy (import-linter contracts in
pyproject.toml).
"""
