"""The AMI simulator: a fake Asterisk for tests, the demo and the benchmark.

* ``AmiSimulator`` (``server``): a TCP server speaking the manager protocol,
  with fault switches and a record of the actions it received;
* ``load_capture`` (``capture``): the recorded sessions in ``ami-captures/``;
* ``generate`` (``traffic``): scripted contact-center traffic;
* ``RawAmiClient`` (``client``): a bare AMI client for wire-level tests;
* ``PbxState`` (``pbxstate``): the calls, bridges and queues the emitted events
  leave behind, which answer the resync lists (``AmiSimulator(track_state=True)``).
"""

from ctid.sim.capture import Capture, load_capture, parse_capture
from ctid.sim.client import RawAmiClient
from ctid.sim.pbxstate import PbxState
from ctid.sim.server import (
    LIST_ACTIONS,
    AmiSimulator,
    Handler,
    ListSpec,
    SimClient,
    error,
    event_list,
    response,
    success_handler,
)
from ctid.sim.traffic import Timing, agent_extensions, generate, queue_status_items

__all__ = [
    "LIST_ACTIONS",
    "AmiSimulator",
    "Capture",
    "Handler",
    "ListSpec",
    "PbxState",
    "RawAmiClient",
    "SimClient",
    "Timing",
    "agent_extensions",
    "error",
    "event_list",
    "generate",
    "load_capture",
    "parse_capture",
    "queue_status_items",
    "response",
    "success_handler",
]
