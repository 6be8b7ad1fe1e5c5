"""A script's run cut into setup, steps and teardown (rooflight.steps): the rules on made-up op
sequences, then `rooflight profile` driven as a subprocess on scripts written the way users write
them, Hugging Face models built from small configs (no downloads) among them."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from rooflight.costs.model import TensorMeta
from rooflight.errors import UsageError
from rooflight.profile_data import OpRecord, Profile
from rooflight.steps import BETWEEN, SETUP, STEADY, TEARDOWN, TopCall, parse_select, segment

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "tests" / "examples"
HAS_TRANSFORMERS = importlib.util.find_spec("transformers") is not None
needs_transformers = pytest.mark.skipif(not HAS_TRANSFORMERS, reason="transformers is not installed (test extra)")


def cli(*args: str, cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "rooflight", *args], cwd=cwd, capture_output=True, text=True,
                          env=env, timeout=timeout)


def ops(spec: str) -> list[OpRecord]:
    """One op per letter: m = a matmul, b = a backward op, o = an optimizer op, a = attention."""
    out = []
    for i, ch in enumerate(spec):
        phase = {"b": "backward", "o": "optimizer"}.get(ch, "forward")
        out.append(OpRecord(i, "aten::mm.default", phase=phase, flops={"fp32": 1.0}, bytes_read=1.0))
    return out


def attention(i: int, q: int, k: int) -> OpRecord:
    # q: [B=2, H=4, q, 16], k: [2, 4, k, 16]
    return OpRecord(i, "aten::scaled_dot_product_attention", inputs=(
        TensorMeta.contiguous((2, 4, q, 16), "bfloat16"), TensorMeta.contiguous((2, 4, k, 16), "bfloat16")))


# ---------------------------------------------------------------------------- the rules


def test_a_training_loop_is_one_step_per_iteration():
    # setup (2 ops), then 3 x [model call: 2 ops, loss module: 1 op, backward 2, optimizer 1], then teardown 1
    seq = ops("mm" + "mmmbbo" * 3 + "m")
    calls = []
    for it in range(3):
        s = 2 + 6 * it
        calls += [TopCall(1, "Model", s, s + 2), TopCall(2, "CrossEntropyLoss", s + 2, s + 3)]
    seg = segment(seq, (), calls)
    assert [s.kind for s in seg.steps] == ["train"] * 3
    regions = [o.region for o in seg.ops]
    assert regions[:2] == [SETUP] * 2 and regions[-1] == TEARDOWN
    assert regions[2:8] == ["step 1"] * 6 and regions[14:20] == ["step 3"] * 6  # backward and optimizer joined
    assert [s.warmup for s in seg.steps] == [True, False, False] and [s.headline for s in seg.steps] == [False, True, True]
    assert seg.regions == (SETUP, "step 1", "step 2", "step 3", TEARDOWN)
    assert "CrossEntropyLoss" in seg.notes[0]  # the other module's calls joined the model's steps


def test_generate_is_a_prefill_then_decodes_with_their_kv_length():
    # a prompt of 8 tokens, then 3 decode steps attending 9, 10, 11 keys; 1 sampling op between calls
    seq = [attention(0, 8, 8), OpRecord(1, "aten::argmax.default"), attention(2, 1, 9),
           OpRecord(3, "aten::argmax.default"), attention(4, 1, 10), OpRecord(5, "aten::argmax.default"),
           attention(6, 1, 11), OpRecord(7, "aten::argmax.default"), OpRecord(8, "aten::cat.default"),
           OpRecord(9, "aten::print")]
    calls = [TopCall(7, "LlamaForCausalLM", i, i + 1) for i in (0, 2, 4, 6)]
    seg = segment(seq, (), calls)
    kinds = [(s.kind, s.batch, s.query_len, s.kv_len) for s in seg.steps]
    assert kinds == [("prefill", 2, 8, 8), ("decode", 2, 1, 9), ("decode", 2, 1, 10), ("decode", 2, 1, 11)]
    assert seg.steps[0].tokens == 16 and seg.steps[1].tokens == 2
    # the prefill is alone of its kind: it stays in; the first decode is the warm-up
    assert [s.headline for s in seg.steps] == [True, False, True, True]
    # after the last call, as many ops as the longest gap (1) join it; the rest is teardown
    assert [o.region for o in seg.ops][7:] == ["step 4", TEARDOWN, TEARDOWN]


def test_gradient_accumulation_makes_an_iteration_of_micro_batches_one_train_step():
    # 1 setup op; 2 iterations of 4 micro-batches [model call: attention (B=2, 8 tokens), its
    # backward] then the optimizer's op; an evaluation call (forward only) after each; then 2
    # micro-batches the script never stepped the optimizer on
    seq: list[OpRecord] = [OpRecord(0, "aten::randn")]
    calls = []

    def call(backward: bool):
        calls.append(TopCall(1, "Model", len(seq), len(seq) + 1))
        seq.append(attention(len(seq), 8, 8))
        if backward:
            seq.append(OpRecord(len(seq), "aten::mm.default", phase="backward"))

    for _ in range(2):
        for _ in range(4):
            call(True)
        seq.append(OpRecord(len(seq), "aten::add_.Tensor", phase="optimizer"))
        call(False)
    call(True)
    call(True)
    seg = segment(seq, (), calls)
    got = [(s.kind, s.calls, s.batch, s.query_len, s.tokens) for s in seg.steps]
    assert got == [("train", 4, 8, 8, 64), ("forward", 1, 2, 8, 16), ("train", 4, 8, 8, 64),
                   ("forward", 1, 2, 8, 16), ("train", 2, 4, 8, 32)]  # 4 x 2 sequences of 8 tokens, ...
    regions = [o.region for o in seg.ops]
    assert regions[:11] == [SETUP] + ["step 1"] * 9 + ["step 2"]  # 4 x (attention, backward), optimizer
    assert [(s.first_op, s.last_op, s.call_last_op) for s in seg.steps[:2]] == [(1, 9, 7), (10, 10, 10)]
    assert regions[-4:] == ["step 5"] * 4
    assert any("4 calls of Model (gradient accumulation)" in n for n in seg.notes)
    # a loop stepping the optimizer at every call keeps one call a step (the first rule's test)
    plain = ops("mbo" * 3)
    seg = segment(plain, (), [TopCall(1, "M", 3 * i, 3 * i + 1) for i in range(3)])
    assert [s.calls for s in seg.steps] == [1, 1, 1] and not any("accumulation" in n for n in seg.notes)


def test_the_step_marks_of_a_run_follow_each_steps_model_calls():
    from rooflight.profile_data import Step
    from rooflight.timing import _step_marks

    auto = [Step(1, "step 1", "train", module="M", calls=3), Step(2, "step 2", "forward", module="M"),
            Step(3, "step 3", "train", module="M", calls=2)]
    starts, ends = [0, 10, 20, 30, 40, 50], [5, 15, 25, 35, 45, 55]
    assert _step_marks(auto, starts, ends, 99) == [(0, 30, 25), (30, 40, 35), (40, 99, 55)]
    assert _step_marks(auto, starts[:5], ends[:5], 99) is None  # a run that called the model less often


def test_a_decode_steps_packed_gqa_query_is_one_token():
    # Hugging Face's pack_gqa runs a decode step's 4 query heads over 2 KV heads as q [1, 2, 2, 32]
    # (the 2 query heads of each group in the length dimension); the token ids say 1 token
    def step(i, ids, q, k):
        return [OpRecord(i, "aten::embedding.default", inputs=(TensorMeta.contiguous((512, 128), "float32"),
                                                              TensorMeta.contiguous(ids, "int64"))),
                OpRecord(i + 1, "aten::scaled_dot_product_attention", inputs=(
                    TensorMeta.contiguous(q, "float32"), TensorMeta.contiguous(k, "float32")))]

    seq = (step(0, (1, 16), (1, 4, 16, 32), (1, 2, 16, 32)) + step(2, (1, 1), (1, 2, 2, 32), (1, 2, 23, 32))
           + step(4, (1, 1), (1, 2, 2, 32), (1, 2, 23, 32)) + step(6, (1, 2), (1, 4, 2, 32), (1, 2, 23, 32)))
    seg = segment(seq, (), [TopCall(1, "LlamaForCausalLM", i, i + 2) for i in (0, 2, 4, 6)])
    got = [(s.kind, s.batch, s.query_len, s.kv_len) for s in seg.steps]
    # the last: 2 real query tokens (a speculative check on the same static cache: a decode step),
    # unpacked: its length stays 2
    assert got == [("prefill", 1, 16, 16), ("decode", 1, 1, 23), ("decode", 1, 1, 23), ("decode", 1, 2, 23)]


def test_a_decode_steps_kv_length_is_its_longest_self_attention():
    # Gemma-3's pattern: sliding-window layers read their 8-key window (a fused SDPA), the global
    # layer the whole context (here a materialized attention: softmax over [1, 4, 1, 17]); an
    # encoder-decoder's cross-attention over 1,500 encoder frames is not the context
    def sdpa(i, kv, module="model.layers.0.self_attn"):
        return OpRecord(i, "aten::scaled_dot_product_attention", module=module, inputs=(
            TensorMeta.contiguous((1, 4, 1, 32), "float32"), TensorMeta.contiguous((1, 4, kv, 32), "float32")))

    softmax = OpRecord(2, "aten::_safe_softmax.default", module="model.layers.5.self_attn",
                       inputs=(TensorMeta.contiguous((1, 4, 1, 17), "float32"),))
    cross = sdpa(3, 1500, "model.decoder.layers.0.encoder_attn")
    seg = segment([sdpa(0, 8), sdpa(1, 8), softmax, cross], (), [TopCall(1, "M", 0, 4)])
    assert (seg.steps[0].kind, seg.steps[0].query_len, seg.steps[0].kv_len) == ("decode", 1, 17)


def test_an_encoder_run_before_the_first_call_is_the_first_steps_work():
    # generate() on an encoder-decoder: setup (2 ops), the encoder (module 2, model.encoder of the
    # model, module 1) over 12 positions, 1 op of generate's own, then 3 calls of the model: the
    # first attends 1 query to 1 key.  The encoder's is a prompt's work: step 1, a prefill
    def att(i, q, k, module):
        return replace(attention(i, q, k), module=module)

    seq = ops("mm") + [att(2, 12, 12, "layers.0.self_attn"), OpRecord(3, "aten::mm.default", module="layers.0.fc1"),
                       OpRecord(4, "aten::full.default")]
    seq += [att(5 + i, 1, 1 + i, "model.decoder.layers.0.self_attn") for i in range(3)]
    calls = [TopCall(2, "Encoder", 2, 4, within=1, path="model.encoder")]
    calls += [TopCall(1, "EncoderDecoder", 5 + i, 6 + i) for i in range(3)]
    seg = segment(seq, (), calls)
    assert [o.region for o in seg.ops[:5]] == [SETUP, SETUP, "step 1", "step 1", "step 1"]
    # a prefill by its work (the encoder's 12 queries); its shape the model call's own (1 query, 1 key)
    assert [(s.kind, s.query_len, s.kv_len, s.first_op) for s in seg.steps] == [
        ("prefill", 1, 1, 2), ("decode", 1, 2, 6), ("decode", 1, 3, 7)]
    # named as in the model, as its own calls name them
    assert [o.module for o in seg.ops[2:4]] == ["model.encoder.layers.0.self_attn", "model.encoder.layers.0.fc1"]
    assert any("step 1 begins with model.encoder (Encoder)" in n for n in seg.notes)
    # a module not inside the step module, called before it, stays in the setup
    alone = segment(seq, (), [replace(calls[0], within=None, path="")] + calls[1:])
    assert [o.region for o in alone.ops[:5]] == [SETUP] * 5 and alone.steps[0].kind == "decode"


def test_a_second_model_of_the_same_type_is_named_as_another():
    # assisted generation: the assistant (module 2) is called most, the main model (module 1, the
    # same class) between its calls: the note must not read "the calls of LlamaForCausalLM join
    # the calls of LlamaForCausalLM"
    calls = [TopCall(2, "LlamaForCausalLM", 2 * i, 2 * i + 1) for i in range(3)]
    calls += [TopCall(1, "LlamaForCausalLM", 2 * i + 1, 2 * i + 2) for i in range(2)]
    seg = segment(ops("m" * 6), (), sorted(calls, key=lambda c: c.start))
    assert any("steps are the 3 calls of LlamaForCausalLM; the outermost calls of another LlamaForCausalLM "
               "(a second model) between them join the next step when it reads what they made, else the step they "
               "follow" in n for n in seg.notes)


def test_a_forward_loop_sets_its_own_code_between_calls_apart():
    # 3 x [model call: 2 ops, then the loop's print(out.mean().item()): 2 ops], as a user's loop does
    seq = ops("mmmm" * 3)
    calls = [TopCall(1, "Layer", 4 * i, 4 * i + 2) for i in range(3)]
    seg = segment(seq, (), calls)
    assert [s.kind for s in seg.steps] == ["forward"] * 3
    assert [o.region for o in seg.ops] == (["step 1"] * 2 + [BETWEEN] * 2 + ["step 2"] * 2 + [BETWEEN] * 2
                                           + ["step 3"] * 2 + [TEARDOWN] * 2)
    assert [(s.first_op, s.last_op) for s in seg.steps] == [(0, 1), (4, 5), (8, 9)]
    assert any(BETWEEN in n for n in seg.notes)


def test_choosing_the_headline_steps():
    seq = ops("m" * 6)
    calls = [TopCall(1, "M", i, i + 1) for i in range(6)]
    seg = segment(seq, (), calls, select=parse_select("2:4"))
    assert [s.index for s in seg.steps if s.headline] == [2, 3, 4]
    assert parse_select("3") == (3, 3) and parse_select("2:") == (2, None) and parse_select(":4") == (1, 4)
    for bad in ("", "x", "0", "5:2", "1:2:3"):
        with pytest.raises(UsageError, match="--steps"):
            parse_select(bad)
    with pytest.raises(UsageError, match="has 6 steps"):
        segment(seq, (), calls, select=(9, None))


def test_explicit_marks_win():
    # torch.cuda.profiler.start() before op 2, stop() before op 5: one marked step, no module called
    seq = ops("mmmmmmm")
    seg = segment(seq, (), (), ranges=[(2, 5)])
    assert [o.region for o in seg.ops] == [SETUP] * 2 + ["step 1"] * 3 + [TEARDOWN] * 2
    assert seg.steps[0].kind == "marked"
    # the user's own regions are the steps; unmarked ops before and after are setup and teardown
    marked = [OpRecord(i, "aten::mm.default", region=r) for i, r in enumerate(["", "decode", "decode", "", "save"])]
    seg = segment(marked, ("decode", "save"), [TopCall(1, "M", 1, 3)])
    assert [s.name for s in seg.steps] == ["decode", "save"] and all(s.kind == "marked" for s in seg.steps)
    assert [o.region for o in seg.ops] == [SETUP, "decode", "decode", "unmarked", "save"]


def test_no_steps_says_so_and_keeps_the_whole_run():
    seq = ops("mmm")
    seg = segment(seq, (), ())
    assert seg.steps == () and [o.region for o in seg.ops] == ["", "", ""]
    assert "no steps found" in seg.notes[0]


def test_steps_round_trip_through_json():
    seg = segment(ops("mmmm"), (), [TopCall(1, "M", 1, 2), TopCall(1, "M", 2, 3)])
    p = Profile(seg.ops, regions=seg.regions, steps=seg.steps, notes=seg.notes)
    q = Profile.from_json(p.to_json())
    assert q.steps == p.steps and q.notes == p.notes and q.regions == p.regions


# ---------------------------------------------------------------------------- scripts as users write them


@needs_transformers
def test_hf_generate_finds_one_prefill_and_the_decodes(tmp_path):
    r = cli("profile", str(EXAMPLES / "hf_generate.py"), "--count-only", "--format", "json", "-o", "out", "--",
            "--new-tokens", "5", "--prompt", "12", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "hf_generate.json").read_text())
    steps = prof["steps"]
    assert [s["kind"] for s in steps] == ["prefill"] + ["decode"] * 4
    assert [s["query_len"] for s in steps] == [12, 1, 1, 1, 1]
    assert [s["kv_len"] for s in steps] == [12, 13, 14, 15, 16]  # the new token attends the cache and itself
    assert all(s["module"] == "LlamaForCausalLM" for s in steps)
    setup = [o for o in prof["ops"] if o["region"] == "setup"]
    assert setup and all(o["region"] != "setup" for o in prof["ops"] if o["module"].startswith("model.layers"))
    assert "steady state:" in r.stdout and "prefill (12 tokens)" in r.stdout and "per output token" in r.stdout


PROMPT_LOOKUP = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM
cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=64)
torch.manual_seed(0)
model = LlamaForCausalLM(cfg).eval()
ids = torch.randint(0, 64, (1, 32))
out = model.generate(ids, max_new_tokens=12, min_new_tokens=12, prompt_lookup_num_tokens=3, do_sample=False,
                     pad_token_id=0)
"""


