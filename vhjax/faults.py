"""Fault injection for the reliability tests: kill this process (SIGKILL, as `kill -9`) at a named point.

Set `VHJAX_FAULT=<point>` (or `<point>@<n>`: the n-th time the point is reached, default the first)
in the environment of a run; when the run reaches that point it kills itself with no cleanup at all,
exactly as an external `kill -9` would at that instant. Unset (the normal case) every point is a
dictionary lookup and nothing else. The points:

- `store.add`, `store.finish`, `store.rounds`: inside a store transaction, before its COMMIT (adding
  trials, recording a generation's outcomes with the strategy state, writing PBT's rounds);
- `search.evaluated`: a generation evaluated, nothing of it stored yet;
- `checkpoint.save`: a training chunk evaluated and logged, its checkpoint not written yet;
- `checkpoint.before_rename`: orbax has written a checkpoint's temporary folder whole, not yet
  renamed it to its step (the last instant before the checkpoint exists);
- `checkpoint.saved`: right after a checkpoint is written.
"""

from __future__ import annotations

import os
import signal

ENV = "VHJAX_FAULT"
POINTS = ("store.add", "store.finish", "store.rounds", "search.evaluated", "checkpoint.save", "checkpoint.before_rename",
          "checkpoint.saved")
_reached: dict[str, int] = {}


def point(name: str) -> None:
    """Kill the process here if `VHJAX_FAULT` names this point (and this is its n-th visit)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    target, _, count = spec.partition("@")
    if target != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if _reached[name] == (int(count) if count else 1):
        os.kill(os.getpid(), signal.SIGKILL)
