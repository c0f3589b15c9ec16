"""Models: the stage-1 Conformer and its vocabularies, speech encoders, projectors, prompts, the `SpeechLM`
that joins them to an LLM (`build.build_speechlm`), and where weights come from (hub, cache, offline copies)."""
