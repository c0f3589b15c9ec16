"""speechlm_lib: give a large language model ears.

The tree is the recipe (import what you need; nothing heavy is imported here):

* ``config``     -- the profile switch ($SPEECHLM_PROFILE), paths, and `StageConfig`: every stage's config
                    as a dataclass tree, presets in ``configs/<stage>/<profile>.yaml``, ``key=value`` overrides
* ``data/``      -- ``records`` (the Utterance record, JSONL manifests), ``audio``, ``text`` (the normaliser),
                    the synthetic corpus (``tts``, ``textgen``, ``corpus``), ``realdata``, ``batching``,
                    ``feature_cache``, and the datasets the stages train on (``ctc_dataset``, ``speechlm_dataset``)
* ``models/``    -- ``conformer`` and ``vocab`` (stage 1), ``encoders``, ``projectors`` and ``ctc_projector``,
                    ``prompting``, ``speechlm`` (encoder -> projector -> LLM), ``build`` (a SpeechLM from a
                    ModelConfig), ``sources`` and ``ct2`` (hub, cache or packaged offline weights), ``tiny_models``
* ``training/``  -- ``trainer`` (the one generic accelerate loop), ``checkpointing`` (atomic, manifest-sealed
                    checkpoints), ``safety`` (NaN guards, JSON trainer state), ``callbacks``, ``utils``
* ``decoding/``  -- ``ctc`` (best paths), ``generation`` and ``speculative`` (the speech-LLM's decoding),
                    ``whisper`` (the complete Whisper as a baseline)
* ``metrics``    -- WER, CER, errors by training frequency
* ``evaluation/`` -- one evaluation for every notebook and benchmark: ``systems`` (the SYSTEMS registry, guarded
                    decoders), ``run.evaluate``, ``aggregate`` (bootstrap CIs, breakdowns), ``analysis``,
                    ``testsets`` and ``noise``, ``suite`` (notebook 05's table), ``explorer``, ``speed``
* ``recipes/``   -- one file per stage, its config and end-to-end functions: ``stage1_ctc``, ``stage2_align``
* ``experiments/`` -- studies on top of a recipe: ``stage2_compare`` (notebook 02's comparisons), ``copy_ceiling``
* ``results``, ``tutorial``, ``registry`` -- results.json, the headless notebook runner, builder registries
"""
__version__ = "0.1.0"
