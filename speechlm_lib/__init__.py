"""speechlm_lib: give a large language model ears.

One concern a module (import what you need; nothing heavy is imported here):

* ``config``      -- the profile switch ($SPEECHLM_PROFILE) and paths
* ``records``     -- the Utterance record and JSONL manifests
* ``audio``       -- loading, validation, Whisper-style log-mel features
* ``text``        -- the shared normalizer, WER and CER
* ``tts``, ``textgen``, ``corpus`` -- the synthetic eSpeak NG corpus
* ``realdata``    -- local manifests and `datasets` corpora
* ``sources``, ``ct2`` -- model names to weights (hub, cache or packaged offline copies)
* ``trainer``, ``train_utils``, ``batching`` -- the one generic accelerate trainer, its helpers, bucketing
* ``callbacks``   -- trainer callbacks (printing, live loss plots in notebooks)
* ``conformer``, ``vocab``, ``ctc``, ``ctc_data``, ``ctc_stage`` -- stage 1: the CTC Conformer encoder
* ``encoders``, ``projectors``, ``ctc_projector``, ``prompting``, ``speechlm``, ``speechlm_data``, ``feature_cache``,
  ``generation``, ``speculative``, ``speechlm_config``, ``alignment``, ``ceiling``, ``whisper_baseline``
  -- stage 2: the speech-LLM
* ``tiny_models`` -- tiny random models for fast tests
* ``results``, ``tutorial`` -- results.json and the headless notebook runner
"""
__version__ = "0.1.0"
