"""``python -m bench.http_client``: the HTTP transports' own cost per request, against a real simulator.

Starts ``python -m simulator`` as a subprocess, then sends ``-n`` messages through the real
:class:`~campaigns.transports.http_api.SmsTransport` (or ``WhatsAppTransport``, ``--channel whatsapp``) from a
client subprocess, in ``--lanes`` concurrent lanes as the worker's sender does (``streams/sender.py``,
``_send_all``: ``sender.max_in_flight`` lanes over ``providers.max_connections`` pooled connections). Each round
reports:

* the client's CPU seconds per 1,000 requests (``time.process_time`` of the client process around the sends:
  the transport, aiohttp and the event loop, nothing of the worker's Kafka or PostgreSQL work);
* the simulator's CPU seconds per 1,000 requests (``/proc/<pid>/stat`` of its process across the round), so
  one sees whether the simulator or the client saturates first;
* messages per second (wall clock; indicative only on a shared machine);
* how many requests the simulator accepted in the round (read from its ``/_control/stats``): the round fails
  unless every message reached it and was accepted.

``--backends aiohttp,http1`` runs this tree once per client backend (``providers.http_client``) in each round
(default: the settings' default backend only). ``--compare REV`` also runs the ``campaigns`` package of git
revision ``REV`` with its default backend (extracted with ``git archive`` to a temporary directory and put first
on the client's ``sys.path``). Everything runs interleaved round by round (REV, this tree's backends, REV, ...)
against the same simulator; the summary gives each one's medians and its ratio to the first. ``--json PATH``
writes every round. Not part of ``python -m bench``: it needs no broker and no database.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, NamedTuple

# Only the standard library at module level: the client mode may put another tree's ``campaigns`` first on
# sys.path, which must happen before anything imports ``campaigns`` (bench.env does).

THIS_TREE = "this tree"


class _Code(NamedTuple):
    label: str
    tree: Path | None  # None: this tree
    backend: str | None  # None: the code's default backend


# --- the client process ---------------------------------------------------------------------------------------


async def _send(channel: str, count: int, lanes: int, tag: str) -> dict[str, Any]:
    from campaigns.errors import DeliveryError
    from campaigns.settings import load_settings
    from campaigns.transports.base import OutgoingMessage
    from campaigns.transports.http_api import SmsTransport, WhatsAppTransport

    providers = load_settings().providers  # base URLs point at the simulator (set by the parent)
    transport = SmsTransport(providers) if channel == "sms" else WhatsAppTransport(providers)
    # Built before the clock starts: the sender builds them too, but that is the sender's cost, not the transport's.
    messages = [
        OutgoingMessage(
            message_id=f"{tag}-{i}",
            campaign_id=tag,
            recipient_id=str(i),
            channel=channel,
            address=f"+1555{i % 10_000_000:07d}",
            body=f"Hello {i}, spring sale: 20% off today.",
            locale="en",
        )
        for i in range(count)
    ]
    warm = min(lanes, count) if count > lanes else 0  # open the pool's connections before the clock starts
    sent = 0
    errors: dict[str, int] = {}

    async def run(batch: list[Any]) -> None:
        nonlocal sent
        queue = iter(batch)

        async def lane() -> None:
            nonlocal sent
            for message in queue:
                try:
                    await transport.send(message)
                except DeliveryError as exc:
                    errors[str(exc)] = errors.get(str(exc), 0) + 1
                else:
                    sent += 1

        await asyncio.gather(*(lane() for _ in range(min(lanes, len(batch)))))

    try:
        await run(messages[:warm])
        cpu0, wall0 = time.process_time(), time.perf_counter()
        await run(messages[warm:])
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await transport.aclose()
    import campaigns.transports.http_api as module

    return {
        "timed": count - warm,
        "sent": sent,
        "errors": errors,
        "cpu_s": cpu,
        "wall_s": wall,
        "module": module.__file__,
        "backend": transport.backend,
    }


def _client(args: argparse.Namespace) -> int:
    if args.tree:
        sys.path.insert(0, args.tree)
    result = asyncio.run(_send(args.channel, args.n, args.lanes, args.tag))
    print(json.dumps(result), flush=True)
    return 0


# --- the parent: simulator, rounds, figures --------------------------------------------------------------------


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - the simulator on loopback
        return json.loads(response.read())


def _healthy(url: str) -> bool:
    try:
        return bool(_get(f"{url}/_control/health") is not None)
    except OSError:
        return False


def _extract(rev: str, into: Path) -> Path:
    """REV's ``campaigns`` package, unpacked under ``into`` (no worktree to clean up)."""
    from .env import REPO_ROOT

    git = ["git", "archive", rev, "campaigns"]
    archive = subprocess.run(git, cwd=REPO_ROOT, check=True, capture_output=True).stdout  # noqa: S603
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)  # noqa: S603,S607
    return into


