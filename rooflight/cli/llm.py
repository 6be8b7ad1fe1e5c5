"""`rooflight llm`: an LLM's latency and memory on GPUs from its config alone."""

from __future__ import annotations

import math
from pathlib import Path
from typing import List, Optional

import typer
from rich.markup import escape as esc
from rich.table import Table

from .. import llm as L
from ..errors import UsageError
from ..files import OutputDir
from ..render.charts import figure_bytes
from ..render.outputs import slug
from ..render.projection import llm_roofline
from ..units import fmt_bandwidth, fmt_bytes, fmt_seconds
from .common import ForceOption, HwDirOption, console, database, handles_errors

commands = typer.Typer()


def _ints(text: str, what: str) -> list[int]:
    try:
        values = [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise UsageError(f"{what} '{text}': give whole numbers separated by commas, e.g. 1,16,64") from None
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{what} '{text}': give positive whole numbers, e.g. 1,16,64")
    return values


def _share(x: float) -> str:
    return "" if x is None or math.isnan(x) else f" {x:.0%}"


def _rate(x: float) -> str:
    if x is None or math.isnan(x):
        return "–"
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"


@commands.command("llm")
@handles_errors
def llm_cmd(
    model: str = typer.Argument(..., metavar="MODEL", help="A preset (llama-2-7b, llama-2-13b, llama-2-70b, "
                                                           "llama-3-8b, llama-3-70b, mistral-7b) or a JSON/TOML "
                                                           "config file (a Hugging Face config.json works)."),
    hw: str = typer.Option("h100", "--hw", help="GPU(s), comma-separated."),
    batch: str = typer.Option("1,16,64", "--batch", help="Batch sizes, comma-separated."),
    context: int = typer.Option(4096, "--context", help="Tokens per sequence in the KV cache at the decode step."),
    prompt: Optional[int] = typer.Option(None, "--prompt", help="Prompt tokens for the prefill (TTFT); default: "
                                                                "the context."),
    weights: Optional[str] = typer.Option(None, "--weights", help="Weight format: fp16, bf16, fp8, int8, int4."),
    kv: Optional[str] = typer.Option(None, "--kv", help="KV-cache format: fp16, bf16, fp8, int8, int4."),
    mode: str = typer.Option("eager", "--mode", help="eager (kernels/llama.py's 49 kernels per layer) or fused "
                                                    "(a serving engine's 9)."),
    reserve: float = typer.Option(0.10, "--reserve", help="Fraction of GPU memory held back (CUDA context, "
                                                          "workspaces, fragmentation)."),
    train: bool = typer.Option(False, "--train", metavar="", help="Show the training footprint (Adam, mixed precision) "
                                                      "instead."),
    zero: int = typer.Option(0, "--zero", help="ZeRO stage for --train: 0, 1, 2 or 3."),
    gpus: int = typer.Option(1, "--gpus", help="GPUs the ZeRO states are partitioned over (--train)."),
    tp: int = typer.Option(1, "--tp", help="Tensor-parallel degree for inference: times and memory per GPU, two "
                                          "all-reduces a layer on the GPU link."),
    micro_batch: int = typer.Option(1, "--micro-batch", help="Sequences per GPU per step (--train)."),
    out: Path = typer.Option(Path("rooflight-out"), "-o", "--out", help="Directory for the chart (created)."),
    no_chart: bool = typer.Option(False, "--no-chart", metavar="", help="Print the tables only."),
    force: bool = ForceOption,
    hw_dir: Optional[List[Path]] = HwDirOption,
) -> None:
    """An LLM's latency and memory on a GPU from its config: TTFT, TPOT, tokens/s, memory, the
    largest batch that fits on every GPU; or its training footprint under ZeRO.

    \b
    rooflight llm llama-2-7b --hw h100 --batch 1,16,64 --context 4096
    rooflight llm llama-2-70b --hw h200 --weights int4 --kv fp8
    rooflight llm llama-2-7b --train --zero 3 --gpus 8
    """
    db = database(hw_dir)
    specs = [db.get(n.strip()) for n in hw.split(",") if n.strip()]
    if not specs:
        raise UsageError("--hw: name a GPU, e.g. --hw h100")
    cfg = L.get_config(model, weights=weights, kv=kv)
    batches = _ints(batch, "--batch")
    if train and zero not in (0, 1, 2, 3):
        raise UsageError(f"--zero must be 0, 1, 2 or 3 (got {zero})")
    if train and (gpus < 1 or micro_batch < 1):
        raise UsageError("--gpus and --micro-batch must be at least 1")
    con = console()
    kvt = L.kv_bytes_per_token(cfg)
    con.print(esc(f"{cfg.name}: {cfg.params / 1e9:.2f} B parameters ({cfg.n_layers} layers, hidden {cfg.dim}, "
                  f"{cfg.n_heads} heads, {cfg.n_kv_heads} KV heads, MLP {cfg.intermediate}, vocabulary "
                  f"{cfg.vocab}); {cfg.weights} weights {fmt_bytes(L.weight_bytes(cfg))}; {cfg.kv} KV cache "
                  f"{fmt_bytes(kvt)} per token (2 x {cfg.n_layers} layers x {cfg.n_kv_heads} KV heads x "
                  f"{cfg.head_dim} x {L.kv_bytes_per_element(cfg):g} B)"))
    if train:
        _train_table(con, L, cfg, specs, zero, gpus, micro_batch, context)
        return
    od = None if no_chart else OutputDir(out, force=force)  # writes nothing before commit()
    for spec in specs:
        est = L.estimate(cfg, spec, batch=batches, context=context, prompt=prompt, mode=mode, reserve=reserve, tp=tp)
        _estimate_table(con, est, spec)
        if od is not None:
            od.add(f"llm_{slug(cfg.name)}_{slug(spec.key)}.png", figure_bytes(llm_roofline(est), "png"))
    _gpus_table(con, L, cfg, context, prompt, mode, reserve, db)
    if od is not None and od.pending:
        for p in od.commit():
            con.print(f"wrote {esc(str(p))}")


def _estimate_table(con, est, spec) -> None:
    t = Table(title=esc(f"{est.config.name} on {est.gpu}: context {est.context}, prompt {est.prompt}, "
                        f"{est.mode} kernels"))
    for col in ("batch", "TTFT", "TPOT", "tokens/s", "memory (weights + KV + act.)", "fits?", "decode FLOP/B",
                "decode bound"):
        t.add_column(col, justify="right" if col not in ("fits?", "decode bound") else "left", no_wrap=True)
    for r in est.rows:
        m = r.memory
        mem = (f"{fmt_bytes(m.total_bytes)} ({fmt_bytes(m.weights_bytes)} + {fmt_bytes(m.kv_cache_bytes)} + "
               f"{fmt_bytes(m.activations_bytes)})")
        t.add_row(str(r.batch), fmt_seconds(r.ttft_s), fmt_seconds(r.tpot_s), _rate(r.tokens_per_s), mem,
                  "yes" if r.fits else "[red]no[/red]", f"{r.decode_intensity:.3g}",
                  f"{r.decode_label}{_share(r.decode_label_share)}")
    con.print(t)
    if est.max_batch:
        con.print(esc(f"{est.gpu} ({fmt_bytes(est.memory_bytes)}, {fmt_bandwidth(spec.memory_bytes_per_s)}; "
                      f"{fmt_bytes(est.usable_bytes)} usable): largest batch at context {est.context} = "
                      f"{est.max_batch}, decode intensity {est.best_decode_intensity:.3g} FLOP/B "
                      f"({_rate(est.best_tokens_per_s)} tokens/s) against a {est.ridge_class} ridge of "
                      f"{est.ridge:.0f} FLOP/B"))
    con.print(f"[dim]model: {esc(est.model)}[/dim]")
    for n in est.notes:
        con.print(f"[dim]note: {esc(n)}[/dim]")


def _gpus_table(con, L, cfg, context, prompt, mode, reserve, db) -> None:
    fits = L.across_gpus(cfg, context=context, prompt=prompt, mode=mode, reserve=reserve, db=db)
    t = Table(title=esc(f"{cfg.name} at context {context} on every GPU in the database: the largest batch "
                        "that fits"))
    for col in ("GPU", "memory", "max batch", "TPOT there", "tokens/s", "decode FLOP/B", "ridge FLOP/B"):
        t.add_column(col, justify="left" if col == "GPU" else "right", no_wrap=True)
    for f in sorted(fits, key=lambda f: -(f.tokens_per_s if f.max_batch else -1)):
        if f.max_batch:
            t.add_row(esc(f.gpu), fmt_bytes(f.memory_bytes), str(f.max_batch), fmt_seconds(f.tpot_s),
                      _rate(f.tokens_per_s), f"{f.decode_intensity:.3g}", f"{f.ridge:.0f}")
        else:
            t.add_row(esc(f.gpu), fmt_bytes(f.memory_bytes), "[red]does not fit[/red]", "–", "–", "–",
                      f"{f.ridge:.0f}")
    con.print(t)


def _train_table(con, L, cfg, specs, zero, gpus, micro_batch, seq) -> None:
    if zero not in (0, 1, 2, 3):
        raise UsageError(f"--zero must be 0, 1, 2 or 3 (got {zero})")
    t = Table(title=esc(f"{cfg.name} training with Adam in mixed precision over {gpus} GPU"
                        f"{'s' if gpus != 1 else ''}: memory per GPU (micro-batch {micro_batch} x {seq} tokens)"))
    cols = ["ZeRO", "bytes/param", "weights", "gradients", "optimizer states", "activations", "total"]
    cols += [f"fits {s.name}?" for s in specs]
    for col in cols:
        t.add_column(esc(col), justify="right", no_wrap=True)
    for stage in range(4):
        m = L.training_memory(cfg, zero=stage, gpus=gpus, micro_batch=micro_batch, seq=seq)
        cells = [f"{stage}{' <' if stage == zero else ''}", f"{m.bytes_per_param:.3g}", fmt_bytes(m.weights_bytes),
                 fmt_bytes(m.grads_bytes), fmt_bytes(m.optimizer_bytes), fmt_bytes(m.activations_bytes),
                 fmt_bytes(m.total_bytes)]
        cells += ["yes" if m.total_bytes <= s.memory_bytes else "[red]no[/red]" for s in specs]
        t.add_row(*cells, style="bold" if stage == zero else None)
    con.print(t)
    con.print("[dim]16 bytes/param without ZeRO: fp16/bf16 weights 2 + gradients 2 + fp32 master weights 4 + "
              "Adam moments 4 + 4; ZeRO-1 partitions the 12 of optimizer states, ZeRO-2 also the gradients, "
              "ZeRO-3 also the weights; activations (an estimate, FlashAttention, no recomputation) are per "
              "GPU[/dim]")
