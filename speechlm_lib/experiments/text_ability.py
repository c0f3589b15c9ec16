"""What the speech training costs the LLM as a text model: the same text-only prompts, adapters on and off.

`text_ability(model)` asks the 50 questions of `data.text_checks` through the chat template (no audio) and
measures the perplexity of held-out plain text; `adapters_off(model)` runs anything with the LoRA adapters
switched off, i.e. the original LLM. SLM kept its LLM frozen to keep these numbers; stage 3 shows the price.
"""
from __future__ import annotations

import math

import torch

from speechlm_lib.data.text import normalize
from speechlm_lib.data.text_checks import HELD_OUT_TEXT, QUESTIONS
from speechlm_lib.models.lora import adapters_off


def answered(answer: str, expected: tuple[str, ...], window: int = 6) -> bool:
    """Whether one of the `expected` answers (as words) is among the first `window` words of `answer`."""
    words = " " + " ".join(normalize(answer).split()[:window]) + " "
    return any(f" {normalize(e)} " in words for e in expected)


@torch.no_grad()
def ask(model, questions: list[str], max_new_tokens: int = 12, batch_size: int = 16) -> list[str]:
    """Greedy answers of the model's LLM to text-only chat `questions` (left-padded batches)."""
    tok, llm = model.tokenizer, model.llm
    device = llm.get_input_embeddings().weight.device
    answers = []
    for start in range(0, len(questions), batch_size):
        rows = [tok(tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                            add_generation_prompt=True), add_special_tokens=False)["input_ids"]
                for q in questions[start:start + batch_size]]
        width = max(map(len, rows))
        pad = model.prompts.pad_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
        out = llm.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                           eos_token_id=model.prompts.stop_ids, pad_token_id=pad)
        answers += [tok.decode(r[width:], skip_special_tokens=True).strip() for r in out.tolist()]
    return answers


@torch.no_grad()
def perplexity(model, texts: list[str]) -> float:
    """Per-token perplexity of plain `texts` under the model's LLM (one text a forward pass)."""
    tok, llm = model.tokenizer, model.llm
    device = llm.get_input_embeddings().weight.device
    total, count = 0.0, 0
    for text in texts:
        ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]], device=device)
        out = llm(input_ids=ids, labels=ids)
        n = ids.shape[1] - 1
        total, count = total + float(out.loss) * n, count + n
    return math.exp(total / max(1, count))


def text_ability(model, questions=QUESTIONS, texts=HELD_OUT_TEXT) -> dict:
    """``{"qa_accuracy", "qa_answers", "perplexity"}`` of the model's LLM as it is now."""
    model.eval()
    answers = ask(model, [q for q, _ in questions])
    right = [answered(a, expected) for a, (_, expected) in zip(answers, questions)]
    return {"qa_accuracy": sum(right) / max(1, len(questions)), "qa_answers": answers,
            "perplexity": perplexity(model, texts)}


def text_ability_on_and_off(model, questions: int = len(QUESTIONS)) -> dict:
    """`text_ability` (the first `questions` questions) with the adapters on, and off (the LLM before stage 3)."""
    on = text_ability(model, QUESTIONS[:questions])
    with adapters_off(model):
        off = text_ability(model, QUESTIONS[:questions])
    return {"adapters_on": on, "adapters_off": off}
