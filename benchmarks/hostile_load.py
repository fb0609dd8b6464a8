"""Hostile load: Opus-bomb and empty-page-flood clients against `fullduplex serve` (the bundled demo model, in its
own process), beside one well-behaved real-time client. Prints the server's RSS growth, the slowest /api/health
answer and the share of its frames the real-time client got, against the bar of issue 16:

    RSS growth < 150 MB, /api/health within 2 s, the real-time client gets >= 80 % of its frames.

    python benchmarks/hostile_load.py                              # 1 bomb client at 40 messages/s, 20 s
    python benchmarks/hostile_load.py --bombs 4 --rate 40 --floods 2 --seconds 30
    python benchmarks/hostile_load.py --bomb-packets 100           # the issue's 227-byte, 4 s page: refused
    python benchmarks/hostile_load.py --bomb-packets 100 --server-root ../main    # the same against another checkout

A bomb message is one Ogg page of one-byte Opus packets, each declaring 40 ms of audio (``--bomb-packets 48``: 123
bytes, 1.92 s, just under the server's 2 s per message; 100: 227 bytes, 4 s, over it). A bomb client whose session
the server ends reconnects at once, as an attacker would. A flood client sends messages of valid empty Ogg pages
just under the size limit as fast as its socket takes them. The real-time client sends one 80 ms frame every 80 ms
and counts the audio messages (one per model step) that come back while it sends and 0.5 s after: a starved event
loop or step loop shows as fewer (the server keeps stepping a session on silence, so the count is capped at the
frames sent).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
from aiohttp import ClientSession, WSMsgType

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fullduplex.server import protocol  # noqa: E402
from fullduplex.server.app import ServerConfig  # noqa: E402
from tests.server.ogg_craft import bomb, empty_pages, stream_start  # noqa: E402

FRAME = 1920


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def start_server(port: int, extra: list[str], root: Path = ROOT) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=f"{root}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
    cmd = [sys.executable, "-m", "fullduplex", "serve", "--port", str(port), *extra]
    server = subprocess.Popen(cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"error: the server exited while starting:\n{server.stdout.read()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2):
                return server
        except OSError:
            time.sleep(0.5)
    server.kill()
    raise SystemExit("error: the server did not answer /api/health within 300 s")


async def bomb_client(url: str, rate: float, packets: int, stop: float, stats: dict) -> None:
    while time.monotonic() < stop:
        try:
            async with ClientSession() as client, client.ws_connect(url) as ws:
                first = await ws.receive(timeout=10)
                if first.type != WSMsgType.BINARY or protocol.decode(first.data).kind != protocol.Kind.HANDSHAKE:
                    stats["bomb_refused"] += 1
                    await asyncio.sleep(0.5)
                    continue
                start, serial = stream_start()
                await ws.send_bytes(protocol.audio(start))
                drain = asyncio.create_task(_discard(ws, stats))
                sequence = 3
                while time.monotonic() < stop and not drain.done():
                    await ws.send_bytes(protocol.audio(bomb(serial, sequence, packets)))
                    stats["bomb_messages"] += 1
                    sequence += 1
                    await asyncio.sleep(1 / rate)
                drain.cancel()
        except (OSError, TimeoutError, ConnectionError) as e:
            stats["bomb_errors"] += 1
            stats["last_bomb_error"] = repr(e)
            await asyncio.sleep(0.1)


async def flood_client(url: str, size: int, stop: float, stats: dict) -> None:
    payload = protocol.audio(empty_pages(size - 1))
    while time.monotonic() < stop:
        try:
            async with ClientSession() as client, client.ws_connect(url) as ws:
                await ws.receive(timeout=10)
                drain = asyncio.create_task(_discard(ws, stats))
                while time.monotonic() < stop and not drain.done():
                    await ws.send_bytes(payload)
                    stats["flood_bytes"] += len(payload)
                drain.cancel()
        except (OSError, TimeoutError, ConnectionError):
            await asyncio.sleep(0.1)


async def _discard(ws, stats: dict) -> None:
    """Read (and drop) what the server sends an attacker, noting Error messages."""
    async for msg in ws:
        if msg.type == WSMsgType.BINARY and protocol.decode(msg.data).kind == protocol.Kind.ERROR:
            stats["attacker_errors"].add(protocol.decode(msg.data).text()[:90])
            return


async def realtime_client(url: str, seconds: float, stats: dict) -> None:
    encoder, rng = protocol.OpusEncoder(), np.random.default_rng(0)
    frames = int(seconds / 0.08)
    async with ClientSession() as client, client.ws_connect(url) as ws:
        assert protocol.decode((await ws.receive(timeout=30)).data).kind == protocol.Kind.HANDSHAKE

        async def read() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.BINARY and protocol.decode(msg.data).kind == protocol.Kind.AUDIO:
                    stats["good_received"] += 1

        reader = asyncio.create_task(read())
        began = time.monotonic()
        for t in range(frames):
            await asyncio.sleep(max(0.0, began + t * 0.08 - time.monotonic()))
            await ws.send_bytes(protocol.audio(encoder.encode((0.05 * rng.standard_normal(FRAME)).astype(np.float32))))
            stats["good_sent"] += 1
        await asyncio.sleep(0.5)
        reader.cancel()


async def watch(port: int, pid: int, stop: float, stats: dict) -> None:
    """Sample the server's RSS and time /api/health every 0.5 s."""
    loop = asyncio.get_running_loop()

    def health() -> float:
        """Seconds /api/health took to answer (a failure or the 30 s timeout counts as the time it took)."""
        began = time.monotonic()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=30) as response:
                response.read()
        except OSError:  # timeouts included
            stats["health_failures"] += 1
        return time.monotonic() - began

    while time.monotonic() < stop:
        stats["rss_max"] = max(stats["rss_max"], rss_mb(pid))
        stats["health_max"] = max(stats["health_max"], await loop.run_in_executor(None, health))
        await asyncio.sleep(0.5)


