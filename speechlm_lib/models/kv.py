"""The key/value cache's keyword, as the installed transformers wants it.

transformers 5.2x renamed ``past_key_values`` to ``cache`` (in model ``forward``, ``generate`` and
model outputs); the old name still works there with a deprecation warning, and goes away in 5.40
(``forward``) and 6.0 (``generate``). The library passes and reads the cache only through
`CACHE_KW` and `cache_of`, so it runs warning-free on either side of the rename.
"""
from __future__ import annotations

import inspect


def _cache_keyword() -> str:
    from transformers.models.llama.modeling_llama import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


#: ``"cache"`` (transformers with the rename) or ``"past_key_values"`` (before it)
CACHE_KW = _cache_keyword()


def cache_of(output):
    """The key/value cache a model's output carries (``output.cache`` / ``output.past_key_values``)."""
    return output[CACHE_KW] if CACHE_KW in output.keys() else None