def _round(
    url: str, sim_pid: int, env: dict[str, str], args: argparse.Namespace, code: _Code, tag: str
) -> dict[str, Any]:
    from .env import REPO_ROOT, proc_cpu_seconds

    argv = [
        sys.executable,
        "-m",
        "bench.http_client",
        "--client",
        "--channel",
        args.channel,
        "-n",
        str(args.n),
        "--lanes",
        str(args.lanes),
        "--tag",
        tag,
    ]
    label, tree = code.label, code.tree
    if tree is not None:
        argv += ["--tree", str(tree)]
    if code.backend is not None:
        env = dict(env, CAMPAIGNS_PROVIDERS__HTTP_CLIENT=code.backend)
    before = _get(f"{url}/_control/stats")[args.channel]["accepted"]
    sim_cpu0 = proc_cpu_seconds(sim_pid)
    done = subprocess.run(argv, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=600)  # noqa: S603
    sim_cpu = proc_cpu_seconds(sim_pid) - sim_cpu0
    if done.returncode != 0:
        raise RuntimeError(f"client for {label} exited {done.returncode}: {done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    accepted = _get(f"{url}/_control/stats")[args.channel]["accepted"] - before
    if result["sent"] != args.n or accepted != args.n:
        raise RuntimeError(
            f"{label}: {result['sent']} of {args.n} sent, {accepted} accepted by the simulator, "
            f"errors {result['errors']}"
        )
    if tree is not None and not result["module"].startswith(str(tree)):
        raise RuntimeError(f"{label} ran {result['module']}, not the tree under {tree}")
    if code.backend is not None and result["backend"] != code.backend:
        raise RuntimeError(f"{label} ran the {result['backend']} backend")
    timed = result["timed"]
    return {
        "code": label,
        "requests": args.n,
        "accepted_by_simulator": accepted,
        "client_cpu_s_per_1k": result["cpu_s"] / timed * 1000,
        # The simulator's CPU covers the warm-up requests too: per request over all of them.
        "simulator_cpu_s_per_1k": sim_cpu / args.n * 1000,
        "messages_per_s": timed / result["wall_s"],
        "backend": result["backend"],
    }


def _parent(args: argparse.Namespace) -> int:
    from .env import REPO_ROOT, free_port, wait_for

    http_port, smtp_port = free_port(), free_port()
    url = f"http://127.0.0.1:{http_port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CAMPAIGNS_PROVIDERS__")}
    env.update(
        PYTHONPATH=str(REPO_ROOT),
        CAMPAIGNS_PROVIDERS__SMS_BASE_URL=f"{url}/sms",
        CAMPAIGNS_PROVIDERS__WHATSAPP_BASE_URL=f"{url}/whatsapp",
        CAMPAIGNS_PROVIDERS__SMTP_PORT=str(smtp_port),
        CAMPAIGNS_PROVIDERS__MAX_CONNECTIONS=str(args.connections),
    )
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        codes: list[_Code] = []
        if args.compare:
            codes.append(_Code(args.compare, _extract(args.compare, Path(tmp)), None))
        for backend in args.backends.split(",") if args.backends else [None]:
            codes.append(_Code(f"{THIS_TREE} ({backend})" if backend else THIS_TREE, None, backend))
        sim_argv = [
            sys.executable,
            "-m",
            "simulator",
            "--http-port",
            str(http_port),
            "--smtp-port",
            str(smtp_port),
            "--log-level",
            "warning",
            "--open-service-window",
        ]
        with open(Path(tmp) / "simulator.log", "wb") as sim_log:
            simulator = subprocess.Popen(sim_argv, env=env, cwd=REPO_ROOT, stdout=sim_log, stderr=subprocess.STDOUT)  # noqa: S603
            try:
                wait_for(lambda: _healthy(url) or simulator.poll() is not None, timeout=30, what="the simulator")
                if simulator.poll() is not None:
                    raise RuntimeError(f"the simulator exited {simulator.returncode}")
                for round_no in range(1, args.rounds + 1):
                    for index, code in enumerate(codes):
                        row = _round(url, simulator.pid, env, args, code, tag=f"r{round_no}c{index}")
                        rows.append({"round": round_no, **row})
                        print(
                            f"round {round_no} {code.label}: client {row['client_cpu_s_per_1k']:.3f}, simulator "
                            f"{row['simulator_cpu_s_per_1k']:.3f} CPU s /1k requests, "
                            f"{row['messages_per_s']:,.0f} msg/s, {row['accepted_by_simulator']} accepted by "
                            f"the simulator (load {os.getloadavg()[0]:.2f})",
                            flush=True,
                        )
            finally:
                simulator.terminate()
                try:
                    simulator.wait(10)
                except subprocess.TimeoutExpired:
                    simulator.kill()
                    simulator.wait(10)
    medians = {}
    first = codes[0].label
    for code in codes:
        mine = [r for r in rows if r["code"] == code.label]
        medians[code.label] = m = {
            k: statistics.median(r[k] for r in mine)
            for k in ("client_cpu_s_per_1k", "simulator_cpu_s_per_1k", "messages_per_s")
        }
        ratio = m["client_cpu_s_per_1k"] / medians[first]["client_cpu_s_per_1k"]
        print(
            f"{code.label}: median client {m['client_cpu_s_per_1k']:.3f}, simulator "
            f"{m['simulator_cpu_s_per_1k']:.3f} CPU s /1k requests, {m['messages_per_s']:,.0f} msg/s over "
            f"{len(mine)} rounds; client CPU per request {ratio:.2f}x {first}'s"
        )
    if args.json:
        Path(args.json).write_text(json.dumps({"args": vars(args), "rounds": rows, "medians": medians}, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.http_client", description=__doc__.split("\n\n")[0])
    p.add_argument("-n", type=int, default=20_000, help="requests per round (default 20000)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--channel", choices=("sms", "whatsapp"), default="sms")
    p.add_argument("--lanes", type=int, default=200, help="concurrent sends (the sender's max_in_flight)")
    p.add_argument("--connections", type=int, default=100, help="providers.max_connections")
    p.add_argument("--backends", metavar="NAMES", help="this tree once per backend, e.g. aiohttp,http1")
    p.add_argument("--compare", metavar="REV", help="also run REV's campaigns package, interleaved")
    p.add_argument("--json", metavar="PATH")
    # The client process (started by the parent):
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--tree", help=argparse.SUPPRESS)
    p.add_argument("--tag", default="m", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.n < 1 or args.rounds < 1 or args.lanes < 1:
        p.error("-n, --rounds and --lanes must be positive")
    return _client(args) if args.client else _parent(args)


if __name__ == "__main__":
    raise SystemExit(main())
