"""``python -m speechlm_lib ...`` is the ``speechlm`` command (also under ``accelerate launch -m speechlm_lib``)."""
from speechlm_lib.cli.main import main

if __name__ == "__main__":
    raise SystemExit(main())