def _generate_steps(tmp_path: Path, name: str, script: str) -> tuple[subprocess.CompletedProcess, list[dict]]:
    """`rooflight profile NAME.py --count-only` of a generate() script: the run and its steps."""
    (tmp_path / f"{name}.py").write_text(script)
    r = cli("profile", f"{name}.py", "--count-only", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    return r, json.loads((tmp_path / "out" / f"{name}.json").read_text())["steps"]


@needs_transformers
def test_speculative_verification_steps_are_decodes_not_prefills(tmp_path):
    # prompt lookup decoding (drafts copied from the prompt, verified by the model): after the
    # prefill each step reads the cache it found plus its 1 + drafts new tokens.  They were
    # "prefill (2-4 tokens): ... time to first token, median of 3 prefills"
    r, steps = _generate_steps(tmp_path, "prompt_lookup", PROMPT_LOOKUP)
    assert steps[0]["kind"] == "prefill" and steps[0]["query_len"] == 32
    assert {s["kind"] for s in steps[1:]} == {"decode"} and max(s["query_len"] for s in steps) > 1
    for before, s in zip(steps[1:], steps[2:]):  # each goes on with the cache the step before left
        assert before["kv_len"] - before["query_len"] <= s["kv_len"] - s["query_len"] <= before["kv_len"]
    assert "prefill (32 tokens)" in r.stdout and "speculative decoding's verification" in r.stdout


ASSISTED = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM
torch.manual_seed(0)
main = LlamaForCausalLM(LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=64)).eval()
draft = LlamaForCausalLM(LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                     num_attention_heads=2, num_key_value_heads=1, vocab_size=64)).eval()
ids = torch.randint(0, 64, (1, 16))
out = main.generate(ids, assistant_model=draft, max_new_tokens=8, min_new_tokens=8, do_sample=False, pad_token_id=0,
                    num_assistant_tokens=1, num_assistant_tokens_schedule="constant", assistant_confidence_threshold=0.0)
