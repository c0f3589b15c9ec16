"""The copy ceiling: what a frozen LLM makes of *perfect* audio tokens.

A projector can at best hand the LLM the transcript's own token embeddings (the
``ctc`` projector aims at exactly that). Whether the frozen LLM then writes those
tokens out is a property of the LLM and the prompt alone, and it bounds every
projector trained against that prompt::

    prefix ids | embeddings of the transcript's tokens | suffix ids  --greedy-->  text

SmolLM2-135M-Instruct told to "Transcribe the audio." with the transcript spliced in
answers or chats about it; a few demonstrations (`PromptConfig.examples`) make it copy
(`benchmarks/bench_copy_ceiling.py` measures both).
"""
from __future__ import annotations

from typing import Sequence

import torch
from tqdm.auto import tqdm

from speechlm_lib.metrics import cer, wer
from speechlm_lib.models.prompting import PromptBuilder, PromptConfig


@torch.no_grad()
def copy_ceiling(llm, tokenizer, prompt: PromptConfig, texts: Sequence[str], batch_size: int = 8,
                 max_new_tokens: int = 64, progress: bool = False) -> dict:
    """Greedy transcripts when the audio tokens are the texts' own embeddings; WER against the texts.

    Returns ``{"wer", "cer", "hyps", "refs"}``. Decoding stops at the end-of-turn id,
    EOS or a newline, as `generation.transcribe` does.
    """
    builder = PromptBuilder(tokenizer, prompt)
    p, embed = builder.prompt(), llm.get_input_embeddings()
    device = embed.weight.device
    stops = builder.stops()
    hyps = []
    for start in tqdm(range(0, len(texts), batch_size), desc="copy ceiling", disable=not progress):
        rows = [p.prefix + builder.target(t)[:-1] + p.suffix for t in texts[start: start + batch_size]]
        ids, mask = _left_pad(rows, builder.pad_id, device)
        out = llm.generate(inputs_embeds=embed(ids), attention_mask=mask, max_new_tokens=max_new_tokens,
                           do_sample=False, eos_token_id=stops, pad_token_id=builder.pad_id)
        for row in out.tolist():
            end = next((i for i, t in enumerate(row) if t in stops), len(row))
            hyps.append(builder.decode(row[:end]))
    refs = list(texts)
    return {"wer": wer(refs, hyps), "cer": cer(refs, hyps), "hyps": hyps, "refs": refs}


def _left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token rows -> left-padded ``ids (batch, seq)`` and ``attention_mask (batch, seq)``."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - len(r):], mask[i, n - len(r):] = torch.tensor(r), 1
    return ids.to(device), mask.to(device)
