"""The speech-LLM: speech encoder -> stack frames -> projector -> any causal LM.

    audio --encoder--> (batch, frames, enc_dim) --projector (stacks k frames)-->
    (batch, tokens, llm_dim) --spliced between prompt embeddings--> LLM --> transcript

The prompt (see `prompting`) is ``prefix | audio | suffix`` and the answer is
``target + end``; the loss is cross-entropy on the answer tokens only (every
other position has label -100). By default only the projector trains
(`freeze_encoder`, `freeze_llm`), as in SLAM-ASR.

A batch (from `speechlm_data.collate`) holds either encoder input
(``features``, ``feature_lengths``) or cached encoder states (``states``,
``state_lengths``), plus padded token rows ``prefix_ids / suffix_ids /
target_ids`` with their ``*_lengths``. Rows are assembled one by one, then
padded on the right (training) or the left (generation); position ids count
only real tokens, so either side gives the same result.

`save_pretrained(dir)` writes the trainable weights (``trainable.safetensors``),
LoRA adapters if any (``adapter/``, peft's own format; `lora`) and ``speechlm.json``,
which names the frozen parts by reference (encoder settings with its hub id / path,
the LLM's hub id / path) -- a few MB instead of the whole model; `from_pretrained(dir)`
rebuilds it in a fresh process.
"""
from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from speechlm_lib.models import ctc_projector  # noqa: F401  (registers the "ctc" projector)
from speechlm_lib.models.encoders import ENCODERS
from speechlm_lib.models.kv import CACHE_KW, cache_layers, cache_of, expand_rows
from speechlm_lib.models.projectors import PROJECTORS
from speechlm_lib.models.prompting import PromptBuilder, PromptConfig

CONFIG_NAME = "speechlm.json"
WEIGHTS_NAME = "trainable.safetensors"
ADAPTER_DIR = "adapter"  # LoRA adapters, written by peft's save_pretrained
IGNORE = -100  # label of positions the loss ignores


def load_llm(source: str, dtype: torch.dtype | None = None):
    """``(model, tokenizer)`` for a hub id or local dir, through `sources.load_llm` (works offline)."""
    from speechlm_lib.models.sources import load_llm as load

    return load(source, dtype=dtype)


