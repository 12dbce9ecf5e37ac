"""``python -m ctid.sim``: a simulator process as the demo runs it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import pytest

from ctid.sim import RawAmiClient

SECRET = "demo-secret"


async def start(*args: str, env: dict[str, str]) -> tuple[asyncio.subprocess.Process, int]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ctid.sim",
        "--port",
        "0",
        *args,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(20):
        line = (await proc.stdout.readline()).decode()
    match = re.search(r"listening on 127\.0\.0\.1:(\d+)", line)
    assert match, line
    return proc, int(match.group(1))


async def stop(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGTERM)
    async with asyncio.timeout(10):
        return await proc.wait()


async def test_generates_traffic_with_the_secret_from_the_environment() -> None:
    proc, port = await start(
        "--traffic", "--callers", "3", "--speed", "0", env={"CTID_SIM_SECRET": SECRET}
    )
    try:
        async with await RawAmiClient.connect("127.0.0.1", port) as client:
            assert (await client.login("ctid", "wrong")).response == "Error"
        async with await RawAmiClient.connect("127.0.0.1", port) as client:
            assert (await client.login("ctid", SECRET)).response == "Success"
            joined = await client.wait_for(lambda m: m.event == "QueueCallerJoin", timeout=10)
            assert joined.get("Queue") == "support"
    finally:
        assert await stop(proc) == 0


async def test_secret_file_and_replay(tmp_path: Path) -> None:
    secret_file = tmp_path / "ami.secret"
    secret_file.write_text(SECRET + "\n")
    capture = Path(os.environ.get("CTID_CAPTURES", "/work/shared/ami-captures"))
    capture /= "inbound_answered.ami"
    if not capture.is_file():
        pytest.skip("no captures")
    proc, port = await start(
        "--secret-file", str(secret_file), "--replay", str(capture), "--speed", "0", env={}
    )
    try:
        async with await RawAmiClient.connect("127.0.0.1", port) as client:
            await client.login("ctid", SECRET)
            connect = await client.wait_for(lambda m: m.event == "AgentConnect", timeout=10)
            assert connect.get("Interface") == "PJSIP/1001"
    finally:
        assert await stop(proc) == 0


async def test_refuses_to_run_without_a_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CTID_SIM_SECRET"}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ctid.sim",
        "--port",
        "0",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(20):
        _, err = await proc.communicate()
    assert proc.returncode == 1
    assert b"CTID_SIM_SECRET" in err


def test_there_is_no_secret_argument() -> None:
    from ctid.sim.__main__ import build_parser  # noqa: PLC0415

    options = {o for action in build_parser()._actions for o in action.option_strings}
    assert "--secret" not in options
