"""Optional heavy dependencies (diffusers, peft, transformers, accelerate, tensorboard).

They are imported where they are used, through :func:`require`, which turns their absence into a
one-line error naming the extra to install.  The core never needs them.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import ConfigError


def require(package: str, extra: str) -> ModuleType:
    """Import ``package`` or fail with one line naming the ``pip install 'flowsteer[extra]'`` that provides it.

    The Hugging Face libraries' own progress bars and advisory warnings are turned off: flowsteer reports
    progress itself, and a user's real errors still raise.
    """
    try:
        module = importlib.import_module(package)
    except ImportError:
        raise ConfigError(f"this needs the {package} package; install it with pip install 'flowsteer[{extra}]'") from None
    for name in ("diffusers", "transformers"):
        try:
            logging = importlib.import_module(f"{name}.utils.logging")
        except ImportError:
            continue
        logging.set_verbosity_error()
        logging.disable_progress_bar()
    return module