"""


@needs_transformers
def test_assisted_generations_verification_steps_have_the_main_models_query(tmp_path):
    # an assistant drafting 1 token a step: each step holds its call (1 token) and the main model's
    # verification of the token before and the draft (2).  The step's query length was read from
    # the step's first token ids, the assistant's: 1, which also took the main model's 2-token
    # query (4 heads over repeated KV heads) for a packed-GQA decode of one token
    _, steps = _generate_steps(tmp_path, "assisted", ASSISTED)
    assert steps[0]["kind"] == "prefill" and steps[0]["query_len"] == 16
    verifying = steps[1:-1]  # the last call checks the final token alone
    assert {s["kind"] for s in verifying} == {"decode"} and {s["query_len"] for s in verifying} == {2}


@pytest.mark.parametrize("q, kv, before, verifies", [
    (3, 38, ("decode", 1, 2, 35), True),  # the cache found (35) is what the step before left
    (2, 36, ("decode", 1, 4, 38), True),  # the step before's drafts were partly rejected: cropped to 34
    (4, 4, ("decode", 1, 1, 40), False),  # a new generation's short prompt: no cache found
    (3, 64, ("decode", 1, 1, 64), True),  # a static cache: every slot read at each step
    (12, 52, ("decode", 1, 1, 40), False),  # more than 8 new tokens: a prompt (a chat's next turn)
    (3, 38, ("train", 1, 2, 35), False),
    (3, 38, None, False),
])
def test_a_few_new_tokens_on_the_cache_before_verify_drafts(q, kv, before, verifies):
    from rooflight.steps import _verifies
    assert _verifies(q, kv, before) is verifies


@needs_transformers
def test_hf_training_loop_is_three_train_steps_timed_on_the_cpu(tmp_path):
    r = cli("profile", str(EXAMPLES / "hf_train.py"), "--device", "cpu", "--format", "json,html", "-o", "out",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "hf_train.json").read_text())
    assert [s["kind"] for s in prof["steps"]] == ["train"] * 3
    assert [s["headline"] for s in prof["steps"]] == [False, True, True]  # the first iteration is the warm-up
    phases = {o["phase"] for o in prof["ops"] if o["region"] == "step 2"}
    assert phases == {"forward", "backward", "optimizer"}
    rows = {r["region"]: r for r in prof["timing"]["regions"]}
    for name in ("setup", "step 1", "step 2", "step 3"):
        assert rows[name]["wall_seconds"] > 0 and rows[name]["busy_seconds"] <= rows[name]["wall_seconds"]
    html = (tmp_path / "out" / "hf_train.html").read_text()
    assert "<h2>Steps</h2>" in html and "<h2>Setup and teardown</h2>" in html


@needs_transformers
def test_a_gradient_accumulation_loop_is_one_train_step_per_optimizer_step_timed_on_the_cpu(tmp_path):
    r = cli("profile", str(EXAMPLES / "hf_train_accumulated.py"), "--device", "cpu", "--format", "json", "-o", "out",
            "--", "--accum", "3", "--iters", "3", "--device", "cpu", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "hf_train_accumulated.json").read_text())
    steps = prof["steps"]
    # each iteration: 3 micro-batches of 2 x 32 tokens, then the held-out evaluation of 4 x 32
    assert [(s["kind"], s["calls"], s["batch"] * s["query_len"]) for s in steps] == [("train", 3, 192), ("forward", 1, 128)] * 3
    # (the loop prints loss.item() after the optimizer's step: "after backward", the gradients' side)
    assert {o["phase"] for o in prof["ops"] if o["region"] == "step 3"} == {"forward", "backward", "optimizer",
                                                                             "after backward"}
    rows = {r["region"]: r for r in prof["timing"]["regions"]}
    walls = [rows[f"step {k}"]["wall_seconds"] for k in range(1, 7)]
    assert all(w > 0 for w in walls) and sum(walls) < rows[""]["wall_seconds"], walls
    # a train step of 3 micro-batches outlasts the evaluation forward of twice a micro-batch
    assert walls[2] > walls[3] and walls[4] > walls[5], walls
    assert "3 calls of LlamaForCausalLM (gradient accumulation)" in r.stdout


@pytest.mark.skipif(importlib.util.find_spec("accelerate") is None, reason="accelerate is not installed (test extra)")
@needs_transformers
def test_hf_trainer_is_one_train_step_per_optimizer_step_with_its_fused_adamw(tmp_path):
    r = cli("profile", str(EXAMPLES / "hf_trainer.py"), "--count-only", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "hf_trainer.json").read_text())
    assert [(s["kind"], s["calls"], s["batch"] * s["query_len"]) for s in prof["steps"]] == [("train", 2, 128)] * 3
    step2 = [o for o in prof["ops"] if o["region"].startswith("step 2")]
    fused = [o for o in step2 if o["op"].startswith("aten::_fused_adamw_")]
    assert len(fused) == 2 and all(o["phase"] == "optimizer" for o in fused)  # decay and no-decay groups
    # the second micro-batch's gradients are added into .grad: one add_ per parameter (21), backward
    assert sum(o["op"] == "aten::add_.Tensor" and o["phase"] == "backward" and not o["module"] for o in step2) == 21
    # model FLOPs a step: 3 x 2 micro-batches x the forward's matrix work.  Per layer q, k, v, o and
    # the MLP: 128*128 + 2*128*64 + 128*128 + 3*128*256 = 147,456 weights, x 2 layers + lm_head
    # 128*512 = 360,448; 2 x 360,448 x 64 tokens = 46,137,344; attention 4 x 2 x 4 heads x 32 x 32
    # x 32 = 1,048,576 a layer, 2,097,152; 3 x 2 x 48,234,496 = 289,406,976
    assert "model FLOPs 2.894e+08 per step" in r.stdout
    assert "fused=True" not in r.stdout  # Trainer's AdamW is already fused: no advice to fuse it
    assert "2 calls of LlamaForCausalLM (gradient accumulation)" in r.stdout


STATIC_GENERATE = """
import torch
from transformers import LlamaConfig, LlamaForCausalLM

