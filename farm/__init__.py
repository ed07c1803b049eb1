"""farm: a render farm for few-step diffusion image generation.

This package is the producer, the ledger and the admin CLI. It never imports torch, diffusers,
peft or PIL: those live in ``workers``, which imports them lazily.
"""

__version__ = "0.1.0"
