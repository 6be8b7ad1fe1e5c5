"""The interconnect's roof: collectives' bus bandwidth over message sizes, on N ranks of this machine.

`measure(n, device)` starts n processes (torch.multiprocessing; gloo between CPU processes, NCCL
between GPUs, one GPU per rank), and in each times all-reduce and all-gather over message sizes
the way nccl-tests does: warm-ups, then a timed loop per size, each rank's time per call, the
slowest rank's kept (a collective ends when its last rank does).  Sizes are nccl-tests' S: the
all-reduce's buffer, the all-gather's gathered output.  Algorithm bandwidth is S / t; bus
bandwidth multiplies it by the collective's bus factor (rooflight.comm.bus_factor: 2(n-1)/n for
all-reduce, (n-1)/n for all-gather), the figure comparable to the link's.  The curve rises with S
(small messages pay the link's latency) to a plateau: the best bus bandwidth over the largest
sizes is the roof (`plateau`).  On GPUs, rank 0 also times a copy from GPU 0 to GPU 1.

rooflight.calibrate keeps the curve and the plateaus as figures of the calibration ("peer" link
roof: the all-reduce plateau).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .comm import Bandwidth
from .errors import UsageError

KINDS = ("all_reduce", "all_gather")
SIZES = tuple(2**k for k in range(12, 29, 2))  # 4 KiB ... 256 MiB
QUICK_SIZES = tuple(2**k for k in range(12, 25, 3))  # 4 KiB ... 16 MiB
PLATEAU_SIZES = 3  # the roof: the best bus bandwidth over the largest this many sizes


@dataclass(frozen=True)
class Point:
    kind: str  # "all_reduce", "all_gather", "p2p_copy"
    size: int  # bytes: S in nccl-tests' sense (see the module doc)
    ranks: int
    seconds: float  # per call, the slowest rank's

    @property
    def algbw(self) -> float:
        return Bandwidth(self.kind, self.size, self.ranks, self.seconds).algbw if self.kind != "p2p_copy" \
            else self.size / self.seconds

    @property
    def busbw(self) -> float:
        return Bandwidth(self.kind, self.size, self.ranks, self.seconds).busbw if self.kind != "p2p_copy" \
            else self.algbw


def plateau(points: Sequence[Point], kind: str) -> Point | None:
    """The point of `kind` with the best bus bandwidth among its PLATEAU_SIZES largest sizes."""
    of_kind = sorted((p for p in points if p.kind == kind), key=lambda p: p.size)
    if not of_kind:
        return None
    return max(of_kind[-PLATEAU_SIZES:], key=lambda p: p.busbw)


def check_ranks(n: int, device: str) -> None:
    """A UsageError unless `n` ranks can run here: two or more, and on CUDA a GPU for each."""
    import torch

    if n < 2:
        raise UsageError(f"--nproc {n}: the interconnect needs 2 or more ranks")
    if device.startswith("cuda"):
        have = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if have < n:
            raise UsageError(f"--nproc {n} on CUDA needs {n} GPUs (one a rank) and this machine has {have}: "
                             + (f"give --nproc {have} or fewer" if have >= 2 else
                                "calibrate the interconnect on a machine with two or more, or between CPU "
                                "processes (--device cpu)"))


def measure(n: int, device: str = "cpu", *, quick: bool = False, timeout: float = 600.0) -> list[Point]:
    """Time the collectives over `n` ranks of this machine (module doc); the curve, as Points."""
    import torch.multiprocessing as mp

    check_ranks(n, device)
    sizes = QUICK_SIZES if quick else SIZES
    with tempfile.TemporaryDirectory(prefix="rooflight-link-") as tmp:
        out = Path(tmp) / "points.json"
        ctx = mp.start_processes(_rank, args=(n, device, f"file://{tmp}/rendezvous", list(sizes), quick, str(out)),
                                 nprocs=n, join=False, start_method="spawn")
        deadline = time.monotonic() + timeout
        while not ctx.join(timeout=max(deadline - time.monotonic(), 0.1)):
            if time.monotonic() > deadline:
                for p in ctx.processes:
                    p.kill()
                raise UsageError(f"the interconnect's measurement over {n} ranks took over {timeout:.0f} s: stopped")
        rows = json.loads(out.read_text(encoding="utf-8"))
    return [Point(r["kind"], int(r["size"]), int(r["ranks"]), float(r["seconds"])) for r in rows]


def _iters(size: int, quick: bool) -> int:
    base = 5 if quick else 20
    return max(2, min(base, int(base * 2**22 / max(size, 1))))  # fewer calls for the big messages


def _seconds_per_call(call, iters: int, settle, done) -> float:
    """Two warm-up calls, settle(), then `iters` timed calls ended by done(): seconds per call."""
    for _ in range(2):
        call()
    settle()
    t0 = time.perf_counter()
    for _ in range(iters):
        call()
    done()
    return (time.perf_counter() - t0) / iters


def _rank(rank: int, n: int, device: str, init: str, sizes: list[int], quick: bool, out: str) -> None:
    import torch
    import torch.distributed as dist

    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.set_device(rank)
    dist.init_process_group("nccl" if cuda else "gloo", init_method=init, rank=rank, world_size=n)
    dev = torch.device("cuda", rank) if cuda else torch.device("cpu")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize(dev)

    def timed(call, iters: int) -> float:
        per_call = _seconds_per_call(call, iters, lambda: (sync(), dist.barrier()), sync)  # the ranks start together
        mine = torch.tensor([per_call], dtype=torch.float64, device=dev)
        dist.all_reduce(mine, op=dist.ReduceOp.MAX)  # a collective ends when its slowest rank does
        return float(mine.item())

    rows = []
    try:
        for size in sizes:
            elems = max(size // 4, n)
            elems -= elems % n
            buf = torch.ones(elems, dtype=torch.float32, device=dev)
            part = torch.ones(elems // n, dtype=torch.float32, device=dev)
            if cuda:
                gather = lambda: dist.all_gather_into_tensor(buf, part)  # noqa: E731
            else:
                pieces = list(buf.chunk(n))
                gather = lambda: dist.all_gather(pieces, part)  # noqa: E731
            for kind, call in (("all_reduce", lambda: dist.all_reduce(buf)), ("all_gather", gather)):
                rows.append({"kind": kind, "size": elems * 4, "ranks": n, "seconds": timed(call, _iters(size, quick))})
        if cuda and rank == 0:
            for size in sizes[-PLATEAU_SIZES:]:
                src = torch.ones(size // 4, dtype=torch.float32, device=dev)
                dst = torch.empty(size // 4, dtype=torch.float32, device=torch.device("cuda", 1))
                seconds = _seconds_per_call(lambda: dst.copy_(src), _iters(size, quick), torch.cuda.synchronize,
                                            torch.cuda.synchronize)  # both GPUs: the copy's two ends
                rows.append({"kind": "p2p_copy", "size": size, "ranks": 2, "seconds": seconds})
        dist.barrier()
        if rank == 0:
            Path(out).write_text(json.dumps(rows), encoding="utf-8")
    finally:
        dist.destroy_process_group()


__all__ = ["KINDS", "Point", "PLATEAU_SIZES", "QUICK_SIZES", "SIZES", "check_ranks", "measure", "plateau"]