device = "cuda" if torch.cuda.is_available() else "cpu"
cfg = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=512)
model = LlamaForCausalLM(cfg).to(device).eval()
ids = torch.randint(0, 512, (1, 16), device=device)
out = model.generate(ids, max_new_tokens=6, min_new_tokens=6, do_sample=False, cache_implementation="static")
print(out.shape)
"""


def _static_generate(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    (tmp_path / "static_generate.py").write_text(STATIC_GENERATE)
    r = cli("profile", "static_generate.py", "--format", "json", "-o", "out", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "static_generate.json").read_text())
    steps = prof["steps"]
    assert [(s["kind"], s["batch"] * s["query_len"]) for s in steps] == [("prefill", 16)] + [("decode", 1)] * 5
    # a static cache's attention reads every slot of it, masked: 16 + 6 - 1 = 21 keys each step
    assert {s["kv_len"] for s in steps[1:]} == {21}
    assert "prefill (16 tokens)" in r.stdout and "per output token" in r.stdout
    return r, prof


@needs_transformers
def test_a_static_cache_generate_is_a_prefill_then_decodes_of_one_token(tmp_path):
    # on the CPU, Hugging Face's pack_gqa (transformers >= 5.2x) runs the masked decode's query
    # heads in the length dimension
    _static_generate(tmp_path, "--count-only")


@pytest.mark.gpu
@needs_transformers
def test_a_static_cache_generate_is_timed_on_the_gpu_with_its_compiled_model_calls(tmp_path):
    # on a GPU a static cache's generate() compiles the model's forward, module hooks and all:
    # the CUDA events marking its calls in the plain runs are never recorded (this raised), so the
    # steps' walls come from the profiled runs, and a note says so
    r, prof = _static_generate(tmp_path)
    rows = {row["region"]: row for row in prof["timing"]["regions"]}
    assert all(rows[s["name"]]["wall_seconds"] >= rows[s["name"]]["busy_seconds"] > 0 for s in prof["steps"])
    notes = " ".join(prof["timing"]["notes"])
    assert "CUDA events" in notes


WHISPER_GENERATE = """
import torch
from transformers import WhisperConfig, WhisperForConditionalGeneration

