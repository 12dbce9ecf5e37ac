"""The model's checkpoint: its calls and agents as bytes for SQLite, and back.

A restarted daemon takes up the calls the previous run had open (``Model.restore``),
so that its resync can close those that ended while it was down: Asterisk answers
a new AMI session with what is up now, never with what ended before it connected.

The bytes are a pickle of ``ModelState`` (frozen dataclasses of strings, numbers,
tuples and maps): written and read only by ctid, in ctid's own database, which
whoever could alter it could alter anyway. A checkpoint of another ctid version,
or of model classes with other fields, is not used (the ``fingerprint`` differs):
the daemon then starts without it, as it did before checkpoints existed.
"""

from __future__ import annotations

import functools
import hashlib
import pickle
from dataclasses import fields

from ctid import __version__
from ctid.core.agents import Link, Phone, Presence
from ctid.core.model import Agent, Call, Channel, ModelState, Part
from ctid.core.records import ActivityRecord


@functools.cache
def fingerprint() -> str:
    """What a checkpoint must have been written by: this version, these fields
    (computed once: a checkpoint is saved up to five times a second)."""
    shapes = [
        f"{cls.__name__}({','.join(f.name for f in fields(cls))})"
        for cls in (ModelState, Channel, Call, Part, Agent, ActivityRecord)
    ]
    shapes += [
        f"{enum.__name__}({','.join(e.value for e in enum)})" for enum in (Presence, Phone, Link)
    ]
    digest = hashlib.sha256(";".join(shapes).encode()).hexdigest()[:16]
    return f"{__version__}/{digest}"


def dumps(state: ModelState) -> bytes:
    return pickle.dumps(state, protocol=5)


def loads(blob: bytes) -> ModelState:
    """The state in ``blob``; raises ``ValueError`` if it is not one."""
    try:
        state = pickle.loads(blob)  # noqa: S301 - our own bytes, see the module docstring
    except Exception as exc:  # pickle raises many kinds for damaged bytes
        raise ValueError(f"unreadable checkpoint: {exc}") from exc
    if not isinstance(state, ModelState):
        raise ValueError(f"not a model checkpoint: {type(state).__name__}")
    return state
