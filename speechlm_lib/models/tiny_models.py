"""Tiny randomly initialised models, built offline in a second, for tests and smoke runs.

They have the same classes and interfaces as the real ones (a Llama causal LM
with a ChatML template, a Whisper encoder, a wav2vec2 model), just a few
thousand parameters, so the speech-LLM's plumbing can be checked without any
download::

    llm, tok = tiny_llm()                   # LlamaForCausalLM + fast BPE tokenizer
    whisper = tiny_whisper()                # WhisperForConditionalGeneration
    path = save_tiny_wav2vec2(tmp_dir)      # a local dir that AutoModel can load
"""
from __future__ import annotations

from pathlib import Path

import torch

CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are tiny.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
_TEXT = [
    "the quick brown fox jumps over the lazy dog", "transcribe the audio", "hello world",
    "you are tiny", "system user assistant", "zero one two three four five six seven eight nine",
    "a speech model listens and writes what it hears", "Transcript: keywords, translate.",
]


def tiny_tokenizer(chat_template: bool = True):
    """A byte-level BPE tokenizer (~300 ids) with ChatML special tokens, trained in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_TEXT * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>" if chat_template else "<|endoftext|>",
                                   bos_token="<|endoftext|>", pad_token="<|endoftext|>")
    if chat_template:
        fast.chat_template = CHATML
    return fast


def tiny_llm(hidden_size: int = 64, layers: int = 2, chat_template: bool = True, seed: int = 0):
    """A random 2-layer Llama causal LM and its tokenizer: ``(model, tokenizer)``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = tiny_tokenizer(chat_template)
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=512, tie_word_embeddings=True, initializer_range=0.5,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    return LlamaForCausalLM(cfg).eval(), tok


def tiny_whisper_config(d_model: int = 32, mels: int = 80):
    """A 2-layer Whisper config (same 30-s / 1500-position layout as the real ones)."""
    from transformers import WhisperConfig

    return WhisperConfig(vocab_size=128, num_mel_bins=mels, d_model=d_model, encoder_layers=2, decoder_layers=2,
                         encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
                         decoder_ffn_dim=2 * d_model, max_source_positions=1500, max_target_positions=64,
                         pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1)


def tiny_whisper(seed: int = 0):
    """A random tiny `WhisperForConditionalGeneration` (eval mode)."""
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    return WhisperForConditionalGeneration(tiny_whisper_config()).eval()


def save_tiny_wav2vec2(directory: str | Path, seed: int = 0) -> Path:
    """Save a random tiny `Wav2Vec2Model` (+ feature extractor) to `directory`; returns it."""
    from transformers import Wav2Vec2Config, Wav2Vec2FeatureExtractor, Wav2Vec2Model

    torch.manual_seed(seed)
    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16, 16), conv_stride=(5, 4, 4), conv_kernel=(10, 4, 4),
                         num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2, feat_extract_norm="layer")
    directory = Path(directory)
    Wav2Vec2Model(cfg).save_pretrained(directory)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, do_normalize=True,
                             return_attention_mask=True).save_pretrained(directory)
    return directory


def save_tiny_llm(directory: str | Path, chat_template: bool = True) -> Path:
    """Save `tiny_llm()` (model + tokenizer) to `directory` so it loads by path; returns it."""
    model, tok = tiny_llm(chat_template=chat_template)
    directory = Path(directory)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