device = "cuda" if torch.cuda.is_available() else "cpu"
torch.manual_seed(0)
cfg = WhisperConfig(d_model=64, encoder_layers=1, decoder_layers=1, encoder_attention_heads=2,
                    decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, num_mel_bins=16,
                    vocab_size=100, max_source_positions=50, max_target_positions=32, decoder_start_token_id=1,
                    pad_token_id=0, eos_token_id=2, bos_token_id=1, begin_suppress_tokens=None, suppress_tokens=None)
model = WhisperForConditionalGeneration(cfg).to(device).eval()
features = torch.randn(1, 16, 100, device=device)  # 100 frames -> 50 encoder positions (conv2: stride 2)
with torch.no_grad():
    tokens = model.generate(input_features=features, max_new_tokens=3, do_sample=False)
print(tokens.tolist())
"""


def _whisper(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    # generate() runs WhisperEncoder on its own, then WhisperForConditionalGeneration once per token:
    # the encoder is the first step's work (the time to the first token), not the setup's
    (tmp_path / "whisper_generate.py").write_text(WHISPER_GENERATE)
    r = cli("profile", "whisper_generate.py", "--format", "json", "-o", "out", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "whisper_generate.json").read_text())
    # step 1 a prefill by its work (the encoder's 50 positions), of the decoder's 1 start token
    assert [(s["kind"], s["query_len"]) for s in prof["steps"]] == [("prefill", 1), ("decode", 1), ("decode", 1)]
    assert "prefill (1 token)" in r.stdout and "step 1 begins with model.encoder (WhisperEncoder)" in r.stdout
    ops = prof["ops"]
    assert not any(o["module"].startswith("model.encoder") for o in ops if o["region"].startswith("setup"))
    # its two convolutions, in step 1 under the model's names (TF32 tensor cores: cuDNN's default
    # for fp32): conv1 16 -> 64 channels, kernel 3, 100 outputs: 2*64*16*3*100 = 614,400 and its
    # bias 64*100 = 6,400; conv2 64 -> 64, kernel 3, stride 2, 50 outputs: 2*64*64*3*50 = 1,228,800
    # and 3,200
    convs = {o["module"]: o["flops"] for o in ops if o["op"].startswith("aten::convolution")}
    assert convs == {"model.encoder.conv1": {"tf32_tensor": 614_400, "fp32": 6_400},
                     "model.encoder.conv2": {"tf32_tensor": 1_228_800, "fp32": 3_200}}
    assert {o["region"].split("/")[0] for o in ops if o["module"].startswith("model.encoder")} == {"step 1"}
    return r, prof


@needs_transformers
def test_an_encoder_decoders_generate_counts_its_encoder_in_the_first_step(tmp_path):
    _whisper(tmp_path, "--count-only")


@pytest.mark.gpu
@needs_transformers
def test_an_encoder_decoders_generate_is_timed_with_its_encoder_in_the_first_step(tmp_path):
    r, prof = _whisper(tmp_path)
    rows = {row["region"]: row for row in prof["timing"]["regions"]}
    assert rows["step 1"]["wall_seconds"] >= rows["step 1"]["busy_seconds"] > 0


LLAVA_GENERATE = """
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

torch.manual_seed(0)
vision = CLIPVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                          image_size=56, patch_size=14)
text = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                   num_key_value_heads=2, vocab_size=600)
model = LlavaForConditionalGeneration(LlavaConfig(vision_config=vision, text_config=text, image_token_index=599,
                                                  image_seq_length=16)).eval()
