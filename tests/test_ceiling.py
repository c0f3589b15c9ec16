"""The copy ceiling feeds the transcript's own embeddings inside the prompt and cuts at stop ids."""
from __future__ import annotations

import torch

from speechlm_lib.experiments.copy_ceiling import copy_ceiling
from speechlm_lib.models.prompting import PromptBuilder, PromptConfig
from speechlm_lib.models.tiny_models import tiny_llm


def test_the_llm_sees_prompt_text_prompt_and_output_stops_at_a_newline(monkeypatch):
    llm, tok = tiny_llm()
    prompt = PromptConfig(examples=["you are tiny"])
    builder = PromptBuilder(tok, prompt)
    texts = ["hello world", "the quick brown fox jumps"]
    seen = {}

    def fake(**kw):  # "copies" the answer tokens, then a newline and junk
        seen.update(kw)
        rows = [builder.target(t)[:-1] + [builder.newline_id, 5, 5] for t in texts]
        return torch.tensor([r + [5] * (40 - len(r)) for r in rows])

    monkeypatch.setattr(llm, "generate", fake)
    out = copy_ceiling(llm, tok, prompt, texts, batch_size=2)
    p = builder.prompt()
    want = p.prefix + builder.target(texts[1])[:-1] + p.suffix  # the longest row: no padding
    embeds = seen["inputs_embeds"][1]
    torch.testing.assert_close(embeds, llm.get_input_embeddings()(torch.tensor(want)))
    assert seen["attention_mask"][0].tolist()[0] == 0 and seen["attention_mask"][1].all()  # left padding
    assert out["hyps"] == texts and out["wer"] == 0.0


def test_a_wrong_answer_counts_as_errors(monkeypatch):
    llm, tok = tiny_llm()
    builder = PromptBuilder(tok, PromptConfig())
    monkeypatch.setattr(llm, "generate", lambda **kw: torch.tensor([builder.target("you are")[:-1]]))
    out = copy_ceiling(llm, tok, PromptConfig(), ["hello world"])
    assert out["hyps"] == ["you are"] and out["wer"] == 1.0
