"""The LLM model: presets and user configs, memory (weights, KV cache, Adam, ZeRO), the largest
batch that fits, agreement with kernels/llama.py counted on the meta device, the estimate, the
`rooflight llm` command, and the validation benchmark's two modes."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

import llama as K
from rooflight import llm
from rooflight.capture import count
from rooflight.errors import UsageError
from rooflight.hardware import load_database

ROOT = Path(__file__).resolve().parent.parent
FIX = ROOT / "tests" / "fixtures"


# ---------------------------------------------------------------------------- configs


def test_presets_are_there():
    for name in ("llama-2-7b", "llama-2-13b", "llama-2-70b", "llama-3-8b", "llama-3-70b", "mistral-7b"):
        assert name in llm.PRESETS


def test_forgiving_names_and_user_configs(tmp_path):
    assert llm.get_config("Llama_2_7B") is llm.PRESETS["llama-2-7b"]
    assert llm.get_config("llama2-7b") is llm.PRESETS["llama-2-7b"]
    with pytest.raises(UsageError, match="did you mean"):
        llm.get_config("llama-2-7bx")
    mine = {"name": "mine", "n_layers": 4, "dim": 512, "n_heads": 8, "n_kv_heads": 2, "intermediate": 1376,
            "vocab": 1000, "weights": "int4", "kv": "fp8"}
    cfg = llm.get_config(mine)
    assert (cfg.head_dim, cfg.weights, cfg.kv, cfg.dtype) == (64, "int4", "fp8", "bf16")
    (tmp_path / "mine.json").write_text(json.dumps(mine))
    (tmp_path / "mine.toml").write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in mine.items()))
    assert llm.get_config(tmp_path / "mine.json") == cfg == llm.get_config(str(tmp_path / "mine.toml"))
    # a Hugging Face config.json as it comes
    hf = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
          "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336, "vocab_size": 128256,
          "max_position_embeddings": 8192, "rope_theta": 500000.0, "torch_dtype": "bfloat16", "use_cache": True}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    got = llm.get_config(tmp_path / "config.json")
    assert replace(got, name="llama-3-8b") == llm.PRESETS["llama-3-8b"]
    # start from a preset, change a field
    assert llm.get_config({"preset": "llama-2-7b", "weights": "int8"}).weights == "int8"
    with pytest.raises(UsageError, match="unknown field 'n_layer'"):
        llm.get_config({**mine, "n_layer": 3})
    with pytest.raises(UsageError, match="weight format"):
        llm.get_config("llama-2-7b", weights="int3")
    with pytest.raises(UsageError, match="not a multiple"):
        llm.get_config({**mine, "n_kv_heads": 3})


# ---------------------------------------------------------------------------- memory


def test_weights_are_2n_bytes_in_fp16_and_less_quantized():
    cfg = llm.PRESETS["llama-2-7b"]
    n = cfg.params
    assert n == 6_738_415_616  # Llama-2 7B with an untied LM head
    assert llm.weight_bytes(cfg) == 2 * n  # the seed's 2n GB for n billion parameters
    assert llm.weight_bytes(cfg.with_(dtype="fp16")) == 2 * n
    w8, w4, f8 = (llm.weight_bytes(cfg.with_(weights=w)) for w in ("int8", "int4", "fp8"))
    h, L, V = cfg.dim, cfg.n_layers, cfg.vocab
    layer_params = sum(k * nn for _, k, nn in cfg.layer_matrices())
    rest = n - L * layer_params  # embedding, LM head, norms stay 16-bit
    out_channels = sum(nn for _, _, nn in cfg.layer_matrices())
    assert f8 == L * layer_params + 2 * rest
    assert w8 == L * (layer_params + 2 * out_channels) + 2 * rest  # + an fp16 scale per output channel
    groups = sum(nn * math.ceil(k / 128) for _, k, nn in cfg.layer_matrices())
    assert w4 == L * (layer_params / 2 + 4 * groups) + 2 * rest  # + fp16 scale and zero per 128 weights
    assert w4 < w8 < 2 * n


def test_kv_cache_bytes_per_token():
    for name in ("llama-2-7b", "llama-2-70b", "llama-3-8b", "mistral-7b"):
        cfg = llm.PRESETS[name]
        assert llm.kv_bytes_per_token(cfg) == 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * 2
    assert llm.kv_bytes_per_token(llm.PRESETS["llama-2-7b"]) == 524_288  # 0.5 MiB per token, MHA
    assert llm.kv_bytes_per_token(llm.PRESETS["llama-3-8b"]) == 131_072  # GQA 4:1: a quarter
    cfg = llm.PRESETS["llama-2-7b"].with_(kv="fp8")
    assert llm.kv_bytes_per_token(cfg) == 262_144
    assert llm.kv_cache_bytes(cfg, 8, 4096) == 8 * 4096 * 262_144


def test_training_memory_adam_mixed_precision_and_zero():
    cfg = llm.PRESETS["llama-2-7b"]
    n = cfg.params
    m0 = llm.training_memory(cfg)
    assert m0.states_bytes == 16 * n and m0.bytes_per_param == 16  # the seed's 16n GB
    assert (m0.weights_bytes, m0.grads_bytes, m0.optimizer_bytes) == (2 * n, 2 * n, 12 * n)
    N = 8
    m1, m2, m3 = (llm.training_memory(cfg, zero=z, gpus=N) for z in (1, 2, 3))
    assert m1.states_bytes == pytest.approx(2 * n + 2 * n + 12 * n / N)  # optimizer states partitioned
    assert m2.states_bytes == pytest.approx(2 * n + (2 * n + 12 * n) / N)  # + gradients
    assert m3.states_bytes == pytest.approx(16 * n / N)  # + weights
    assert m0.activations_bytes == m3.activations_bytes > 0  # per GPU, not partitioned by ZeRO
    assert llm.training_memory(cfg, micro_batch=2, seq=2048).activations_bytes == pytest.approx(
        m0.activations_bytes * 2 * 2048 / cfg.max_seq)
    with pytest.raises(UsageError):
        llm.training_memory(cfg, zero=4)


def test_largest_batch_fits_and_is_monotone():
    cfg = llm.PRESETS["llama-2-7b"]
    db = load_database()
    by_memory = sorted(db, key=lambda s: s.memory_bytes)
    batches = [llm.max_batch(cfg, s, 4096) for s in by_memory]
    assert batches == sorted(batches)  # more memory never fits fewer sequences
    h100 = db.get("h100")
    b = llm.max_batch(cfg, h100, 4096)
    room = 0.9 * h100.memory_bytes
    assert llm.inference_memory(cfg, b, 4096).total_bytes <= room < llm.inference_memory(cfg, b + 1, 4096).total_bytes
    assert llm.max_batch(cfg, h100, 2048) > b > llm.max_batch(cfg, h100, 8192)  # longer context, fewer sequences
    assert llm.max_batch(cfg.with_(kv="fp8"), h100, 4096) > b
    assert llm.max_batch(llm.PRESETS["llama-2-70b"], db.get("4090"), 4096) == 0  # 140 GB of weights


# ---------------------------------------------------------------------------- against the count


def _count(cfg: llm.ModelConfig, phase: str, batch: int, n: int, dtype=torch.bfloat16):
    model = K.build(cfg, batch=batch, max_seq=n + 1, device="meta", dtype=dtype)
    if phase == "decode":  # a cache of n tokens: the new token at position n attends n + 1 keys
        return count(K.decode_one_token, model, torch.zeros(batch, 1, dtype=torch.long, device="meta"), n)
    return count(K.prefill, model, torch.zeros(batch, n, dtype=torch.long, device="meta"))


_COUNTED_NAMES = {"attention.wq": "mm", "attention.wk": "mm", "attention.wv": "mm", "attention.wo": "mm",
                  "feed_forward.w1": "mm", "feed_forward.w3": "mm", "feed_forward.w2": "mm",
                  "attention.sdpa": "scaled_dot_product_attention"}


def _agree(cfg, phase, batch, n, dtype=torch.bfloat16):
    prof = _count(cfg, phase, batch, n, dtype)
    step = llm.step_cost(cfg, phase, batch, **({"context": n} if phase == "decode" else {"prompt": n}))
    # per layer: every GEMM's FLOPs and the attention's matrix FLOPs, exactly
    layer0 = [o for o in prof.ops if o.module.startswith("layers.0.") or o.module == "layers.0"]
    counted = {}
    for o in layer0:
        if o.short_op in ("mm", "scaled_dot_product_attention"):
            name = o.module.split(".", 2)[2] if o.short_op == "mm" else "attention.sdpa"
            counted[name] = sum(v for c, v in o.flops.items() if c.endswith("_tensor"))
    assert counted == step.layer_matmul_flops()
    assert set(counted) == set(_COUNTED_NAMES)
    # per layer and in total: FLOPs by class, bytes, kernels.  The analytic model writes the same
    # ops with the same rules, so they agree to the last FLOP; the tolerance only absorbs the
    # order of floating-point summation (1e-12 relative).
    assert sum(o.total_flops for o in layer0) == pytest.approx(step.layer_flops, rel=1e-12)
    assert sum(o.bytes for o in layer0) == pytest.approx(step.layer_bytes, rel=1e-12)
    assert prof.total_flops == pytest.approx(step.flops, rel=1e-12)
    assert prof.total_bytes == pytest.approx(step.bytes, rel=1e-12)
    for c, v in prof.flops_by_class().items():
        assert step.flops_by_class()[c] == pytest.approx(v, rel=1e-12)
    assert sum(1 for o in prof.ops if o.bytes or o.total_flops) == step.kernel_count == 49 * cfg.n_layers + 10
    return prof, step


def test_llama_2_7b_decode_agrees_with_the_counted_model():
    # decode at batch 4, context 1024:
    # per layer GEMMs 2 x 4 x (4 x 4096^2 + 3 x 4096 x 11008) = 2.34e9 FLOPs (bf16 tensor)
    # attention 4 x 32 heads x 1025 keys (1024 cached + the new one) x 2 x (128 + 128) = 6.7e7 FLOPs
    prof, step = _agree(llm.PRESETS["llama-2-7b"], "decode", 4, 1024)
    assert step.keys == 1025
    assert step.layer_matmul_flops()["attention.sdpa"] == 4 * 32 * 1025 * 2 * (128 + 128)
    assert step.layer_matmul_flops()["feed_forward.w1"] == 2 * 4 * 4096 * 11008
    # decode reads every weight once: intensity ~ 2 x batch / 2 bytes, less for the KV cache
    assert 3 < step.intensity < 4


def test_llama_2_7b_prefill_agrees_with_the_counted_model():
    # prefill of 512 tokens: causal attention in 128x128 tiles computes 62.5% of the score matrix
    prof, step = _agree(llm.PRESETS["llama-2-7b"], "prefill", 1, 512)
    pairs = (128 + 256 + 384 + 512) * 128  # 4 query tiles see 1, 2, 3, 4 key tiles
    assert pairs / 512**2 == 0.625
    assert step.layer_matmul_flops()["attention.sdpa"] == 32 * pairs * 2 * (128 + 128)


def test_gqa_fp16_and_an_embedding_smaller_than_the_batch_agree():
    tiny = llm.PRESETS["tiny"]  # GQA 4:1; vocabulary 1024 < the 2048 prompt tokens
    _agree(tiny, "prefill", 4, 512)
    _agree(tiny.with_(dtype="fp16"), "decode", 3, 300, dtype=torch.float16)
    _agree(tiny, "decode", 2, 32)


def test_fused_mode_moves_fewer_bytes_with_the_same_matrix_work():
    cfg = llm.PRESETS["llama-2-7b"]
    e = llm.step_cost(cfg, "prefill", 2, prompt=1024)
    f = llm.step_cost(cfg, "prefill", 2, prompt=1024, mode="fused")
    assert f.bytes < e.bytes and f.kernel_count == 9 * 32 + 3
    mm = lambda s: sum(v for c, v in s.flops_by_class().items() if c.endswith("_tensor"))  # noqa: E731
    assert mm(f) == pytest.approx(mm(e), rel=1e-12)


# ---------------------------------------------------------------------------- the estimate


def test_estimate_table_and_the_best_decode_intensity():
    est = llm.estimate("llama-2-7b", "h100", batch=[1, 16, 64], context=4096)
    assert est.gpu == "H100 SXM" and est.mode == "eager" and "default efficiencies" in est.model
    r1, r16, r64 = est.rows
    assert r1.fits and r16.fits and not r64.fits  # 64 x 4096 tokens of KV cache: 137 GB
    assert r1.tpot_s < r16.tpot_s < r64.tpot_s
    assert r1.tokens_per_s < r16.tokens_per_s < r64.tokens_per_s
    assert r1.tokens_per_s == pytest.approx(1 / r1.tpot_s)
    assert r1.decode_label == "memory-bound" and r1.prefill_label == "compute-bound"
    assert r1.memory.weights_bytes == 2 * llm.PRESETS["llama-2-7b"].params
    assert r1.memory.kv_cache_bytes == 4096 * 524_288
    assert est.max_batch == llm.max_batch(llm.PRESETS["llama-2-7b"], load_database().get("h100"), 4096)
    assert r16.decode_intensity < est.best_decode_intensity < est.ridge  # decode stays under the ridge
    # batch 1: the weights dominate: TPOT ~ 13.5 GB / (0.85 x 3.35 TB/s) + 1578 kernels' fixed cost
    floor = (2 * 6_738_415_616 + 4096 * 524_288) / (0.85 * 3.35e12)
    assert floor < r1.tpot_s < floor + 1600 * 2.6e-6
    # the H200's bandwidth makes decode faster
    h200 = llm.estimate("llama-2-7b", "h200", batch=[1], context=4096)
    assert h200.rows[0].tpot_s < r1.tpot_s
    assert est.df.loc[16, "fits"]


def test_fp8_weights_fall_back_on_the_a100_and_across_gpus():
    est = llm.estimate("llama-3-8b", "a100_80gb_sxm", batch=[1], context=2048, weights="fp8")
    assert any("fp8 tensor GEMMs run as fp16 tensor math" in n for n in est.notes)
    fits = llm.across_gpus("llama-2-70b", context=4096, weights="int4")
    assert len(fits) == len(load_database())
    by = {f.gpu_key: f for f in fits}
    assert by["rtx_4090"].max_batch == 0 and math.isnan(by["rtx_4090"].tokens_per_s)
    assert by["h200_sxm"].max_batch > by["h100_sxm"].max_batch > 0
    assert by["h200_sxm"].decode_intensity > by["h100_sxm"].decode_intensity


def test_bad_estimates_are_usage_errors():
    with pytest.raises(UsageError):
        llm.estimate("llama-2-7b", "h100", batch=[0])
    with pytest.raises(UsageError):
        llm.estimate("llama-2-7b", "h100", context=1024, prompt=2048)
    with pytest.raises(UsageError):
        llm.step_cost("llama-2-7b", "decode", 1, context=100, mode="compiled")


# ---------------------------------------------------------------------------- the CLI


def _app() -> typer.Typer:
    from rooflight.cli import app

    return app


def test_cli_llm_prints_the_table_and_writes_a_chart(tmp_path):
    r = CliRunner().invoke(_app(), ["llm", "llama-2-7b", "--hw", "h100", "--batch", "1,16,64", "--context", "4096",
                                    "-o", str(tmp_path)], env={"COLUMNS": "220"})
    assert r.exit_code == 0, r.output
    for text in ("TTFT", "TPOT", "tokens/s", "fits?", "decode FLOP/B", "memory-bound", "largest batch",
                 "H200 SXM", "A10", "13.5 GB"):
        assert text in r.output, text
    assert (tmp_path / "llm_llama-2-7b_h100_sxm.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_llm_training_footprint():
    r = CliRunner().invoke(_app(), ["llm", "llama-2-7b", "--train", "--zero", "3", "--gpus", "8"],
                           env={"COLUMNS": "220"})
    assert r.exit_code == 0, r.output
    assert "over 8 GPUs" in r.output and "16 bytes/param" in r.output
    assert "1.68 GB" in r.output  # 2 bytes x 6.74 B params / 8 GPUs


def test_cli_llm_errors_exit_2():
    for args, text in ((["llm", "llama-9"], "unknown model"), (["llm", "llama-2-7b", "--hw", "a100"], "ambiguous"),
                       (["llm", "llama-2-7b", "--batch", "x"], "--batch"),
                       (["llm", "llama-2-7b", "--train", "--zero", "4"], "--zero")):
        r = CliRunner().invoke(_app(), args)
        assert r.exit_code == 2, (args, r.output)
        assert text in r.output and "Traceback" not in r.output


# ---------------------------------------------------------------------------- the benchmark


def _bench():
    spec = importlib.util.spec_from_file_location("llm_validation", ROOT / "benchmarks" / "llm_validation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_smoke_on_the_cpu(tmp_path):
    bench = _bench()
    assert bench.main(["--smoke", "--out", str(tmp_path), "--repeats", "1"]) == 0
    files = sorted(p.name for p in tmp_path.iterdir())
    results = [f for f in files if f.endswith(".json")]
    assert len(files) == 2 and len(results) == 1 and results[0].replace(".json", "-profiles.json.gz") in files
    data, profiles = bench.load_result(tmp_path / results[0])
    assert data["config"]["name"] == "tiny" and data["device_kind"] == "cpu"
    assert {r["phase"] for r in data["rows"]} == {"prefill", "decode"}
    decode = [r for r in data["rows"] if r["phase"] == "decode"]
    assert all(r["analytic_flops"] == r["flops"] and r["analytic_bytes"] == r["bytes"] for r in decode)
    assert set(profiles) == {r["profile"] for r in data["rows"]}


def test_benchmark_compare_projects_h100_onto_h200(tmp_path):
    """Two step-1 files made from the H100 fixture (a tiny decode, batch 2, context 32): the
    'H200' one is the same profile with its device renamed and its times scaled."""
    from tests.recorded import recorded_h100_decode

    bench = _bench()
    for dev, scale, d in (("NVIDIA H100 80GB HBM3", 1.0, "h100"), ("NVIDIA H200", 0.97, "h200")):
        prof = recorded_h100_decode("", device_name=dev)
        t = prof.timing
        t = replace(t, ops=tuple(replace(o, seconds=o.seconds * scale) for o in t.ops),
                    regions=tuple(replace(r, busy_seconds=r.busy_seconds * scale) for r in t.regions))
        p = replace(prof, mode="timed", timing=t)
        out = tmp_path / d
        out.mkdir()
        with gzip.open(out / "b-profiles.json.gz", "wt") as fh:
            json.dump({"decode_b2_c32": p.to_dict()}, fh)
        (out / "b.json").write_text(json.dumps({
            "schema": bench.SCHEMA, "version": 1, "device": dev, "torch": "x", "date": "2026-11-22",
            "config": llm.PRESETS["tiny"].to_dict(), "profiles": "b-profiles.json.gz",
            "rows": [{"phase": "decode", "batch": 2, "context": 32, "profile": "decode_b2_c32",
                      "measured_s": t.total.busy_seconds, "graph_s": None}]}))
    res = bench.compare(tmp_path / "h100" / "b.json", tmp_path / "h200" / "b.json", tmp_path / "cmp.json")
    row = res["rows"][0]
    assert res["target"]["spec"] == "h200_sxm" and res["source"]["spec"] == "h100_sxm"
    assert row["projection_model"] == "measured efficiency from NVIDIA H100 80GB HBM3"
    assert abs(row["projection_error"]) < 0.15 and res["projection_pass"]
    # the analytic model of a tiny decode on the H100: its 108 kernels' fixed cost, within 20%
    assert abs(row["analytic_source_error"]) < 0.20 and res["analytic_source_pass"]
    assert json.loads((tmp_path / "cmp.json").read_text())["rows"][0]["batch"] == 2


def test_a_tensor_parallel_rank_does_its_share_and_adds_two_all_reduces_a_layer():
    from rooflight.hardware import load_database
    from rooflight.llm import step_cost, step_time
    from rooflight.roofline import from_spec

    one = step_cost("llama-2-7b", "decode", 8, context=1024)
    two = step_cost("llama-2-7b", "decode", 8, context=1024, tp=2)
    # every GEMM of a layer and its attention's matrix FLOPs halve on each of 2 ranks
    assert {k: v / 2 for k, v in one.layer_matmul_flops().items()} == two.layer_matmul_flops()
    reduces = [k for k in two.layer if k.kind == "collective"]
    assert [k.name for k in reduces] == ["attention.all_reduce", "feed_forward.all_reduce"]
    # [8 tokens, 4096] bf16 = 65,536 B each; a rank's link carries 2 (n-1)/n = 1x of it at n = 2
    assert [k.cost.comm_bytes for k in reduces] == [65_536, 65_536]
    h100 = from_spec(load_database().get("h100"))
    t1, t2 = step_time(one, h100), step_time(two, h100)
    # half the weights per rank: the memory-bound decode step gets faster, less than 2x (the
    # all-reduces' link time and per-kernel fixed costs do not split)
    assert 1.0 < t1.seconds / t2.seconds < 2.0
    # a 64 KB all-reduce takes 0.15 us on 450 GB/s each way: under a kernel's fixed cost, so latency
    # (overhead) bound; a 2048-token prefill's (16.8 MB each: 37 us) is communication-bound
    assert t2.seconds_by_label.get("communication-bound", 0) == 0
    pre = step_time(step_cost("llama-2-7b", "prefill", 1, prompt=2048, tp=8), h100)
    assert pre.seconds_by_label.get("communication-bound", 0) > 0
    with pytest.raises(UsageError, match="do not split over 3"):
        step_cost("llama-2-7b", "decode", 1, context=16, tp=3)


def test_llm_estimate_with_tensor_parallelism():
    from rooflight import llm as L

    one = L.estimate("llama-2-70b", "h100", batch=[1], context=4096)
    eight = L.estimate("llama-2-70b", "h100", batch=[1], context=4096, tp=8)
    # 138 GB of bf16 weights: no batch fits one 80 GB H100; over 8, 17.2 GB of weights each
    assert one.max_batch == 0 and not one.rows[0].fits
    assert eight.rows[0].memory.weights_bytes == pytest.approx(L.weight_bytes(L.get_config("llama-2-70b")) / 8)
    assert eight.rows[0].fits and eight.max_batch > 100
    assert any("tensor parallel over 8 GPUs" in n for n in eight.notes)
    with pytest.raises(UsageError, match="do not split over 3"):
        L.estimate("llama-2-70b", "h100", batch=[1], tp=3)
