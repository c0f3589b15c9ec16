"""What every notebook of the course does the same way.

* `start` -- the first code cell: the profile, torch's thread count (`config.set_threads`) and the
  figure style (`plots.style`), printed in one line.
* `note`  -- after every cell that prints a result: in the ``smoke`` profile it says plainly that the
  numbers only prove the plumbing; in every profile it quotes the committed reference run
  (``runs/cpu/results.json``), so prose never has to assert what *this* run will show.
* `reference` -- one figure of the reference run, for the notebooks' text.
* `clean` -- model output shown to students, with a short list of offensive words masked
  (a speech model that mishears can write anything).
"""
from __future__ import annotations

import json
import re
from functools import lru_cache

from speechlm_lib.config import profile, repo_root, set_threads

REFERENCE_PROFILE = "cpu"
PLUMBING = "only prove the plumbing"
#: words masked by `clean` (and searched for in every executed notebook by tests/test_course.py);
#: whole words (any case, ``fuck`` also inside ``fucking``), so names such as "Dickens" stay as they are
OFFENSIVE = ("fuck", "fucks", "fucked", "fucking", "fucker", "motherfucker", "shit", "shits", "shitty", "bullshit",
             "cunt", "cunts", "bitch", "bitches", "whore", "whores", "slut", "sluts", "twat", "wanker", "nigger",
             "niggers", "faggot", "faggots", "retard", "retarded", "asshole", "assholes", "bastard", "bastards")
_OFFENSIVE_RE = re.compile(r"\b(?:" + "|".join(OFFENSIVE) + r")\b", re.IGNORECASE)


def start(threads: int | None = None) -> str:
    """Set torch's threads (`threads`, else `config.threads()`), the figure style; print and return the profile."""
    from speechlm_lib import plots

    n = set_threads(threads)
    plots.style()
    name = profile()
    print(f"profile {name}, {n} torch thread{'s' * (n != 1)}"
          + ("  (smoke: a tiny run that checks the code end to end; its numbers mean nothing)" if name == "smoke"
             else ""))
    return name


@lru_cache(maxsize=None)
def _reference_stages(name: str) -> dict:
    path = repo_root() / "runs" / name / "results.json"
    if not path.is_file():
        return {}
    return json.loads(path.read_text()).get("stages", {})


def reference(stage: str, key: str, name: str = REFERENCE_PROFILE):
    """A metric of the committed reference run (``runs/cpu/results.json``), or None when absent."""
    return _reference_stages(name).get(stage, {}).get("metrics", {}).get(key)


def _fmt(value, kind: str) -> str:
    if kind == "%":
        return f"{100 * value:.1f} %"
    if kind == "s":
        return f"{value:.0f} s"
    return f"{value:,}" if isinstance(value, int) else f"{value:.3g}"


def note(*figures: tuple[str, str, str, str]) -> None:
    """Print what this cell's numbers mean (nothing is returned, so a cell can end with it).

    `figures`: ``(label, stage, key, kind)`` of reference-run metrics to quote beside this run's,
    kind ``"%"`` (a fraction shown in percent), ``"s"`` or ``""``. In the ``smoke`` profile the line
    starts by saying that the numbers only prove the plumbing."""
    quoted = [f"{label} {_fmt(v, kind)}" for label, stage, key, kind in figures
              if (v := reference(stage, key)) is not None]
    ref = (f"the reference {REFERENCE_PROFILE} run (runs/{REFERENCE_PROFILE}/results.json): " + ", ".join(quoted)
           if quoted else "")
    if profile() == "smoke":
        text = (f"[smoke profile] These numbers {PLUMBING}: a tiny model, a few steps, a handful of utterances. "
                + (f"For what the method does, see {ref}." if ref else "Run the cpu profile for real numbers."))
    else:
        text = f"[{profile()} profile] Compare with {ref}." if ref else ""
    if text:
        print(text)


def clean(text: str) -> str:
    """`text` with words containing one of `OFFENSIVE` replaced by asterisks."""
    return _OFFENSIVE_RE.sub(lambda m: "*" * len(m.group(0)), text)


def offensive_words(text: str) -> list[str]:
    """The words of `text` that contain one of `OFFENSIVE` (what `clean` would mask)."""
    return [m.group(0) for m in _OFFENSIVE_RE.finditer(text)]


def clean_frame(frame):
    """A pandas DataFrame with every text cell through `clean` (tables of model output)."""
    return frame.map(lambda v: clean(v) if isinstance(v, str) else v)
