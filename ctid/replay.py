"""``ctid replay``: a recorded AMI capture through the real model, every message printed.

Time comes from the events' ``Timestamp`` header (``timestampevents = yes``).
Only unsolicited events are applied: list items and responses answering the
capture session's own actions (they carry no ``Timestamp``, README point 18)
are not events of the PBX.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ctid import __version__
from ctid.app import build_model, messages_of
from ctid.config import Config
from ctid.core import contract
from ctid.core.ami import AmiMessage, AmiParser


def capture_events(path: Path) -> Iterator[AmiMessage]:
    """The unsolicited events of a raw ``.ami`` capture, in order."""
    parser = AmiParser(expect_banner=True)
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 16):
            for msg in parser.feed(chunk):
                if msg.event and (msg.timestamp is not None or not msg.action_id):
                    yield msg


def replay(config: Config, capture: Path) -> Iterator[dict[str, Any]]:
    """Every message ctid would publish for ``capture``, as ``{topic, payload, retain, qos}``."""
    model = build_model(config)
    prefix = config.mqtt.topic_prefix
    started = False
    last = 0.0
    for msg in capture_events(capture):
        now = msg.timestamp if msg.timestamp is not None else last
        if not started and msg.timestamp is not None:
            started = True
            status = contract.status_payload(ts=now, pbx="up", broker="up", version=__version__)
            yield _line(prefix, contract.STATUS_TOPIC, status, retain=True, qos=1)
            for effect in model.initial_states(now):
                for pub in messages_of(effect):
                    yield _line(prefix, pub.topic, pub.payload, retain=pub.retain, qos=pub.qos)
        last = now
        if not started:
            continue
        # Time passes between events too (parts settle): the model's clock is the
        # events' own Timestamp.
        for effect in [*model.tick(now), *model.apply(msg, now)]:
            for pub in messages_of(effect):
                yield _line(prefix, pub.topic, pub.payload, retain=pub.retain, qos=pub.qos)


def _line(
    prefix: str, topic: str, payload: dict[str, Any], *, retain: bool, qos: int
) -> dict[str, Any]:
    return {"topic": f"{prefix}/{topic}", "payload": payload, "retain": retain, "qos": qos}
