"""Stage 5, evaluation: one module every notebook and benchmark uses to score any system on any test set.

* ``systems``  -- the SYSTEMS registry (stage-1 CTC, a saved speech-LLM of stage 2/3/4, its projector alone,
                  Whisper, faster-whisper), one ``decode(utts, keywords) -> Decoded`` interface, guarded
* ``guards``   -- the length cap tied to the audio and the repetition guard every decoder passes through
* ``records``  -- one decoded utterance: reference, hypothesis, word alignment, keyword hits, seconds
* ``run``      -- ``evaluate(system, utts)``: decode, align, summarise, time, peak memory
* ``aggregate``-- WER/CER, U-/B-WER, BLEU/chrF, RTF, bootstrap intervals, paired comparison, breakdowns
* ``analysis`` -- substitutions, errors by word frequency, insertions, what the LLM fixed or broke
* ``testsets`` -- named test sets (synthetic, noisy copies, speechocean762, any DataSource); ``noise``
* ``explorer`` -- the ipywidgets explorer of notebook 05; ``speed`` -- the speech-LLM against faster-whisper
"""
