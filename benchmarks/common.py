"""Helpers shared by the benchmarks: timing, a printed table, JSON and a PNG
plot beside it (results/NAME.json, results/NAME.png)."""

from __future__ import annotations

import contextlib
import json
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def timed(fn: Callable[[], object], repeat: int) -> list[float]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return samples


def latencies_us(fn: Callable[[], object], count: int, warmup: int = 50) -> list[float]:
    for _ in range(warmup):
        fn()
    samples = []
    clock = time.perf_counter_ns
    for _ in range(count):
        start = clock()
        fn()
        samples.append((clock() - start) / 1000)
    return samples


def percentile(samples: Sequence[float], q: float) -> float:
    ordered = sorted(samples)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def summary_us(samples: Sequence[float]) -> dict[str, float]:
    return {"p50_us": round(percentile(samples, 50), 2),
            "p99_us": round(percentile(samples, 99), 2),
            "mean_us": round(statistics.fmean(samples), 2), "count": len(samples)}


def print_table(title: str, header: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [list(map(str, header))] + [[_fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    print(f"\n{title}")
    for n, row in enumerate(cells):
        print("  " + "  ".join(c.rjust(w) if i else c.ljust(w)
                               for i, (c, w) in enumerate(zip(row, widths, strict=True))))
        if n == 0:
            print("  " + "  ".join("-" * w for w in widths))


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.1f}"
    return str(value)


def save(name: str, results: dict[str, object]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    results = {"benchmark": name, "python": sys.version.split()[0],
               "machine": platform.machine(), "timestamp": time.time(), **results}
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=2))
    print(f"\nwrote {path}")
    return path


def bar_plot(name: str, title: str, labels: Sequence[str], values: Sequence[float],
             ylabel: str, baseline_label: str | None = None) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install 'vsgx[plot]')")
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    colors = ["#888888" if label == baseline_label else "#3b6ea8" for label in labels]
    bars = ax.bar(labels, values, color=colors)
    ax.bar_label(bars, fmt="%.3g")
    ax.set_title(title)
    ax.set_ylabel(ylabel)
    fig.tight_layout()
    path = RESULTS / f"{name}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}")
    return path


@contextlib.contextmanager
def evm_process(workdir: Path, executor: str = "unicorn", *extra: str,
                protocol_version: int | None = None) -> Iterator[object]:
    """`vsgx evm serve` on a Unix socket in ``workdir`` (root secret zero, as
    the in-process runs use; ``extra`` options added), and an AVM connected
    to it (offering ``protocol_version``: an older AVM's)."""
    from vsgx.avm import connect_evm
    from vsgx.channel import EvidencePolicy
    from vsgx.host import Avm

    data = workdir / "evm-data"
    data.mkdir(exist_ok=True)
    (data / "platform-root-secret").write_bytes(bytes(32))
    (data / "platform-root-secret").chmod(0o600)
    address = f"unix:{workdir / 'evm.sock'}"
    server = subprocess.Popen([sys.executable, "-m", "vsgx", "evm", "serve", "--listen", address,
                               "--data-dir", str(data), "--executor", executor, *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert server.stdout is not None
    server.stdout.readline()
    # Keep reading what it says, so that a full pipe never stops it.
    threading.Thread(target=server.stdout.read, daemon=True).start()
    avm = None
    try:
        avm = Avm(connect_evm(address, EvidencePolicy(allow_unprotected=True), warn=False,
                              protocol_version=protocol_version))
        avm.evm_pid = server.pid  # type: ignore[attr-defined]  # for cpu_seconds
        yield avm
    finally:
        if avm is not None:
            avm.close()
        server.terminate()
        server.wait()


_ECHO_SERVER = """
import socket, sys
from vsgx.channel.identity import ServerIdentity
from pathlib import Path
context = ServerIdentity("none", Path(sys.argv[2])).context
tls = context.wrap_socket(socket.socket(fileno=int(sys.argv[1])), server_side=True)
size = int(sys.argv[3])
while True:
    data = tls.recv(65536)
    if not data:
        break
    while len(data) < size:
        data += tls.recv(65536)
    tls.sendall(data)
"""


def tls_ping_pong_us(count: int, size: int, workdir: Path) -> dict[str, float]:
    """The floor of any channel round trip here: Python's ssl (TLS 1.3, the
    channel's own contexts) over a Unix socket pair to an echo process,
    blocking sockets, ``size`` bytes each way, no framing. p50/p99 in us."""
    import socket

    from vsgx.channel.transport import client_context

    ours, theirs = socket.socketpair()
    echo = subprocess.Popen([sys.executable, "-c", _ECHO_SERVER, str(theirs.fileno()),
                             str(workdir / "echo-key.pem"), str(size)],
                            pass_fds=(theirs.fileno(),))
    theirs.close()
    tls = client_context().wrap_socket(ours, server_side=False)
    message = b"x" * size

    def once() -> None:
        tls.sendall(message)
        got = 0
        while got < size:
            got += len(tls.recv(65536))

    try:
        return summary_us(latencies_us(once, count))
    finally:
        tls.close()
        echo.wait()


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its live children (an
    EVM and its runner processes), from /proc; 0 where /proc is missing."""
    import os

    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    try:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(entry) == pid or int(fields[1]) == pid:
                total += int(fields[11]) + int(fields[12])
    except OSError:
        return 0.0
    return total / ticks


@contextlib.contextmanager
def cpu_hog() -> Iterator[int]:
    """One busy process beside the measurement (``while 1: pass``), killed
    by its PID afterwards; yields the PID."""
    hog = subprocess.Popen([sys.executable, "-c", "while 1: pass"])
    try:
        time.sleep(0.2)  # let it take its core
        yield hog.pid
    finally:
        hog.kill()
        hog.wait()


def floors(workdir: Path, count: int) -> dict[str, dict[str, float]]:
    """The floors of one entry, measured now (kernels/floors.c): ENCLU ->
    its trap -> return, INT3 -> SIGTRAP -> return (the trap of fast exits
    out of the gate's reach), a bare futex ping-pong between two processes,
    and a spinning shared-memory ping-pong (the floor of a gate exit)."""
    binary = workdir / "floors"
    if not binary.exists():
        subprocess.run(["gcc", "-O2", "-o", str(binary),
                        str(Path(__file__).resolve().parent / "kernels" / "floors.c")],
                       check=True)
    found = {}
    for what, label in (("enclu", "raw ENCLU trap round trip"),
                        ("sigtrap", "raw SIGTRAP round trip"),
                        ("futex", "futex ping-pong, 2 processes"),
                        ("spin", "spinning ping-pong, 2 processes")):
        out = subprocess.run([str(binary), what, str(count)], capture_output=True, text=True,
                             check=True).stdout
        found[label] = summary_us([int(line.split()[1]) / 1000 for line in out.splitlines()
                                   if line.startswith(what + " ")])
    return found