ids = torch.cat([torch.full((1, 16), 599), torch.randint(0, 500, (1, 8))], dim=1)  # 16 image tokens, 8 of text
model.generate(input_ids=ids, pixel_values=torch.randn(1, 3, 56, 56), max_new_tokens=3, do_sample=False)
"""


@needs_transformers
def test_a_vision_language_generate_counts_its_vision_tower_in_the_prefill_of_its_whole_prompt(tmp_path):
    # generate() runs the vision tower and projector before the model's first call: the prefill's
    # work; the prefill's length is the prompt's 24 tokens (16 image, 8 text), not the tower's 17
    # patches (4 x 4 + the class token)
    (tmp_path / "llava_generate.py").write_text(LLAVA_GENERATE)
    r = cli("profile", "llava_generate.py", "--count-only", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "llava_generate.json").read_text())
    assert [(s["kind"], s["query_len"], s["kv_len"]) for s in prof["steps"]] == [
        ("prefill", 24, 24), ("decode", 1, 25), ("decode", 1, 26)]
    tower = [o for o in prof["ops"] if o["module"].startswith("model.vision_tower")]
    assert tower and {o["region"].split("/")[0] for o in tower} == {"step 1"}
    assert "uncounted" not in r.stdout  # torch._is_all_true over the image-token mask is counted


@needs_transformers
def test_a_checkpointed_autocast_training_loop_is_three_train_steps_with_their_recomputation(tmp_path):
    # the recomputed layers run during backward: their module calls are no outermost calls (no
    # steps of their own, nothing "joined"), their ops are the step's, in the layers' modules
    r = cli("profile", str(EXAMPLES / "hf_train_checkpointed.py"), "--count-only", "--format", "json", "-o", "out",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "hf_train_checkpointed.json").read_text())
    assert [s["kind"] for s in prof["steps"]] == ["train"] * 3
    assert not any("join the step" in n for n in prof["notes"])
    for k in (1, 2, 3):
        ops = [o for o in prof["ops"] if o["region"] == f"step {k}"]
        # (after the last step the script prints loss.item(): in no module, after a backward)
        assert {o["phase"] for o in ops} == {"forward", "recompute", "backward", "optimizer"} | (
            {"after backward"} if k == 3 else set())
        rec = [o for o in ops if o["phase"] == "recompute"]
        assert all(o["module"].startswith("model.layers.") for o in rec)
        # under autocast, as the forward ran: bf16 tensor-core matmuls
        assert {c for o in rec if o["op"] == "aten::mm.default" for c in o["flops"]} == {"bf16_tensor"}
    assert not [o for o in prof["ops"] if o["phase"] == "recompute" and not o["region"].startswith("step ")]
    assert "the forward run again by activation checkpointing" in r.stdout.replace("\n", " ")


def test_heavy_setup_is_set_apart_from_the_headline(tmp_path):
    r = cli("profile", str(EXAMPLES / "heavy_setup.py"), "--count-only", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "heavy_setup.json").read_text())
    setup = [o for o in prof["ops"] if o["region"] == "setup"]
    # the initialisation (trunc_normal_ of 4 tensors) and the input are setup; the steps are the 3 forwards
    assert sum(1 for o in setup if "normal_" in o["op"] or "uniform_" in o["op"]) >= 4
    assert [s["kind"] for s in prof["steps"]] == ["forward"] * 3
    steady = next(line for line in r.stdout.splitlines() if "steady state:" in line)
    assert "compute-bound" in steady.split(";")[0].split(",")[0]  # the headline is the GEMMs, not the setup


def test_profiler_marks_are_the_capture_range(tmp_path):
    r = cli("profile", str(EXAMPLES / "profiler_marks.py"), "--count-only", "--format", "json", "-o", "out",
            cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "profiler_marks.json").read_text())
    assert [s["kind"] for s in prof["steps"]] == ["marked"]
    inside = [o["op"] for o in prof["ops"] if o["region"] == "step 1"]
    assert inside.count("aten::mm.default") == 2 and inside.count("aten::relu.default") == 2
    assert sum(1 for o in prof["ops"] if o["region"] == "setup" and o["op"] == "aten::mm.default") == 1


def test_a_script_with_no_steps_falls_back_with_a_note(tmp_path):
    r = cli("profile", str(EXAMPLES / "no_steps.py"), "--count-only", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "no steps found" in r.stdout and "steady state" not in r.stdout
    prof = json.loads((tmp_path / "out" / "no_steps.json").read_text())
    assert prof["steps"] == [] and any("no steps found" in n for n in prof["notes"])


def test_single_pass_runs_the_script_once(tmp_path):
    script = tmp_path / "counted_runs.py"
    script.write_text("import pathlib, torch\n"
                      "p = pathlib.Path('runs.txt'); p.write_text(p.read_text() + 'x' if p.exists() else 'x')\n"
                      "m = torch.nn.Linear(8, 8)\n"
                      "for _ in range(2):\n    m(torch.randn(4, 8))\n")
    r = cli("profile", str(script), "--device", "cpu", "--single-pass", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "runs.txt").read_text() == "x"  # once, not twice
    assert "single pass" in r.stdout
    (tmp_path / "runs.txt").unlink()
    r = cli("profile", str(script), "--device", "cpu", "--format", "json", "-o", "out2", cwd=tmp_path)
    # the default on the CPU: one untimed run, then the timed one under the capture and a plain one
    assert r.returncode == 0 and (tmp_path / "runs.txt").read_text() == "xxx"
    r = cli("profile", str(script), "--single-pass", "--repeats", "3", cwd=tmp_path)
    assert r.returncode == 2 and "--single-pass runs the script once" in r.stderr
    r = cli("profile", str(EXAMPLES / "tiny_model.py"), "--steps", "2:", cwd=tmp_path)
    assert r.returncode == 2 and "apply to scripts" in r.stderr


@pytest.mark.gpu
def test_device_cpu_on_a_gpu_machine_times_a_script_on_the_cpu_or_says_why_not(tmp_path):
    # --device cpu --single-pass on a GPU machine ran a GPU labelling pass first, then refused:
    # "needs device='cpu' from the start"; a script on CUDA tensors cannot be timed on the CPU
    (tmp_path / "cpu_loop.py").write_text("import torch\nm = torch.nn.Linear(8, 8)\n"
                                          "for _ in range(2):\n    m(torch.randn(4, 8))\n")
    r = cli("profile", "cpu_loop.py", "--device", "cpu", "--single-pass", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out" / "cpu_loop.json").read_text())["timing"]["device_kind"] == "cpu"
    (tmp_path / "gpu_loop.py").write_text("import torch\nm = torch.nn.Linear(8, 8).cuda()\n"
                                          "for _ in range(2):\n    m(torch.randn(4, 8, device='cuda'))\n")
    r = cli("profile", "gpu_loop.py", "--device", "cpu", "-o", "out2", cwd=tmp_path)
    assert r.returncode == 2 and "ran on CUDA tensors" in r.stderr and "drop --device cpu" in r.stderr
    assert "Traceback" not in r.stderr
    # without --device: timed on the GPU, though its Linear's initialisation ran more CPU ops than
    # its two steps ran CUDA ones (the profile's most common device is the CPU)
    r = cli("profile", "gpu_loop.py", "--format", "json", "-o", "out3", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "out3" / "gpu_loop.json").read_text())["timing"]["device_kind"] == "cuda"


def test_a_processs_first_call_cost_does_not_land_on_the_cpu_op_times(tmp_path):
    # an op that is slow only on its first call in the process (as the CPU math libraries' first
    # matmul is: 24 ms for a 2 MFLOP one, seen on a Mixtral script): the timed runs come after one
    # untimed run, so the op is timed warm; with --warmup the warm-up runs take that place
    script = tmp_path / "first_call.py"
    script.write_text(textwrap.dedent("""
        import sys, time, types, torch

        # the process's state (each run of the script's body starts a fresh namespace)
        state = sys.modules.setdefault("rltest_state", types.ModuleType("rltest_state"))
        if not hasattr(state, "op"):
            state.cold = True

            @torch.library.custom_op("rltest::cold_first", mutates_args=())
            def cold_first(x: torch.Tensor) -> torch.Tensor:
                if state.cold:
                    state.cold = False
                    time.sleep(0.3)
                return x.clone()

            state.op = cold_first
        cold_first = state.op

        m = torch.nn.Linear(8, 8)
        for _ in range(3):
            cold_first(m(torch.randn(4, 8)))
    """))
    for extra in ([], ["--warmup", "1"]):
        r = cli("profile", str(script), "--device", "cpu", "--format", "json", "-o", "out", "--force", *extra,
                cwd=tmp_path)
        assert r.returncode == 0, r.stderr
        prof = json.loads((tmp_path / "out" / "first_call.json").read_text())
        cold = {o["index"] for o in prof["ops"] if "cold_first" in o["op"]}
        times = [t["seconds"] for t in prof["timing"]["ops"] if t["op_index"] in cold]
        assert len(times) == 3 and max(times) < 0.1, (extra, times)
        assert any("ran once first, untimed" in n for n in prof["timing"]["notes"]) == (not extra)


def test_the_headline_region_is_the_steady_state(tmp_path):
    from rooflight import api

    r = cli("profile", str(EXAMPLES / "heavy_setup.py"), "--count-only", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a = api.load(tmp_path / "out" / "heavy_setup.json").analyze("h100", calibrated=False)
    assert a.diagnosis.headline_region == STEADY
    steady = a.diagnosis.region(STEADY)
    # steps 2 and 3, the same forward each: the steady state is twice one step's roofline time
    one = a.diagnosis.region("step 2").total_seconds
    assert steady.total_seconds == pytest.approx(2 * one)
    assert all(o.region in ("step 2", "step 3") for g in a.groups for o in a.profile.ops if o.index in g.indices)


def test_steps_tile_the_run():
    from rooflight.timing import tile_steps

    class S:
        def __init__(self, name, kind="decode"):
            self.name, self.kind = name, kind

    # step 1 runs 0-3, then the host works until step 2 starts at 5; step 2 runs 5-9: the gap is step 1's
    bounds = {"step 1": (0.0, 3.0), "step 2": (5.0, 9.0), "setup": (-9, 0)}
    assert tile_steps([S("step 1"), S("step 2")], bounds) == {"step 1": 5.0, "step 2": 4.0}
    # forward-only steps are their model calls: the 2 between them is the loop's own ("between steps")
    assert tile_steps([S("step 1", "forward"), S("step 2", "forward")], bounds) == {"step 1": 3.0, "step 2": 4.0}
    # marked steps keep their regions' own times (a region entered in every layer is one step)
    assert tile_steps([S("step 1", "marked"), S("step 2", "marked")], bounds) == {}


def test_a_long_op_table_is_cut_to_the_heaviest(monkeypatch, h100_decode):
    from rooflight.render import html

    monkeypatch.setattr(html, "MAX_OP_ROWS", 10)
    page = html.report_html(h100_decode.analyze("h100", calibrated=False))
    assert f"10 of {len(h100_decode.ops)} ops shown" in page
    assert page.count("<tr data-label=") <= 10 + 40  # the cut op table, and the op-group table's rows


def test_cpu_setup_teardown_and_between_are_timed_on_the_plain_runs(tmp_path):
    """Setup, teardown and the loop's code between forward steps take their walls from the plain
    runs: under the capture their spans also hold its bookkeeping between ops, shown as idle time
    (a T5 generate() read setup 50.9 ms against a whole run of 40.3 ms).  Here 3,000 tiny ops of
    setup (a few µs each on their own, far more each under the capture) and a model called three
    times with a print between: the parts add up to the run, none outlasts it."""
    script = tmp_path / "busy_setup.py"
    script.write_text(textwrap.dedent("""
        import torch

        x = torch.zeros(1)
        for _ in range(3000):
            x = x + 1
        m = torch.nn.Linear(64, 64)
        for i in range(3):
            y = m(torch.randn(8, 64))
            print(i, float(y.sum()) > -1e9)
        for _ in range(300):
            x = x - 1
    """))
    r = cli("profile", str(script), "--device", "cpu", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "busy_setup.json").read_text())
    assert [s["kind"] for s in prof["steps"]] == ["forward"] * 3
    walls = {row["region"]: row["wall_seconds"] for row in prof["timing"]["regions"]}
    whole = walls[""]
    assert {SETUP, TEARDOWN, BETWEEN} <= set(walls)
    parts = walls[SETUP] + walls[TEARDOWN] + walls[BETWEEN] + sum(walls[f"step {k}"] for k in (1, 2, 3))
    assert walls[SETUP] < whole and parts < 1.25 * whole, walls  # the plain runs differ a little from each other
    for row in prof["timing"]["regions"]:
        assert row["busy_seconds"] <= row["wall_seconds"]
    # steps that are the script's own regions: setup before the first, teardown after the last
    marked = tmp_path / "marked_setup.py"
    marked.write_text(script.read_text().replace("    y = m(", "    with rooflight.region(f'iter{i}'):\n        y = m(")
                      .replace("import torch", "import torch, rooflight"))
    r = cli("profile", str(marked), "--device", "cpu", "--format", "json", "-o", "out2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out2" / "marked_setup.json").read_text())
    assert [s["kind"] for s in prof["steps"]] == ["marked"] * 3
    walls = {row["region"]: row["wall_seconds"] for row in prof["timing"]["regions"]}
    assert walls[SETUP] < walls[""] and walls[SETUP] + walls[TEARDOWN] < walls[""], walls


def test_a_single_headline_step_is_not_a_median(monkeypatch):
    from types import SimpleNamespace

    from rooflight.render import steps as S

    def rows(kinds):
        return [S.StepRow(i, f"s{i}", k, "headline", 8, 16 + i, 1e-3 * (i + 1), 1e-3, 0.0, "memory-bound", 1.0)
                for i, k in enumerate(kinds)]

    a = SimpleNamespace(profile=SimpleNamespace(timing=object()))
    monkeypatch.setattr(S, "step_rows", lambda a: rows(["prefill", "decode", "train"]))
    assert S.phase_summary(a)[1:] == ["decode: 2.00 ms per output token measured (1 step, KV length 17–17)",
                                      "train: 3.00 ms per step measured (1 step)"]
    monkeypatch.setattr(S, "step_rows", lambda a: rows(["decode", "decode", "decode"]))
    assert S.phase_summary(a) == ["decode: 2.00 ms per output token measured (median of 3 steps, KV length 16–18)"]


def test_two_generate_calls_time_their_headline_prefill_and_every_decodes_kv_length(monkeypatch):
    # a script generating twice: prefill (36 tokens, warm-up), decodes at KV 13..16, then a prefill
    # of 24 tokens and decodes at KV 13..15.  The first prefill is the warm-up: the headline's is
    # the second; the decodes' KV lengths run 13-16 over both, not first-to-last (14-15)
    from types import SimpleNamespace

    from rooflight.render import steps as S

    spec = [("prefill", "warm-up", 36, 12), ("decode", "warm-up", 3, 13), ("decode", "headline", 3, 14),
            ("decode", "headline", 3, 16), ("prefill", "headline", 24, 12), ("decode", "headline", 2, 13),
            ("decode", "headline", 2, 15)]
    rows = [S.StepRow(i, f"s{i}", k, st, tok, kv, 1e-3 * (i + 1), 1e-3, 0.0, "memory-bound", 1.0)
            for i, (k, st, tok, kv) in enumerate(spec)]
    monkeypatch.setattr(S, "step_rows", lambda a: rows)
    a = SimpleNamespace(profile=SimpleNamespace(timing=object()))
    assert S.phase_summary(a) == [
        "prefill (24 tokens): 5.00 ms measured (time to first token, the model's part)",
        "decode: 5.00 ms per output token measured (median of 4 steps, KV length 13–16)"]  # 3, 4, 6, 7 ms
    # two headline prefills of different prompts: their median, and the range of their tokens
    rows[0] = S.StepRow(0, "s0", "prefill", "headline", 36, 12, 1e-3, 1e-3, 0.0, "memory-bound", 1.0)
    assert S.phase_summary(a)[0] == ("prefill (24–36 tokens): 3.00 ms measured (time to first token, the model's "
                                     "part, median of 2 prefills)")


DPO = """
import torch
import torch.nn.functional as F

