"""Keep the Hugging Face libraries' progress bars and advice out of worker logs and CLI output."""

from __future__ import annotations

import os

QUIET_ENV = {
    "TRANSFORMERS_VERBOSITY": "error",
    "DIFFUSERS_VERBOSITY": "error",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def quiet_libraries() -> None:
    for key, value in QUIET_ENV.items():
        os.environ.setdefault(key, value)
    from diffusers.utils import logging as diffusers_logging
    from transformers.utils import logging as transformers_logging

    for library in (diffusers_logging, transformers_logging):
        library.set_verbosity_error()
        library.disable_progress_bar()