async def run(args: argparse.Namespace, port: int, pid: int) -> dict:
    url = f"ws://127.0.0.1:{port}/api/chat"
    stats: dict = {"bomb_messages": 0, "bomb_refused": 0, "bomb_errors": 0, "flood_bytes": 0, "good_sent": 0,
                   "good_received": 0, "attacker_errors": set(), "rss_max": 0.0, "health_max": 0.0, "health_failures": 0}
    stats["rss_before"] = rss_mb(pid)
    stop = time.monotonic() + args.seconds
    size = ServerConfig().max_message_bytes
    tasks = [bomb_client(url, args.rate, args.bomb_packets, stop, stats) for _ in range(args.bombs)]
    tasks += [flood_client(url, size, stop, stats) for _ in range(args.floods)]
    await asyncio.sleep(0)
    await asyncio.gather(*tasks, realtime_client(url, args.seconds - 1.0, stats), watch(port, pid, stop + 2, stats))
    return stats


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bombs", type=int, default=1, help="Opus-bomb clients (default: 1)")
    parser.add_argument("--rate", type=float, default=40.0, help="bomb messages per second per client (default: 40)")
    parser.add_argument("--bomb-packets", type=int, default=48,
                        help="one-byte 40 ms Opus packets per bomb page (default: 48, 1.92 s in 123 bytes)")
    parser.add_argument("--floods", type=int, default=1, help="empty-page flood clients (default: 1)")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the run (default: 20)")
    parser.add_argument("--port", type=int, default=18998, help="port for the server (default: 18998)")
    parser.add_argument("--server-root", type=Path, default=ROOT, metavar="DIR",
                        help="run the server from this checkout of fullduplex (a before/after comparison; default: "
                             "this one)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `fullduplex serve` (repeatable), e.g. --server-arg=--max-sessions=4")
    args = parser.parse_args()
    if args.seconds < 3 or args.rate <= 0 or not 0 < args.bomb_packets <= 255:
        parser.error("--seconds must be >= 3, --rate > 0, --bomb-packets 1..255")

    if not (args.server_root / "fullduplex" / "__init__.py").is_file():
        parser.error(f"--server-root {args.server_root}: not a fullduplex checkout (no fullduplex/__init__.py)")
    server = start_server(args.port, args.server_arg, args.server_root.resolve())
    try:
        stats = asyncio.run(run(args, args.port, server.pid))
    finally:
        server.terminate()
        try:
            log, _ = server.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            log, _ = server.communicate()
    growth = stats["rss_max"] - stats["rss_before"]
    share = min(stats["good_received"], stats["good_sent"]) / max(1, stats["good_sent"])
    tracebacks = log.count("Traceback")
    print(f"load: {args.bombs} bomb client(s) x {args.rate:.0f} msg/s of {27 + 2 * args.bomb_packets}-byte pages "
          f"({args.bomb_packets * 0.04:.2f} s each), {args.floods} flood client(s), {args.seconds:.0f} s")
    print(f"bomb messages sent {stats['bomb_messages']}, sessions refused {stats['bomb_refused']}, "
          f"flood bytes written to the socket {stats['flood_bytes'] / 2**20:.1f} MiB")
    for text in sorted(stats["attacker_errors"]):
        print(f"  attackers were told: {text}")
    print(f"server RSS {stats['rss_before']:.0f} MB -> max {stats['rss_max']:.0f} MB: growth {growth:.0f} MB "
          f"({'ok' if growth < 150 else 'FAIL'}: < 150)")
    print(f"slowest /api/health {stats['health_max']:.2f} s, {stats['health_failures']} unanswered within 30 s "
          f"({'ok' if stats['health_max'] <= 2 else 'FAIL'}: <= 2)")
    print(f"real-time client: {stats['good_received']} of {stats['good_sent']} frames ({share:.0%}) "
          f"({'ok' if share >= 0.8 else 'FAIL'}: >= 80 %)")
    print(f"tracebacks in the server log: {tracebacks}")
    behind = [line for line in log.splitlines() if "falling behind" in line]
    if behind:
        print(f"server: {behind[-1].split(': ', 1)[-1]}")
    return 0 if growth < 150 and stats["health_max"] <= 2 and share >= 0.8 and not tracebacks else 1


if __name__ == "__main__":
    raise SystemExit(main())
