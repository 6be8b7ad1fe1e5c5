"""Communication on the roofline: collectives' bus bandwidth, and how much of their time is exposed.

Bandwidth is computed the nccl-tests way (NCCL's PERFORMANCE.md): a collective of size S (the
buffer of an all-reduce or a broadcast, the whole gathered output of an all-gather, the whole
scattered input of a reduce-scatter or an all-to-all) that took t seconds has an algorithm
bandwidth S / t; its bus bandwidth is that times the share of S each rank's link must carry, so
that it compares with the link's peak whatever the rank count:

    all_reduce      busbw = algbw · 2(n-1)/n
    all_gather      busbw = algbw · (n-1)/n
    reduce_scatter  busbw = algbw · (n-1)/n
    all_to_all      busbw = algbw · (n-1)/n
    broadcast, send/recv   busbw = algbw

Exposed communication (the seed's figure 4): of a step's communication time, the part no compute
kernel on the same GPU overlaps: what the step would save if the communication were hidden.
Time spent waiting for a late rank inside a collective is not bandwidth; `straggler_wait` names it.
Pure functions of their inputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from .profile_data import Profile
from .steps import STEADY
from .trace import length, overlap, union
from .units import fmt_seconds

# short aten op -> the collective it is (both the functional and the eager c10d spellings)
KINDS = {
    "all_reduce": "all_reduce", "all_reduce_": "all_reduce", "allreduce_": "all_reduce",
    "all_reduce_coalesced": "all_reduce", "all_reduce_coalesced_": "all_reduce", "allreduce_coalesced_": "all_reduce",
    "all_gather_into_tensor": "all_gather", "all_gather_into_tensor_out": "all_gather", "allgather_": "all_gather",
    "_allgather_base_": "all_gather", "allgather_into_tensor_coalesced_": "all_gather",
    "reduce_scatter_tensor": "reduce_scatter", "reduce_scatter_": "reduce_scatter",
    "_reduce_scatter_base_": "reduce_scatter", "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "all_to_all_single": "all_to_all", "alltoall_base_": "all_to_all", "alltoall_": "all_to_all",
    "broadcast": "broadcast", "broadcast_": "broadcast",
    "send": "send_recv", "recv_": "send_recv", "recv_any_source_": "send_recv",
}


def bus_factor(kind: str, n: int) -> float:
    """busbw / algbw for a collective of `kind` over n ranks (nccl-tests)."""
    if n < 1:
        raise ValueError(f"a group of {n} ranks")
    if kind == "all_reduce":
        return 2 * (n - 1) / n
    if kind in ("all_gather", "reduce_scatter", "all_to_all"):
        return (n - 1) / n
    if kind in ("broadcast", "send_recv"):
        return 1.0
    raise ValueError(f"unknown collective {kind!r}")


def per_rank_bytes(kind: str, size: float, n: int) -> float:
    """The bytes each rank's link carries for a collective of size S: busbw's share of S (ring
    algorithms; a send moves S)."""
    if kind == "broadcast":  # a pipelined ring: each rank but the root forwards S once
        return size * (n - 1) / n
    return size * bus_factor(kind, n)


@dataclass(frozen=True)
class Bandwidth:
    kind: str
    size: float  # S, bytes (see the module doc)
    ranks: int
    seconds: float

    @property
    def algbw(self) -> float:
        return self.size / self.seconds if self.seconds > 0 else float("nan")

    @property
    def busbw(self) -> float:
        return self.algbw * bus_factor(self.kind, self.ranks)


@dataclass(frozen=True)
class Exposure:
    comm_seconds: float  # the union of the communication kernels' intervals
    overlapped_seconds: float  # of it, while a compute kernel ran on the same GPU
    compute_seconds: float

    @property
    def exposed_seconds(self) -> float:
        return self.comm_seconds - self.overlapped_seconds

    @property
    def exposed_fraction(self) -> float:
        return self.exposed_seconds / self.comm_seconds if self.comm_seconds > 0 else 0.0


def exposure(kernels: Iterable[tuple[float, float, bool]]) -> Exposure:
    """Kernels of one GPU as (start, end, is_communication): how much communication time no
    compute kernel overlaps (concurrent streams overlap; the same stream never does)."""
    ks = list(kernels)
    comm = union((a, b) for a, b, c in ks if c)
    comp = union((a, b) for a, b, c in ks if not c)
    return Exposure(length(comm), overlap(comm, comp), length(comp))


def exposed_in(profile: Profile, region: str = "") -> Exposure | None:
    """The collectives' kernel time in a region of a timed profile and how much of it no compute
    kernel overlapped (Timing's regions, median over repeats); the steady state (steps.STEADY)
    sums its steps; None where no collective's kernel ran."""
    t = profile.timing
    if t is None:
        return None
    if region == STEADY and profile.steps:
        rows = [t.region(s.name) for s in profile.steps if s.headline]
    else:
        rows = [t.region(region)]
    rows = [r for r in rows if r is not None]
    comm = sum(r.comm_seconds for r in rows)
    if not comm > 0:
        return None
    overlapped = comm - sum(r.comm_exposed_seconds for r in rows)
    # busy is the union of every kernel: |comm U compute| = |comm| + |compute| - |comm & compute|
    return Exposure(comm, overlapped, sum(r.busy_seconds for r in rows) - comm + overlapped)


def exposure_text(e: Exposure, where: str = "the run") -> str:
    """One line: the collectives' time in `where`, and how much of it was exposed."""
    return (f"communication in {where}: {fmt_seconds(e.comm_seconds)} of collectives' kernels, "
            f"{fmt_seconds(e.exposed_seconds)} ({e.exposed_fraction:.0%}) exposed (no compute kernel ran beside it), "
            f"{fmt_seconds(e.overlapped_seconds)} hidden behind compute")


def straggler_wait(arrivals: Sequence[float]) -> list[float]:
    """Per rank, the time it waited inside a collective for the last rank to arrive (every rank
    leaves together once all have arrived): waiting, not moving bytes."""
    last = max(arrivals)
    return [last - a for a in arrivals]


def collective_rows(profile: Profile) -> list[dict[str, Any]]:
    """Per collective kind of one rank's profile: how many ran, the bytes its link carried, their
    time where timed and the bus bandwidth that makes (link bytes over time: busbw, nccl-tests)."""
    rows: dict[str, dict[str, Any]] = {}
    t = profile.timing
    for o in profile.ops:
        kind = KINDS.get(o.short_op)
        if kind is None:
            continue
        r = rows.setdefault(kind, {"collective": kind, "count": 0, "link_bytes": 0.0, "seconds": 0.0,
                                   "timed": t is not None, "ranks": ""})
        r["count"] += 1
        r["link_bytes"] += o.comm_bytes
        ot = t.op(o.index) if t is not None else None
        if ot is not None and ot.seconds == ot.seconds:
            r["seconds"] += ot.seconds
        groups = o.note.split(" over ")[-1].split(" ranks")[0] if " over " in o.note else ""
        r["ranks"] = groups
    for r in rows.values():
        r["busbw"] = r["link_bytes"] / r["seconds"] if r["timed"] and r["seconds"] > 0 else None
    return list(rows.values())


__all__ = ["Bandwidth", "collective_rows", "Exposure", "KINDS", "bus_factor", "exposed_in", "exposure", "exposure_text",
           "per_rank_bytes", "straggler_wait"]
