"""speechlm_lib: give a large language model ears.

The tree is the recipe (import what you need; nothing heavy is imported here):

* ``config``     -- the profile switch ($SPEECHLM_PROFILE), paths, threads, and `StageConfig`: every stage's
                    config as a dataclass tree, presets in ``configs/<stage>/<profile>.yaml``, ``key=value`` overrides
* ``data/``      -- ``records`` (the Utterance record, JSONL manifests), ``audio``, ``text`` (the normaliser),
                    the synthetic corpus (``tts``, ``textgen``, ``corpus``), ``realdata`` and ``sources`` (where a
                    stage's utterances come from: synthetic, a manifest folder, a `datasets` corpus), ``batching``,
                    ``feature_cache``, ``tasks`` (what the instruction asks for: ASR, translation, ...),
                    ``text_checks``, and the datasets the stages train on (``ctc_dataset``, ``speechlm_dataset``)
* ``models/``    -- ``conformer`` and ``vocab`` (stage 1), ``encoders``, ``projectors`` and ``ctc_projector``,
                    ``prompting``, ``context`` (keyword lists in the prompt), ``speechlm`` (encoder -> projector
                    -> LLM), ``lora`` (adapters on the LLM), ``build`` (a SpeechLM from a ModelConfig), ``kv``,
                    ``sources``, ``ct2`` and ``ct2_parts`` (hub, cache or packaged offline weights, a model.bin split
                    over packages), ``tiny_models``
* ``training/``  -- ``trainer`` (the one generic accelerate loop), ``checkpointing`` (atomic, manifest-sealed
                    checkpoints), ``safety`` (NaN guards, JSON trainer state), ``callbacks``, ``utils``
* ``decoding/``  -- ``ctc`` (best paths), ``generation`` and ``speculative`` (the speech-LLM's decoding),
                    ``chunking`` (long audio), ``whisper`` (the complete Whisper as a baseline)
* ``metrics``    -- WER, CER, errors by training frequency, BLEU / chrF; ``metrics_bias``: WER / U-WER / B-WER,
                    keyword F1 and false alarms against biasing lists (stage 4)
* ``evaluation/`` -- one evaluation for every notebook and benchmark: ``systems`` (the SYSTEMS registry, guarded
                    decoders), ``run.evaluate``, ``aggregate`` (bootstrap CIs, breakdowns), ``analysis``,
                    ``testsets`` and ``noise``, ``suite`` (notebook 05's table), ``explorer``, ``speed``
* ``recipes/``   -- one file per stage, its config and end-to-end functions: ``stage1_ctc``, ``stage2_align``,
                    ``stage3_lora`` (LoRA + multitask), ``stage4_context`` (keyword biasing by in-context training)
* ``experiments/`` -- studies on top of a recipe: ``stage2_compare`` (notebook 02's comparisons), ``copy_ceiling``,
                    ``text_ability`` (what stage 3 costs the LLM as a text model)
* ``cli/``, ``export`` -- the ``speechlm`` command (corpus, train STAGE, evaluate, transcribe, export)
* ``results``, ``tutorial``, ``registry`` -- results.json, the headless notebook runner, builder registries
* ``course``, ``plots``, ``publish`` -- what every notebook shares (threads, smoke notes), figures and their
                    checks, executed notebooks made fit to read (progress bars as text, output checks)
"""
__version__ = "0.1.0"
