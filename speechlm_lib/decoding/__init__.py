"""Decoding: CTC best paths, the speech-LLM's greedy / beam / draft-checked decoding, and the Whisper baseline."""
