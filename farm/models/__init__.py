"""What the farm can load, and how a file is checked before it is registered: the built-in
``catalog``, few-step ``recipes``, ``registry`` rules for models, adapters, embeddings and
ControlNets, and file checks read from safetensors headers and configs without torch (``weights``,
``layers``, ``loras``, ``embeddings``, ``checkpoints``, ``controlnets``); ``names``: the one rule
for a name.

Pure apart from reading file headers. May import: ``farm.errors``. Never ``farm.jobs``, the
ledger, the storage, the fleet, the CLI, click, celery, boto3 or sqlalchemy.
"""
