"""The MQTT contract v1 (DESIGN.md): topic names and payload shapes.

Every payload ctid publishes is built here, so the contract integrators rely on
is readable in one place. Fields are only ever added within v1, never renamed.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from ctid.core.records import ActivityRecord, CallbackRecord, CallRecord

VERSION = 1


def iso(ts: float | None) -> str | None:
    """Epoch seconds as ISO-8601 UTC with milliseconds (``2026-11-22T00:42:41.769Z``)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def agent_topic(agent: str, leaf: str) -> str:
    return f"v1/agents/{agent}/{leaf}"


def agent_of_topic(topic: str) -> str | None:
    """The agent whose topic this is (``v1/agents/{agent}/{leaf}``), else None."""
    parts = topic.split("/")
    if len(parts) == 4 and parts[0] == "v1" and parts[1] == "agents" and parts[2]:
        return parts[2]
    return None


STATUS_TOPIC = "v1/status"
CRM_ACTIVITY_TOPIC = "v1/crm/activity"
CRM_CALLS_TOPIC = "v1/crm/calls"
GENERAL_INBOX_TOPIC = "v1/inbox/general"


def envelope(kind: str, ts: float, **fields: Any) -> dict[str, Any]:
    """The common head of every payload: ``type``, ``v`` and ``ts``."""
    return {"type": kind, "v": VERSION, "ts": iso(ts), **fields}


def status_payload(
    *, ts: float, pbx: str, broker: str, version: str, daemon: str = "running"
) -> dict[str, Any]:
    return envelope("status", ts, daemon=daemon, pbx=pbx, broker=broker, version=version)


def activity_payload(rec: ActivityRecord, *, ts: float, seq: int) -> dict[str, Any]:
    customer: dict[str, Any] = {"number": rec.customer_number, "e164": rec.customer_e164}
    if rec.customer_record:
        customer["record"] = rec.customer_record
    return envelope(
        "activity",
        ts,
        id=rec.id,
        agent=rec.agent,
        interaction_id=rec.interaction_id,
        media=rec.media,
        direction=rec.direction,
        customer=customer,
        queue=rec.queue,
        offered_at=iso(rec.offered_at),
        answered_at=iso(rec.answered_at),
        ended_at=iso(rec.ended_at),
        ring_s=round(rec.ring_s, 3),
        talk_s=round(rec.talk_s, 3),
        hold_s=round(rec.hold_s, 3),
        wrapup_s=round(rec.wrapup_s, 3),
        outcome=rec.outcome,
        notes=rec.notes,
        wrapup_code=rec.wrapup_code,
        transfer_to=rec.transfer_to,
        ended_while_disconnected=rec.ended_while_disconnected,
        # How the agent came to the interaction (inbound, transfer, consult,
        # outbound, internal) and what else is known (consult_s, closed_by…).
        why=rec.extra.get("why", ""),
        details={k: v for k, v in rec.extra.items() if k != "why"},
        seq=seq,
    )


def call_record_payload(rec: CallRecord, *, ts: float) -> dict[str, Any]:
    return envelope(
        "call_record",
        ts,
        interaction_id=rec.interaction_id,
        media=rec.media,
        direction=rec.direction,
        customer={"number": rec.customer_number, "e164": rec.customer_e164},
        queue=rec.queue,
        started_at=iso(rec.started_at),
        answered_at=iso(rec.answered_at),
        ended_at=iso(rec.ended_at),
        wait_s=round(rec.wait_s, 3),
        talk_s=round(rec.talk_s, 3),
        hold_s=round(rec.hold_s, 3),
        outcome=rec.outcome,
        agents=list(rec.agents),
        transfers=rec.transfers,
        ended_while_disconnected=rec.ended_while_disconnected,
    )


def callback_item(rec: CallbackRecord) -> dict[str, Any]:
    """One callback work item as an inbox lists it."""
    return {
        "id": rec.id,
        "number": {"raw": rec.number, "e164": rec.e164},
        "reason": rec.reason,
        "queue": rec.queue,
        "preferred_time": rec.preferred_time,
        "partner": rec.partner,
        "source": rec.source,
        "status": rec.status,
        "requested_at": iso(rec.requested_at),
        "interaction_id": rec.interaction_id,
    }


def inbox_payload(*, ts: float, owner: str, items: list[CallbackRecord]) -> dict[str, Any]:
    """An inbox (``general`` or an agent's), retained: its open callback items, oldest first."""
    return envelope("inbox", ts, inbox=owner, items=[callback_item(r) for r in items])
