"""Data: the `Utterance` record and manifests, audio and text, the synthetic eSpeak corpus, real corpora,
batching, the encoder-state cache, and the datasets each stage trains on."""
