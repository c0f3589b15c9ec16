"""The ``speechlm`` command (also ``python -m speechlm_lib``): the researcher's path through the recipes.

* ``main``       -- the parser and the dispatch (errors become one line and exit code 2)
* ``common``     -- ``--config`` / ``--preset`` / ``--set``, the settings listing, run folders, saved models
* ``stages``     -- ``STAGES``: the stages ``speechlm train`` knows (name -> config class + run function)
* ``commands``   -- ``corpus``, ``train``, ``evaluate``, ``export``
* ``transcribe`` -- ``transcribe``: files and folders, long audio in pieces, JSONL or text
"""
