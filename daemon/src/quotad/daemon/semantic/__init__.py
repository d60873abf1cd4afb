"""The semantic cache and local embeddings (DESIGN §11), from a model shipped in a wheel.

:mod:`.model` reads the bundled embedding model; :mod:`.index` searches one partition's
vectors; :mod:`.rules` decides when a question asked in other words may take a stored answer,
with the words of :mod:`.vocabulary`; :mod:`.question` reads a chat request's partition and
last user turn; :mod:`.cache` is the engine the broker composes with the response cache.

All of it needs the optional extra ``quotad[semantic]`` (numpy, wordllama, threadpoolctl).
This module imports none of them: a daemon whose config asks for no semantic caching and no
local provider never loads them. :func:`missing_extra` says what is not installed, without
importing it.
"""

from __future__ import annotations

import importlib.util
from typing import Final

EXTRA: Final = "quotad[semantic]"
INSTALL_HINT: Final = f"uv pip install '{EXTRA}' (or pip install '{EXTRA}')"
REQUIRED_MODULES: Final = ("numpy", "wordllama", "tokenizers", "safetensors", "threadpoolctl")
"""What the extra brings that the model needs (wordllama for its bundled files only)."""


def missing_extra() -> list[str]:
    """The modules of the extra ``quotad[semantic]`` that cannot be found (none: installed)."""
    missing = []
    for name in REQUIRED_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):  # ValueError: sys.modules[name] is None
            found = False
        if not found:
            missing.append(name)
    return missing
