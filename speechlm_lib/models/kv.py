"""The key/value cache's keyword, as the installed transformers wants it.

transformers 5.2x renamed ``past_key_values`` to ``cache`` (in model ``forward``, ``generate`` and
model outputs); the old name still works there with a deprecation warning, and goes away in 5.40
(``forward``) and 6.0 (``generate``). The library passes and reads the cache only through
`CACHE_KW` and `cache_of`, so it runs warning-free on either side of the rename.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn


def _cache_keyword() -> str:
    from transformers.models.llama.modeling_llama import LlamaModel

    return "cache" if "cache" in inspect.signature(LlamaModel.forward).parameters else "past_key_values"


#: ``"cache"`` (transformers with the rename) or ``"past_key_values"`` (before it)
CACHE_KW = _cache_keyword()


def cache_of(output):
    """The key/value cache a model's output carries (``output.cache`` / ``output.past_key_values``)."""
    return output[CACHE_KW] if CACHE_KW in output.keys() else None


def cache_layers(cache) -> list[tuple]:
    """A `DynamicCache`'s ``(keys, values)`` per layer, each ``(batch, kv_heads, seq, head_dim)``."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def make_cache(layers: list[tuple], config):
    """A `DynamicCache` holding ``(keys, values)`` per layer."""
    from transformers import DynamicCache

    return DynamicCache(ddp_cache_data=layers, config=config)


def expand_rows(layers: list[tuple], rows: int, config):
    """A `DynamicCache` that shares one row's ``(keys, values)`` per layer among `rows` rows (views, no copies)."""
    return make_cache([(k.expand(rows, -1, -1, -1), v.expand(rows, -1, -1, -1)) for k, v in layers], config)


def select_rows(cache, rows: torch.Tensor, config):
    """A new cache with only `rows` (a 1-d index tensor) of `cache`; `cache` is left as it was."""
    return make_cache([(k.index_select(0, rows), v.index_select(0, rows)) for k, v in cache_layers(cache)], config)


def pack(parts: list[tuple], config):
    """Stack the rows of several ``(cache, attention_mask (batch, seq))`` pairs into one pair.

    Each row keeps only its attended positions (mask 1), in order, moved to the right end; the
    positions no row attends (left padding, drafted tokens a pass rejected) are dropped, so the
    result is as long as the longest row's attended positions. Exact for a model whose position
    ids come from the mask (``cumsum - 1``): the keys already carry their rotary positions, and a
    row's count of attended positions is unchanged.
    """
    width = max(m.shape[1] for _, m in parts)
    mask = torch.cat([nn.functional.pad(m, (width - m.shape[1], 0)) for _, m in parts])
    longest = int(mask.sum(1).max())
    order = (mask.long() * width + torch.arange(width, device=mask.device)).argsort(dim=1)
    index = order[:, width - longest:]  # per row: its attended columns, in order, right-aligned
    layers = []
    for per_part in zip(*(cache_layers(c) for c, _ in parts)):
        out = []
        for j in (0, 1):  # keys, values
            t = torch.cat([nn.functional.pad(kv[j], (0, 0, width - kv[j].shape[2], 0)) for kv in per_part])
            out.append(t.gather(2, index[:, None, :, None].expand(-1, t.shape[1], -1, t.shape[3])))
        layers.append(tuple(out))
    return make_cache(layers, config), mask.gather(1, index)
