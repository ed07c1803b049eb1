"""Reading what a submission names, before it is planned: input images (``images``: a local path,
an ``s3://`` URI, or ``job:ID`` from the store) and training datasets (``datasets``: a directory,
an ``s3://`` prefix or ``batch:ID``). Each image is checked by the render engine's decoder
(``engine.inputs``, the one deliberate call into the engine from here). Who may name what (a
remote client names no server path) is decided here.

May import: ``farm.errors``, ``farm.jobs``, ``farm.results.artifacts``, ``farm.storage``.
"""
