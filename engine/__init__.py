"""The render engine: the only code that imports torch, diffusers, peft or PIL (lazily).

The runner (resident pipelines, adapters, one generator per image), model sources (hub id,
directory, single file, s3://), one pipeline module per family, PNG imaging, contact sheets and
replay. The worker process (``workers``) and the CLI (sheets, replay) import it on purpose; it
imports nothing from ``workers``.
"""
