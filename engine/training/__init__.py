"""Training for the built-in tiny models: a generated captioned image set (``shapes``) and the
tiny SD1.5-style teacher trained on it (``teacher``), so samplers and distillation can be judged
on a model that has learned something. Run by ``scripts/train_tiny_teacher.py``, never at render
time: the weights it writes are committed under ``engine/weights/``."""