torch.manual_seed(0)


def mlp():
    return torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 8))


ref = mlp().eval().requires_grad_(False)  # built first, called first in each iteration
policy = mlp()
opt = torch.optim.SGD(policy.parameters(), lr=0.1)
for _ in range(4):
    chosen, rejected = torch.randn(16, 32), torch.randn(16, 32)
    with torch.no_grad():
        rc, rr = ref(chosen).sum(-1), ref(rejected).sum(-1)
    pc, pr = policy(chosen).sum(-1), policy(rejected).sum(-1)
    loss = -F.logsigmoid((pc - rc) - (pr - rr)).mean()
    loss.backward()
    opt.step()
    opt.zero_grad()
"""


def test_a_dpo_loop_is_one_train_step_per_iteration_and_its_frozen_reference_counts_once(tmp_path):
    # a policy trained on two forwards (chosen, rejected) and one backward, beside a frozen
    # reference called as often and first: the steps are the policy's iterations, not the reference's
    # calls, and the reference's ops are phase "no-grad"
    (tmp_path / "dpo.py").write_text(DPO)
    r = cli("profile", "dpo.py", "--count-only", "--format", "json", "-o", "out", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    prof = json.loads((tmp_path / "out" / "dpo.json").read_text())
    assert [(s["kind"], s["calls"]) for s in prof["steps"]] == [("train", 2)] * 4
    # the policy is the second module called outermost (place 1); each step begins with the
    # reference's (place 0) chosen pass, its calls 0, 2, 4, 6: where a run without the capture marks it
    assert [(s["instance"], s["begins_instance"], s["begins_call"]) for s in prof["steps"]] == \
        [(1, 0, 0), (1, 0, 2), (1, 0, 4), (1, 0, 6)]
    step2 = [o for o in prof["ops"] if o["region"] == "step 2"]
    phases = [o["phase"] for o in step2 if o["op"] == "aten::addmm.default"]
    # the reference's 2 calls x 2 linears (they join the step that reads their results), then the policy's
    assert phases == ["no-grad"] * 4 + ["forward"] * 4
    assert [o["phase"] for o in prof["ops"] if o["region"] == "setup" and o["op"] == "aten::addmm.default"] == []
    # per call, forward: 2*16*32*64 + 2*16*64*8 = 65,536 + 16,384 matrix FLOPs + the biases' 16*64 + 16*8 = 83,072;
    # model FLOPs a step: 3 x the policy's 2 calls + once the reference's 2 calls = 8 x 83,072 = 664,576
    assert "model FLOPs 6.646e+05 per step (over 3) (3x the forward's matrix work, and once the no-grad forwards'" \
        in " ".join(r.stdout.split())
    assert "forwards whose one backward runs after the last, as DPO's chosen and rejected passes" in " ".join(r.stdout.split())
