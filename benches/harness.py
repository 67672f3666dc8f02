"""Side-by-side timing of pocketml against peers in one process.

The machines are noisy (the second core comes and goes), so peers run
interleaved (A, B, A, B, ...) and the table quotes medians: of each peer's
times, and of the per-round ratios against the first entry (pocketml).
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

from pocketml._native import core


@dataclass
class Machine:
    read_gbps: float
    peak_fp32_gflops: float
    threads: int
    isa: str
    cpu: str

    @classmethod
    def measure(cls, buffer_bytes: int = 1 << 30) -> "Machine":
        m = core.measure_machine(buffer_bytes, 5)
        return cls(m["read_gbps"], m["peak_fp32_gflops"], m["threads"], m["isa"], platform.processor() or platform.machine())

    def header(self) -> str:
        return (f"machine: {self.cpu}, {self.threads} threads, ISA {self.isa}; measured read bandwidth "
                f"{self.read_gbps:.1f} GB/s, peak fp32 FMA {self.peak_fp32_gflops:.0f} GFLOP/s")


@dataclass
class Peer:
    name: str
    fn: Callable[[], object]


@dataclass
class Row:
    case: str
    peer: str
    median_ms: float
    gbps: float | None
    gflops: float | None
    pct_bandwidth: float | None
    pct_peak: float | None
    speedup_of_first: float  # median over rounds of (this peer's time / first peer's time)


@dataclass
class Report:
    machine: Machine
    rows: list[Row] = field(default_factory=list)
    probes: list[float] = field(default_factory=list)  # read GB/s of each probe, when settle_machine ran

    def compare(self, case: str, peers: list[Peer], *, bytes_moved: float | None = None, flops: float | None = None,
                rounds: int = 15, min_seconds: float = 0.02, settle_seconds: float = 0.05) -> list[Row]:
        """Times every peer `rounds` times, interleaved; each sample repeats the call
        until it lasts `min_seconds` so timer resolution does not matter. Before each
        sample the peer runs untimed for `settle_seconds`: a peer's idle threads can
        hold the cores for milliseconds after it returns (torch's OpenMP workers
        spin-wait after each parallel region), which would otherwise be charged to
        whichever peer runs next. 50 ms: a GQA decode step (0.38 ms alone) measured
        0.44-0.52 ms after torch SDPA with 10 ms of settling, 0.43 with 20 and
        0.37-0.38 with 50, torch's own time unchanged (2 threads, 2 cores)."""
        for peer in peers:
            peer.fn()  # warm-up: first-touch allocation, lazy init
        repeats = []
        for peer in peers:
            start, n = time.perf_counter(), 0
            while time.perf_counter() - start < min_seconds:
                peer.fn()
                n += 1
            repeats.append(max(1, n))
        samples = [[] for _ in peers]
        for _ in range(rounds):
            for i, peer in enumerate(peers):
                settle_end = time.perf_counter() + settle_seconds
                while time.perf_counter() < settle_end:
                    peer.fn()
                start = time.perf_counter()
                for _ in range(repeats[i]):
                    peer.fn()
                samples[i].append((time.perf_counter() - start) / repeats[i])
        rows = []
        for i, peer in enumerate(peers):
            t = statistics.median(samples[i])
            ratio = statistics.median(s / f for s, f in zip(samples[i], samples[0]))
            gbps = bytes_moved / t / 1e9 if bytes_moved else None
            gflops = flops / t / 1e9 if flops else None
            rows.append(Row(case, peer.name, t * 1e3, gbps, gflops,
                            100 * gbps / self.machine.read_gbps if gbps else None,
                            100 * gflops / self.machine.peak_fp32_gflops if gflops else None, ratio))
        self.rows += rows
        return rows

    def settle_machine(self, again: Machine) -> None:
        """Keeps the better of two probes (say, before and after the suites) and
        restates every row's percentages against it. A probe that shares the
        machine with a noisy neighbour reads low (40 instead of 80 GB/s seen here),
        which would make every "% read BW" look better than it is."""
        read = max(self.machine.read_gbps, again.read_gbps)
        peak = max(self.machine.peak_fp32_gflops, again.peak_fp32_gflops)
        for r in self.rows:
            if r.pct_bandwidth is not None:
                r.pct_bandwidth *= self.machine.read_gbps / read
            if r.pct_peak is not None:
                r.pct_peak *= self.machine.peak_fp32_gflops / peak
        self.probes = [self.machine.read_gbps, again.read_gbps]
        self.machine = Machine(read, peak, self.machine.threads, self.machine.isa, self.machine.cpu)

    def table(self) -> str:
        def fmt(v, spec):
            return "-" if v is None else format(v, spec)

        probes = "" if not self.probes else (" (best of " + " and ".join(f"{g:.1f}" for g in self.probes) +
                                             " GB/s, probed before and after)")
        lines = [self.machine.header() + probes, "",
                 "| case | implementation | median ms | GB/s | % read BW | GFLOP/s | % peak | time vs first |",
                 "|---|---|---:|---:|---:|---:|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r.case} | {r.peer} | {r.median_ms:.3f} | {fmt(r.gbps, '.1f')} | "
                         f"{fmt(r.pct_bandwidth, '.0f')} | {fmt(r.gflops, '.1f')} | {fmt(r.pct_peak, '.0f')} | "
                         f"{r.speedup_of_first:.2f}x |")
        return "\n".join(lines)

    def to_json(self) -> str:
        return json.dumps({"machine": asdict(self.machine), "rows": [asdict(r) for r in self.rows]}, indent=2)