class SpeechLM(nn.Module):
    """Encoder + projector + causal LM (see the module docstring).

    Args:
        encoder: a `encoders.SpeechEncoder`.
        llm, tokenizer: a Hugging Face causal LM and its tokenizer.
        projector: registry name in `PROJECTORS`; `stride` frames become one token.
        projector_kwargs: extra projector settings (e.g. ``hidden``).
        prompt: `PromptConfig` (instruction, system message, audio position).
        freeze_encoder, freeze_llm: keep those weights fixed (default: only the projector trains).
        llm_source: how to reload the LLM (hub id or dir); written by `save_pretrained`.
    """

    def __init__(self, encoder, llm, tokenizer, projector: str = "linear", stride: int = 5,
                 projector_kwargs: dict | None = None, prompt: PromptConfig | None = None,
                 freeze_encoder: bool = True, freeze_llm: bool = True, llm_source: str | None = None):
        super().__init__()
        self.encoder, self.llm, self.tokenizer = encoder, llm, tokenizer
        self.llm_source = llm_source or getattr(llm, "name_or_path", None)
        llm_dim = llm.get_input_embeddings().embedding_dim
        self.projector = PROJECTORS.build(projector, in_dim=encoder.dim, out_dim=llm_dim, stride=stride,
                                          **(projector_kwargs or {}))
        self.projector.bind(llm)
        self.projector_name = projector
        self.prompts = PromptBuilder(tokenizer, prompt)
        self.freeze_encoder, self.freeze_llm = freeze_encoder, freeze_llm
        self.encoder.requires_grad_(not freeze_encoder)
        self.llm.requires_grad_(not freeze_llm)
        self.use_prefix_cache = True  # reuse a prompt prefix shared by a batch as a key/value cache
        self._prefix_kv: dict = {}  # (prefix ids, device, dtype, weights' version) -> layers' (keys, values)
        object.__setattr__(self, "peft", None)  # the PeftModel around `llm` once LoRA is added (`lora.add_lora`)
        self.merged_lora = False  # adapters folded into the LLM's weights (`lora.merge_lora`)

    # -- the pieces -------------------------------------------------------------------
    @property
    def token_rate(self) -> float:
        """Audio tokens the LLM sees per second of speech (encoder rate / stride, for the stacking projectors)."""
        return self.encoder.frame_rate / self.projector.stride

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (no dropout) while the rest trains."""
        super().train(mode)
        if self.freeze_encoder:
            self.encoder.eval()
        if self.freeze_llm and self.peft is None:  # with adapters the LLM trains (their dropout)
            self.llm.eval()
        return self

    def encode(self, features: torch.Tensor, feature_lengths: torch.Tensor):
        """Encoder input (see the encoder) -> ``(batch, frames, enc_dim)``, lengths (no graph if frozen)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.freeze_encoder):
            return self.encoder(features, feature_lengths)

    def encode_waves(self, waves: list[torch.Tensor]):
        """16 kHz waveforms ``(samples,)`` -> encoder states ``(batch, frames, enc_dim)`` and lengths, on the
        projector's device (featurized, padded and encoded as one batch)."""
        device = next(self.projector.parameters()).device
        feats, lengths = self.encoder.collate([self.encoder.featurize(w) for w in waves])
        return self.encode(feats.to(device), lengths.to(device))

    def audio_embeddings(self, features=None, feature_lengths=None, states=None, state_lengths=None):
        """Features or cached states -> projected ``(batch, tokens, llm_dim)``, token lengths."""
        return self._project(features, feature_lengths, states, state_lengths, guess=False)[:2]

    def audio_embeddings_and_guesses(self, features=None, feature_lengths=None, states=None, state_lengths=None):
        """`audio_embeddings` plus the projector's guesses of the answer's LLM token ids per row, from
        the same run (None when it makes none; `Projector.project_and_guess`, used by `speculative`)."""
        return self._project(features, feature_lengths, states, state_lengths, guess=True)

    def _project(self, features, feature_lengths, states, state_lengths, guess: bool):
        if states is None:
            if features is None:
                raise ValueError("a batch needs `features` (encoder input) or `states` (cached encoder output)")
            states, state_lengths = self.encode(features, feature_lengths)
        x = states.to(next(self.projector.parameters()).dtype)
        n = state_lengths.to(states.device)
        emb, lengths, guesses = self.projector.project_and_guess(x, n) if guess else (*self.projector(x, n), None)
        return emb.to(self.llm.get_input_embeddings().weight.dtype), lengths, guesses

    def assemble(self, audio, audio_lengths, prefix_ids, prefix_lengths, suffix_ids, suffix_lengths,
                 target_ids=None, target_lengths=None, padding_side: str = "right"):
        """Splice rows together: ``prefix | audio | suffix | target`` -> padded LLM inputs.

        Returns ``inputs_embeds (batch, seq, llm_dim)``, ``attention_mask (batch, seq)``,
        ``position_ids (batch, seq)`` and ``labels (batch, seq)`` (target ids, -100 elsewhere).
        """
        if padding_side not in ("left", "right"):
            raise ValueError(f"padding_side must be 'left' or 'right', got {padding_side!r}")
        embed = self.llm.get_input_embeddings()
        pre, suf = embed(prefix_ids), embed(suffix_ids)
        tgt = embed(target_ids) if target_ids is not None else None
        rows, labels = [], []
        for i in range(audio.shape[0]):
            lp, la, ls = int(prefix_lengths[i]), int(audio_lengths[i]), int(suffix_lengths[i])
            parts = [pre[i, :lp], audio[i, :la], suf[i, :ls]]
            lab = [torch.full((lp + la + ls,), IGNORE, dtype=torch.long, device=audio.device)]
            if tgt is not None:
                lt = int(target_lengths[i])
                parts.append(tgt[i, :lt])
                lab.append(target_ids[i, :lt].long())
            rows.append(torch.cat(parts))
            labels.append(torch.cat(lab))
        return _pad_rows(rows, labels, padding_side)

    # -- training forward ---------------------------------------------------------------
    def forward(self, prefix_ids, prefix_lengths, suffix_ids, suffix_lengths, target_ids, target_lengths,
                features=None, feature_lengths=None, states=None, state_lengths=None, meta=None,
                audio_ids=None, audio_id_lengths=None) -> dict:
        """Teacher-forced loss on the answer tokens. Returns ``{"loss", "n_tokens", "accuracy"}``.

        Only the positions that predict a target token go through the LM head (the
        prompt's logits are never computed). The prefix ids every row begins with run
        once and are reused as a key/value cache (`prefix_cache`): computed once and kept
        while the LLM is frozen, once a batch with gradients while adapters train.
        `meta` (ids, texts) is ignored. `audio_ids` ``(batch, tokens)``: LLM token ids standing in for the
        projector's output (hard tokens made elsewhere: stage 3's cross-fitting, `recipes.cross_fit`).
        """
        if audio_ids is not None:
            audio, audio_lengths = self.llm.get_input_embeddings()(audio_ids), audio_id_lengths
        else:
            audio, audio_lengths = self.audio_embeddings(features, feature_lengths, states, state_lengths)
        shared = self.shared_prefix(prefix_ids, prefix_lengths)
        if shared is not None:  # the shared start is a cache; rows begin with the rest of their prefix
            prefix_ids, prefix_lengths = prefix_ids[:, len(shared):], prefix_lengths - len(shared)
        embeds, mask, pos, labels = self.assemble(audio, audio_lengths, prefix_ids, prefix_lengths, suffix_ids,
                                                  suffix_lengths, target_ids, target_lengths, padding_side="right")
        kw = {"inputs_embeds": embeds, "attention_mask": mask, "position_ids": pos, "use_cache": False}
        if shared is not None:
            kw.update(self.prefix_cache(shared, mask, fresh=self.llm_trains()))
        hidden = self.llm.get_decoder()(**kw).last_hidden_state
        next_labels = labels[:, 1:]
        keep = next_labels != IGNORE  # position t predicts token t + 1
        logits = self.llm.get_output_embeddings()(hidden[:, :-1][keep]).float()
        gold = next_labels[keep]
        loss = nn.functional.cross_entropy(logits, gold)
        accuracy = (logits.argmax(-1) == gold).float().mean().detach()
        return {"loss": loss, "n_tokens": int(keep.sum()), "accuracy": accuracy}

    # -- the shared prompt prefix as a key/value cache ------------------------------------
    def shared_prefix(self, prefix_ids: torch.Tensor, prefix_lengths: torch.Tensor,
                      for_training: bool = True) -> tuple[int, ...] | None:
        """The prefix ids every row begins with (all of it when the rows share one prefix; the part before
        per-row keyword lists when they differ there), else None (then every row runs its own).

        Running a shared prefix once is exact: frozen, its keys/values are computed once and
        kept; with a trainable LLM (LoRA) `forward` recomputes them once a batch with gradients
        (the same loss and gradients as running it in every row, at a fraction of the cost).
        `for_training` is kept for callers; a trainable LLM is handled by `prefix_cache`.
        """
        if not self.use_prefix_cache or prefix_ids.shape[1] == 0:
            return None
        same = (prefix_ids == prefix_ids[:1]).all(0)  # (seq,): the positions where every row agrees
        n = min(int(same.long().cumprod(0).sum()), int(prefix_lengths.min()))
        return tuple(prefix_ids[0, :n].tolist()) if n > 0 else None

    def llm_trains(self) -> bool:
        """Whether a backward pass would reach LLM weights (adapters or unfrozen layers) right now."""
        return torch.is_grad_enabled() and any(p.requires_grad for p in self.llm.parameters())

    def _llm_version(self) -> int:
        """Changes whenever an LLM weight is modified in place (a stale prefix cache is rebuilt)."""
        return sum(p._version for p in self.llm.parameters())

    def prefix_kv(self, ids: tuple[int, ...], rows: int, fresh: bool = False):
        """A `DynamicCache` holding the prefix `ids`' keys/values for `rows` rows (computed once
        per prefix, device, dtype and weights' version; rows share one copy until appended to).
        `fresh`: computed now with gradients and not kept (a trainable LLM)."""
        weight = self.llm.get_input_embeddings().weight
        key = (ids, weight.device, weight.dtype, self._llm_version())
        if fresh or key not in self._prefix_kv:
            with torch.set_grad_enabled(fresh):
                out = self.llm.get_decoder()(input_ids=torch.tensor([ids], device=weight.device), use_cache=True)
            layers = cache_layers(cache_of(out))
            if fresh:
                return expand_rows(layers, rows, self.llm.config)
            self._prefix_kv = {key: layers}
        return expand_rows(self._prefix_kv[key], rows, self.llm.config)

    def prefix_cache(self, ids: tuple[int, ...], mask: torch.Tensor, fresh: bool = False) -> dict:
        """LLM keywords that put the prefix `ids` before every row: the cache (`prefix_kv`, under
        `kv.CACHE_KW`), the attention mask over prefix + rows ``(batch, len(ids) + seq)`` and
        position ids shifted past the prefix."""
        b, n = mask.shape[0], len(ids)
        full_mask = torch.cat([mask.new_ones((b, n)), mask], dim=1)
        return {CACHE_KW: self.prefix_kv(ids, b, fresh=fresh), "attention_mask": full_mask,
                "position_ids": (mask.cumsum(-1) - 1).clamp(min=0) + n, "use_cache": True}

    # -- bookkeeping --------------------------------------------------------------------
    def parameter_counts(self) -> dict:
        """Total and trainable parameters of each part (and the share that trains)."""
        out = {}
        for part in ("encoder", "projector", "llm"):
            params = list(getattr(self, part).parameters())
            out[part] = {"total": sum(p.numel() for p in params),
                         "trainable": sum(p.numel() for p in params if p.requires_grad)}
        total = sum(v["total"] for v in out.values())
        trainable = sum(v["trainable"] for v in out.values())
        out["all"] = {"total": total, "trainable": trainable, "trainable_share": trainable / max(1, total)}
        return out

    def config_dict(self) -> dict:
        """What `save_pretrained` writes: frozen parts by reference, trainable ones by settings."""
        settings = dict(self.projector.settings)
        for k in ("in_dim", "out_dim", "stride"):
            settings.pop(k)
        dtype = str(self.llm.get_input_embeddings().weight.dtype).removeprefix("torch.")
        return {"encoder": self.encoder.settings(), "llm": {"source": self.llm_source, "dtype": dtype},
                "projector": {"name": self.projector_name, "stride": self.projector.stride, "kwargs": settings},
                "prompt": asdict(self.prompts.config),
                "freeze_encoder": self.freeze_encoder, "freeze_llm": self.freeze_llm,
                "lora": ADAPTER_DIR if self.peft is not None else None}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write ``speechlm.json`` + ``trainable.safetensors`` (projector + any unfrozen part)."""
        if self.merged_lora:
            raise ValueError("save the model before `merge_lora`: a merged LLM is no longer the one its "
                             "source names, and the adapters are saved by themselves (a few MB)")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.peft is not None:
            self.peft.save_pretrained(str(directory / ADAPTER_DIR))
        names = {"projector"} | ({"encoder"} if not self.freeze_encoder else set()) | (
            {"llm"} if not self.freeze_llm else set())
        state = {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()
                 if k.split(".", 1)[0] in names}
        save_file(state, str(directory / WEIGHTS_NAME))
        (directory / CONFIG_NAME).write_text(json.dumps(self.config_dict(), indent=2))
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, encoder=None, llm=None, tokenizer=None,
                        trainable_adapters: bool = False, dtype: str | torch.dtype | None = None,
                        encoder_options: dict | None = None) -> "SpeechLM":
        """Rebuild from `save_pretrained` output (a folder, or a hub repo id holding one, e.g. a
        `speechlm export` pushed with `export.push_to_hub`); frozen parts are loaded from their
        references unless passed in (`encoder`, `llm` + `tokenizer`). Saved LoRA adapters come back frozen,
        or ready to train on with `trainable_adapters` (stage 4 continues stage 3's). `dtype`: the LLM's, None =
        the one it was saved in (the same transcripts as before saving); ``"auto"`` = the faster one here
        (`training.utils.resolve_dtype`: a bf16-trained model decodes in float32 on a CPU where bf16 is slower).
        `encoder_options`: changes to the saved encoder's builder options when it is built here (e.g.
        ``{"dtype": "float32"}`` for a Whisper encoder saved as ``"auto"``)."""
        directory = _local_copy(directory)
        if not (directory / CONFIG_NAME).is_file():
            raise FileNotFoundError(f"{directory}: no {CONFIG_NAME} (not a saved SpeechLM)")
        cfg = json.loads((directory / CONFIG_NAME).read_text())
        if encoder is None:
            enc = cfg["encoder"]
            encoder = ENCODERS.build(enc["encoder"], source=enc["name"], **{**enc.get("options", {}),
                                                                           **(encoder_options or {})})
        if llm is None:
            llm, tokenizer = load_llm(cfg["llm"]["source"], dtype=_llm_dtype(dtype, cfg["llm"]))
        model = cls(encoder, llm, tokenizer, projector=cfg["projector"]["name"], stride=cfg["projector"]["stride"],
                    projector_kwargs=cfg["projector"]["kwargs"], prompt=PromptConfig(**cfg["prompt"]),
                    freeze_encoder=cfg["freeze_encoder"], freeze_llm=cfg["freeze_llm"],
                    llm_source=cfg["llm"]["source"])
        if cfg.get("lora"):
            from peft import PeftModel

            from speechlm_lib.models.lora import attach, quiet_peft

            with quiet_peft():
                attach(model, PeftModel.from_pretrained(model.llm, str(directory / cfg["lora"]),
                                                        is_trainable=trainable_adapters))
        state = load_file(str(directory / WEIGHTS_NAME))
        missing, unexpected = model.load_state_dict(state, strict=False)
        lost = [k for k in missing if k.startswith("projector.")]
        if lost or unexpected:
            raise ValueError(f"{directory}: weights do not fit the model (missing {lost[:5]}, "
                             f"unexpected {unexpected[:5]})")
        return model.eval()


def _llm_dtype(dtype: str | torch.dtype | None, saved: dict) -> torch.dtype:
    """The LLM dtype `from_pretrained` loads: the `saved` one (older saves name none: float32) for None, the
    faster one here for ``"auto"``, else `dtype` (a torch dtype or its name)."""
    from speechlm_lib.training.utils import resolve_dtype

    if dtype is None:
        return getattr(torch, saved.get("dtype", "float32"))
    if isinstance(dtype, torch.dtype):
        return dtype
    return resolve_dtype(dtype) or torch.float32


def _local_copy(name: str | Path) -> Path:
    """`name` as a folder: an existing path as it is, a hub repo id (``owner/name``) downloaded."""
    path = Path(name).expanduser()
    if path.exists() or isinstance(name, Path) or str(name).count("/") != 1 or str(name).startswith((".", "/")):
        return path
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(repo_id=str(name)))


def _pad_rows(rows: list[torch.Tensor], labels: list[torch.Tensor], side: str):
    """Pad ``(len_i, dim)`` rows to ``(batch, max_len, dim)``; mask, positions and labels to match."""
    n, dim = max(r.shape[0] for r in rows), rows[0].shape[1]
    b, dev = len(rows), rows[0].device
    embeds = rows[0].new_zeros((b, n, dim))
    mask = torch.zeros((b, n), dtype=torch.long, device=dev)
    lab = torch.full((b, n), IGNORE, dtype=torch.long, device=dev)
    for i, (r, y) in enumerate(zip(rows, labels)):
        sl = slice(0, len(r)) if side == "right" else slice(n - len(r), n)
        embeds[i, sl], mask[i, sl], lab[i, sl] = r, 1, y
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    return embeds, mask, pos, lab
