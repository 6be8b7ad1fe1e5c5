"""The LLM model: memory and latency of a Llama-architecture decoder, from its config alone.

    import rooflight.llm as llm
    est = llm.estimate("llama-2-7b", hw="h100", batch=[1, 16, 64], context=4096)
    est.rows[0].tpot_s, est.max_batch, est.best_decode_intensity
    llm.training_memory("llama-2-7b", zero=3, gpus=8).total_bytes

## Work per step (FLOPs and bytes)

A step is a prefill (S prompt tokens per sequence, batch B) or one decode step at a context C:
the KV cache holds C tokens per sequence, the new token is written at position C and attends
C + 1 keys (`kernels/llama.py`'s decode_one_token at pos = C, its `decode` workload's
context = C).  The KV cache in memory is sized for B x C tokens.  The step is a list of
kernels, each an OpCost (FLOPs by math class, bytes read and written) counted with the
cost model's rules (rooflight/costs/model.py), per layer and outside the layers:

- mode "eager": exactly the ops `kernels/llama.py` runs in eager PyTorch, 49 kernels per layer:
  RMSNorm as 8 ops (cast to fp32, pow, mean, + eps, rsqrt, mul, cast back, mul by the weight),
  RoPE as 9 ops per tensor (two casts of the cos/sin rows, four muls, sub, add, cat), the KV
  cache write as arange + two index_copy_, one fused SDPA kernel (cuDNN/flash: q, k, v read once,
  causal prefill in 128x128 tiles as the cost model counts it), SiLU, the gate mul and two
  residual adds; embedding, a final RMSNorm and the LM head on the last position only.  The test
  (tests/test_llm.py) counts kernels/llama.py on the meta device and holds the two together.
- mode "fused": what a serving engine runs, 9 kernels per layer: fused add+RMSNorm (twice), one
  QKV GEMM, RoPE fused with the KV-cache write, fused attention, the output GEMM, one gate+up
  GEMM, fused SiLU*mul, the down GEMM.  No counted counterpart exists in kernels/.

Eager agrees with the count exactly for fp16 and bf16 models (MHA and GQA).  An fp32 model with
GQA is not modelled op for op: no fused SDPA backend takes fp32 with enable_gqa, so a GPU runs
the materializing math attention there.

Matrix work runs on the tensor class of the activation dtype; vector work on fp32 (as the cost
model counts half-precision elementwise work).  Weight formats: fp16/bf16/fp32; fp8 (W8A8: the
GEMMs run on fp8 tensor math, falling back where a GPU has none); int8 (weight-only, one fp16
scale per output channel) and int4 (weight-only, fp16 scale and zero point per group of
`group_size` weights along the input dimension), both dequantized inside the GEMM and multiplied
in the activation dtype.  Embedding, LM head and norm weights stay in the activation dtype (as
GPTQ/AWQ checkpoints keep them).  KV formats: fp16/bf16/fp32, fp8, int8 (+ an fp16 scale per
token and head) and int4 (+ fp16 scale and zero per token and head).

## Time

Each kernel takes rooflight.projection's time model on the GPU's datasheet roofs: a fixed part
(1.5 us per elementwise kernel, 2.6 us per GEMM/attention kernel, measured on an H100) plus
its roofline floor over a default efficiency (memory 0.85, compute 0.75).  Time to first token
(TTFT) is the prefill of the batch's prompts; time per output token (TPOT) one decode step at
the context; decode throughput = batch / TPOT tokens/s.  These are GPU times: the host is assumed
to keep up (CUDA graphs, or a host faster than the kernels).  Eager PyTorch dispatches ~2800 ops
per 7B decode step at several microseconds each, more than the GPU time at small batch.

## Memory

- weights: every parameter at its format's bytes (2n GB for n billion parameters in fp16/bf16);
- KV cache: 2 (K and V) x layers x KV heads x head dim x bytes per element, per token, times
  batch x context;
- activations (an estimate, inference): the transient tensors of one layer at a time (no
  autograd keeps anything), per token of the larger step: residual stream, normed input and
  attention output (3 x hidden in the activation dtype), gate, up and SiLU outputs alive at the
  gate mul (3 x intermediate), and the eager RMSNorm's two fp32 temporaries (2 x hidden x 4
  bytes); plus the last position's logits (vocab per sequence).  The larger step is the decode
  step of the batch (B tokens) or the prefill of ONE prompt: a server prefills a batch's prompts
  a sequence (or a chunk) at a time so that this peak does not grow with the batch, and the
  memory that grows with the batch is the KV cache.  (kernels/llama.py prefills the whole batch
  at once, which needs B times the prefill's share; TTFT is timed that way, the work is the same.)
- fits: weights + KV cache + activations within (1 - RESERVE_FRACTION) of the GPU's memory; the
  reserve (10%) holds the CUDA context, cuBLAS/cuDNN workspaces and allocator fragmentation (vLLM's
  default gpu_memory_utilization is 0.9 for the same reason);
- training with Adam in mixed precision: 16 bytes per parameter (fp16/bf16 weights 2 + gradients
  2 + fp32 master weights 4 + two fp32 Adam moments 4 + 4), the seed's 16n GB.  ZeRO over N GPUs
  (Rajbhandari et al., 2020) partitions the 12 bytes of optimizer states (stage 1), also the 2 of
  gradients (stage 2), also the 2 of weights (stage 3): 4 + 12/N, 2 + 14/N, 16/N bytes per
  parameter per GPU.  Activations kept for the backward (bf16, FlashAttention: no score matrix),
  per token per layer: the norm inputs and outputs (4 x hidden), q, k, v after RoPE, the attention
  output, gate, up, SiLU and product (4 x intermediate), in 2-byte elements; plus the logits in
  bf16 and fp32 for the loss.  They are per GPU (data parallel) and not partitioned by ZeRO.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Iterable, Mapping, Sequence

from .roofline import Ceilings, from_spec, intensity
from .costs.attention import attention_flops, causal_pairs
from .costs.model import OpCost, Settings
from .errors import UsageError
from .files import read_text
from .hardware import HardwareDB, HardwareSpec, load_database
from .math_class import MathClass
from .projection import DEFAULT_EFFICIENCY, KERNEL_FIXED_S, MATMUL_KERNEL_FIXED_S, predict_seconds

RESERVE_FRACTION = 0.10
MODES = ("eager", "fused")

# format -> (bytes per element, matrix class for GEMMs with these weights or None = activation's)
_ACT = {"fp16": (2, MathClass.FP16_TENSOR), "bf16": (2, MathClass.BF16_TENSOR), "fp32": (4, MathClass.FP32)}
WEIGHT_FORMATS = ("fp16", "bf16", "fp32", "fp8", "int8", "int4")
KV_FORMATS = ("fp16", "bf16", "fp32", "fp8", "int8", "int4")
_ALIASES = {"float16": "fp16", "half": "fp16", "bfloat16": "bf16", "float32": "fp32", "float": "fp32",
            "float8": "fp8", "e4m3": "fp8", "float8_e4m3fn": "fp8", "w8": "int8", "w4": "int4"}


def _fmt(value: str, allowed: Sequence[str], what: str) -> str:
    v = str(value).strip().lower()
    v = _ALIASES.get(v, v)
    if v not in allowed:
        raise UsageError(f"unknown {what} '{value}'; choose from {', '.join(allowed)}")
    return v


# ---------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class ModelConfig:
    """A Llama-architecture decoder's shape and number formats: the one config and preset table
    of rooflight (kernels/llama.py builds its model from it)."""

    n_layers: int
    dim: int
    n_heads: int
    n_kv_heads: int
    intermediate: int
    vocab: int
    max_seq: int = 4096
    rope_base: float = 10000.0
    norm_eps: float = 1e-5
    dtype: str = "bf16"  # activations and compute: fp16, bf16, fp32
    weights: str = ""  # weight format ("" = dtype): fp16, bf16, fp32, fp8, int8, int4
    kv: str = ""  # KV-cache format ("" = dtype): fp16, bf16, fp32, fp8, int8, int4
    group_size: int = 128  # int4 quantization group along the input dimension
    tied_embeddings: bool = False
    name: str = "custom"

    def __post_init__(self) -> None:
        for f in ("n_layers", "dim", "n_heads", "n_kv_heads", "intermediate", "vocab", "max_seq", "group_size"):
            v = getattr(self, f)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise UsageError(f"model config '{self.name}': {f} must be a positive integer (got {v!r})")
        if self.dim % self.n_heads:
            raise UsageError(f"model config '{self.name}': dim {self.dim} is not a multiple of n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise UsageError(f"model config '{self.name}': n_heads {self.n_heads} is not a multiple of "
                             f"n_kv_heads {self.n_kv_heads}")
        object.__setattr__(self, "dtype", _fmt(self.dtype, tuple(_ACT), "activation dtype"))
        object.__setattr__(self, "weights", _fmt(self.weights or self.dtype, WEIGHT_FORMATS, "weight format"))
        object.__setattr__(self, "kv", _fmt(self.kv or self.dtype, KV_FORMATS, "KV-cache format"))

    @classmethod
    def from_name(cls, name: str) -> "ModelConfig":
        """A preset by a forgiving name ('llama-2-7b', 'Llama_2_7B'); see `preset`."""
        return preset(name)

    # ------------------------------------------------------------ shapes

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def q_dim(self) -> int:
        return self.n_heads * self.head_dim

    @property
    def kv_dim(self) -> int:
        return self.n_kv_heads * self.head_dim

    @property
    def act_bytes(self) -> int:
        return _ACT[self.dtype][0]

    @property
    def params(self) -> int:
        """Parameters: per layer the four attention and three MLP matrices and two norms; the
        embedding, the final norm and the LM head (untied unless tied_embeddings)."""
        h = self.dim
        attn = h * self.q_dim + 2 * h * self.kv_dim + self.q_dim * h
        mlp = 3 * h * self.intermediate
        head = 0 if self.tied_embeddings else self.vocab * h
        return self.n_layers * (attn + mlp + 2 * h) + self.vocab * h + head + h

    def layer_matrices(self) -> list[tuple[str, int, int]]:
        """(name, in features K, out features N) of each matrix of one layer."""
        h, i = self.dim, self.intermediate
        return [("attention.wq", h, self.q_dim), ("attention.wk", h, self.kv_dim), ("attention.wv", h, self.kv_dim),
                ("attention.wo", self.q_dim, h), ("feed_forward.w1", h, i), ("feed_forward.w3", h, i),
                ("feed_forward.w2", i, h)]

    # ------------------------------------------------------------ conversions

    def with_(self, **changes: Any) -> "ModelConfig":
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def torch_dtype(self):
        import torch

        return {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}[self.dtype]


def _preset(name: str, n_layers: int, dim: int, n_heads: int, n_kv_heads: int, intermediate: int, vocab: int,
            **rest: Any) -> ModelConfig:
    return ModelConfig(n_layers, dim, n_heads, n_kv_heads, intermediate, vocab, name=name, **rest)


PRESETS: Mapping[str, ModelConfig] = MappingProxyType({c.name: c for c in (
    _preset("tiny", 2, 256, 8, 2, 688, 1024, max_seq=2048),
    _preset("small", 8, 1024, 16, 4, 2816, 32000),
    _preset("llama-2-7b", 32, 4096, 32, 32, 11008, 32000),
    _preset("llama-2-13b", 40, 5120, 40, 40, 13824, 32000),
    _preset("llama-2-70b", 80, 8192, 64, 8, 28672, 32000),
    _preset("llama-3-8b", 32, 4096, 32, 8, 14336, 128256, max_seq=8192, rope_base=500000.0),
    _preset("llama-3-70b", 80, 8192, 64, 8, 28672, 128256, max_seq=8192, rope_base=500000.0),
    _preset("mistral-7b", 32, 4096, 32, 8, 14336, 32000, max_seq=8192),
)})

# Hugging Face config.json names -> ours, so a model's config.json can be given as is
_HF_KEYS = {"num_hidden_layers": "n_layers", "hidden_size": "dim", "num_attention_heads": "n_heads",
            "num_key_value_heads": "n_kv_heads", "intermediate_size": "intermediate", "vocab_size": "vocab",
            "max_position_embeddings": "max_seq", "rope_theta": "rope_base", "rms_norm_eps": "norm_eps",
            "tie_word_embeddings": "tied_embeddings", "_name_or_path": "name"}
_HF_DTYPES = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32"}


def _preset_key(name: str) -> str:
    return name.strip().lower().replace("_", "-").replace(" ", "-")


def preset(name: str) -> ModelConfig:
    """A preset by a forgiving name: 'llama-2-7b', 'Llama_2_7B', 'mistral-7b'."""
    key = _preset_key(name)
    if key in PRESETS:
        return PRESETS[key]
    squashed = {k.replace("-", ""): k for k in PRESETS}
    if key.replace("-", "") in squashed:
        return PRESETS[squashed[key.replace("-", "")]]
    near = difflib.get_close_matches(key, list(PRESETS), n=3, cutoff=0.5)
    raise UsageError(f"unknown model '{name}'{' (did you mean ' + ', '.join(near) + '?)' if near else ''}; "
                     f"presets: {', '.join(PRESETS)}; or give a JSON/TOML config file")


def config_from_dict(d: Mapping[str, Any], *, name: str = "custom") -> ModelConfig:
    """A config from a dict: our field names, or a Hugging Face config.json's; `preset` starts
    from a preset and changes what the dict gives."""
    d = dict(d)
    is_hf = "hidden_size" in d or "architectures" in d or "model_type" in d
    out: dict[str, Any] = {}
    base: ModelConfig | None = None
    if "preset" in d:
        base = preset(str(d.pop("preset")))
    if is_hf and "torch_dtype" in d and "dtype" not in d:
        dt = _HF_DTYPES.get(str(d.get("torch_dtype")))
        if dt:
            out["dtype"] = dt
    known = {f.name for f in fields(ModelConfig)}
    for k, v in d.items():
        key = _HF_KEYS.get(k, k) if is_hf else k
        if key in known:
            out[key] = v
        elif not is_hf:
            hint = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.6)
            raise UsageError(f"model config: unknown field '{k}'{' (did you mean ' + hint[0] + '?)' if hint else ''}"
                             f"; fields: {', '.join(sorted(known))}")
    if is_hf and "n_kv_heads" not in out and "n_heads" in out:
        out["n_kv_heads"] = out["n_heads"]
    if base is not None:
        out.setdefault("name", base.name if not out else f"{base.name} (custom)")
        try:
            return replace(base, **out)
        except TypeError as err:
            raise UsageError(f"model config: {err}") from None
    out.setdefault("name", name)
    missing = [f for f in ("n_layers", "dim", "n_heads", "n_kv_heads", "intermediate", "vocab") if f not in out]
    if missing:
        raise UsageError(f"model config '{out['name']}' lacks {', '.join(missing)} (or give 'preset')")
    try:
        return ModelConfig(**out)
    except TypeError as err:
        raise UsageError(f"model config: {err}") from None


def load_config(path: str | Path) -> ModelConfig:
    """A config from a JSON or TOML file (our field names, or a Hugging Face config.json)."""
    p = Path(path)
    text = read_text(p, UsageError, "model config file")
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(text)
        else:
            data = json.loads(text)
    except Exception as err:  # json.JSONDecodeError, tomllib.TOMLDecodeError
        raise UsageError(f"{p}: not valid {'TOML' if p.suffix.lower() == '.toml' else 'JSON'} ({err})") from None
    if not isinstance(data, dict):
        raise UsageError(f"{p}: a model config must be a table/object of fields")
    return config_from_dict(data, name=p.stem)


def get_config(model: str | Path | Mapping[str, Any] | ModelConfig, **changes: Any) -> ModelConfig:
    """A ModelConfig from a preset name, a JSON/TOML path, a dict or a config; `changes` set
    fields (e.g. weights="int4", kv="fp8"); None values are ignored."""
    if isinstance(model, ModelConfig):
        cfg = model
    elif isinstance(model, Mapping):
        cfg = config_from_dict(model)
    else:
        text = str(model)
        p = Path(text)
        if p.suffix.lower() in (".json", ".toml") or p.is_file():
            cfg = load_config(p)
        else:
            cfg = preset(text)
    changes = {k: v for k, v in changes.items() if v is not None}
    if changes:
        try:
            cfg = replace(cfg, **changes)
        except TypeError as err:
            raise UsageError(f"model config: {err}") from None
    return cfg


# ---------------------------------------------------------------------------- bytes of things


def weight_matrix_bytes(cfg: ModelConfig, k: int, n: int) -> float:
    """Bytes of one [K, N] weight matrix in the config's weight format (scales included)."""
    fmt = cfg.weights
    if fmt in ("fp16", "bf16"):
        return 2.0 * k * n
    if fmt == "fp32":
        return 4.0 * k * n
    if fmt == "fp8":
        return 1.0 * k * n  # one per-tensor scale
    if fmt == "int8":
        return 1.0 * k * n + 2.0 * n  # + an fp16 scale per output channel
    # int4: two weights a byte, + fp16 scale and zero per group of group_size along K
    return 0.5 * k * n + 4.0 * n * math.ceil(k / cfg.group_size)


def kv_bytes_per_element(cfg: ModelConfig) -> float:
    """Bytes per cached K or V element (per-token-and-head scales spread over the head dim)."""
    fmt, d = cfg.kv, cfg.head_dim
    return {"fp16": 2.0, "bf16": 2.0, "fp32": 4.0, "fp8": 1.0, "int8": 1.0 + 2.0 / d, "int4": 0.5 + 4.0 / d}[fmt]


def kv_bytes_per_token(cfg: ModelConfig) -> float:
    """2 (K and V) x layers x KV heads x head dim x bytes per element."""
    return 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim * kv_bytes_per_element(cfg)


def kv_cache_bytes(cfg: ModelConfig, batch: int, context: int) -> float:
    return batch * context * kv_bytes_per_token(cfg)


def weight_bytes(cfg: ModelConfig) -> float:
    """Every parameter at its format: the layers' matrices in the weight format, the rest
    (embedding, LM head, norms) in the activation dtype."""
    a = cfg.act_bytes
    layer = sum(weight_matrix_bytes(cfg, k, n) for _, k, n in cfg.layer_matrices()) + 2 * cfg.dim * a
    head = 0 if cfg.tied_embeddings else cfg.vocab * cfg.dim * a
    return cfg.n_layers * layer + cfg.vocab * cfg.dim * a + head + cfg.dim * a


def activation_bytes(cfg: ModelConfig, tokens: int, batch: int) -> float:
    """Transient activations of an inference step over `tokens` tokens (module doc: an estimate)."""
    a = cfg.act_bytes
    per_token = 3 * cfg.dim * a + 3 * cfg.intermediate * a + 2 * cfg.dim * 4
    return tokens * per_token + batch * cfg.vocab * a


@dataclass(frozen=True)
class InferenceMemory:
    weights_bytes: float
    kv_cache_bytes: float
    activations_bytes: float

    @property
    def total_bytes(self) -> float:
        return self.weights_bytes + self.kv_cache_bytes + self.activations_bytes


def inference_memory(cfg: ModelConfig, batch: int, context: int, prompt: int | None = None,
                     tp: int = 1) -> InferenceMemory:
    """Weights, the KV cache of batch x context tokens, and the activations of the larger of the
    batch's decode step and one prompt's prefill (module doc).  tp > 1: on each of `tp` ranks:
    1/tp of the weights (the embedding and LM head vocabulary-parallel, the norms' few vectors
    counted split too), the KV heads it keeps, the activations unsplit (an upper bound)."""
    prompt = context if prompt is None else prompt
    act = max(activation_bytes(cfg, prompt, 1), activation_bytes(cfg, batch, batch))
    kv_share = _heads(cfg, tp)[1] / cfg.n_kv_heads
    return InferenceMemory(weight_bytes(cfg) / tp, kv_cache_bytes(cfg, batch, context) * kv_share, act)


def usable_bytes(spec: HardwareSpec, reserve: float = RESERVE_FRACTION) -> float:
    return spec.memory_bytes * (1.0 - reserve)


def max_batch(cfg: ModelConfig, spec: HardwareSpec, context: int, prompt: int | None = None, *,
              reserve: float = RESERVE_FRACTION, limit: int = 1 << 20, tp: int = 1) -> int:
    """The largest batch whose weights + KV cache + activations fit in the GPU's memory less the
    reserve (0 when not even the weights and one sequence fit); tp > 1: on each of `tp` GPUs."""
    room = usable_bytes(spec, reserve)

    def fits(b: int) -> bool:
        return inference_memory(cfg, b, context, prompt, tp).total_bytes <= room

    if not fits(1):
        return 0
    lo, hi = 1, 2
    while hi <= limit and fits(hi):
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:  # fits(lo), not fits(hi)
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid
    return lo


# ---------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainingMemory:
    """Per GPU, training with Adam in mixed precision (see the module doc)."""

    params: int
    zero: int  # ZeRO stage 0 (plain data parallel) .. 3
    gpus: int
    weights_bytes: float  # fp16/bf16 weights
    grads_bytes: float  # fp16/bf16 gradients
    optimizer_bytes: float  # fp32 master weights + two fp32 Adam moments
    activations_bytes: float
    micro_batch: int = 1
    seq: int = 0

    @property
    def states_bytes(self) -> float:
        return self.weights_bytes + self.grads_bytes + self.optimizer_bytes

    @property
    def total_bytes(self) -> float:
        return self.states_bytes + self.activations_bytes

    @property
    def bytes_per_param(self) -> float:
        return self.states_bytes / self.params


ADAM_MIXED_BYTES = {"weights": 2, "grads": 2, "optimizer": 12}  # 12 = fp32 master 4 + m 4 + v 4


def training_activation_bytes(cfg: ModelConfig, micro_batch: int, seq: int) -> float:
    """Activations kept for the backward (module doc: an estimate)."""
    h, i = cfg.dim, cfg.intermediate
    per_token_layer = 2 * (4 * h + cfg.q_dim + 2 * cfg.kv_dim + cfg.q_dim + 4 * i)
    tokens = micro_batch * seq
    logits = tokens * cfg.vocab * (2 + 4)
    return cfg.n_layers * tokens * per_token_layer + logits


def training_memory(model: str | Mapping[str, Any] | ModelConfig, *, zero: int = 0, gpus: int = 1,
                    micro_batch: int = 1, seq: int | None = None) -> TrainingMemory:
    """Per-GPU memory of Adam mixed-precision training, under ZeRO stage `zero` over `gpus` GPUs."""
    cfg = get_config(model)
    if zero not in (0, 1, 2, 3):
        raise UsageError(f"ZeRO stage must be 0, 1, 2 or 3 (got {zero})")
    if gpus < 1:
        raise UsageError(f"gpus must be at least 1 (got {gpus})")
    if micro_batch < 1:
        raise UsageError(f"micro batch must be at least 1 (got {micro_batch})")
    n = cfg.params
    w, g, o = (ADAM_MIXED_BYTES[k] * n for k in ("weights", "grads", "optimizer"))
    if zero >= 1:
        o /= gpus
    if zero >= 2:
        g /= gpus
    if zero >= 3:
        w /= gpus
    seq = cfg.max_seq if seq is None else seq
    return TrainingMemory(n, zero, gpus, w, g, o, training_activation_bytes(cfg, micro_batch, seq), micro_batch, seq)


# ---------------------------------------------------------------------------- work per step


@dataclass(frozen=True)
class Kernel:
    """One kernel of a step: its cost, and whether it runs once per layer."""

    name: str  # "attention.wq", "attention_norm.pow", "output"
    cost: OpCost
    per_layer: bool = True
    kind: str = "vector"  # "matmul", "attention" or "vector" (elementwise, reductions, copies)

    @property
    def flops(self) -> float:
        return self.cost.total_flops

    @property
    def bytes(self) -> float:
        return self.cost.bytes


@dataclass(frozen=True)
class StepCost:
    """The kernels of one prefill or decode step."""

    phase: str  # "prefill" or "decode"
    mode: str  # "eager" or "fused"
    batch: int
    new_tokens: int  # per sequence: the prompt (prefill) or 1 (decode)
    keys: int  # keys each new token attends: the prompt (prefill) or context + 1 (decode)
    n_layers: int
    kernels: tuple[Kernel, ...]

    def each(self) -> Iterable[tuple[Kernel, int]]:
        """(kernel, how many times it runs in the step)."""
        for k in self.kernels:
            yield k, (self.n_layers if k.per_layer else 1)

    @property
    def layer(self) -> tuple[Kernel, ...]:
        return tuple(k for k in self.kernels if k.per_layer)

    def flops_by_class(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for k, n in self.each():
            for c, v in k.cost.flops.items():
                out[str(c)] = out.get(str(c), 0.0) + n * v
        return out

    @property
    def flops(self) -> float:
        return sum(n * k.flops for k, n in self.each())

    @property
    def bytes(self) -> float:
        return sum(n * k.bytes for k, n in self.each())

    @property
    def intensity(self) -> float:
        return intensity(self.flops, self.bytes)

    @property
    def kernel_count(self) -> int:
        return sum(n for k, n in self.each())

    @property
    def layer_flops(self) -> float:
        return sum(k.flops for k in self.layer)

    @property
    def layer_bytes(self) -> float:
        return sum(k.bytes for k in self.layer)

    def layer_matmul_flops(self) -> dict[str, float]:
        """FLOPs of one layer's GEMMs, and the matrix-class FLOPs of its attention, by kernel name."""
        out = {}
        for k in self.layer:
            if k.kind == "matmul":
                out[k.name] = k.flops
            elif k.kind == "attention":
                out[k.name] = sum(v for c, v in k.cost.flops.items() if MathClass(c).is_tensor)
        return out


def _cost(flops: float = 0.0, cls: MathClass = MathClass.FP32, read: float = 0.0, written: float = 0.0,
          extra: Mapping[MathClass, float] | None = None) -> OpCost:
    f = {cls: flops} if flops else {}
    for c, v in (extra or {}).items():
        f[c] = f.get(c, 0.0) + v
    return OpCost(f, float(read), float(written))


def _matmul_class(cfg: ModelConfig) -> MathClass:
    if cfg.weights == "fp8":
        return MathClass.FP8_TENSOR
    return _ACT[cfg.dtype][1]


def _mm(cfg: ModelConfig, name: str, tokens: int, k: int, n: int, per_layer: bool = True,
        weight: float | None = None) -> Kernel:
    # x: [T, K] @ w: [K, N] -> [T, N]; 2 FLOPs per multiply-add
    a = cfg.act_bytes
    w = weight_matrix_bytes(cfg, k, n) if weight is None else weight
    cls = _matmul_class(cfg) if weight is None else _ACT[cfg.dtype][1]
    return Kernel(name, _cost(2.0 * tokens * k * n, cls, tokens * k * a + w, tokens * n * a), per_layer, "matmul")


def _rms_norm_eager(cfg: ModelConfig, prefix: str, t: int, per_layer: bool = True) -> list[Kernel]:
    # kernels/llama.py RMSNorm: xf = x.float(); xf * rsqrt(xf.pow(2).mean(-1) + eps) -> .to(dtype) * weight
    h, a = cfg.dim, cfg.act_bytes
    ks = []
    if a != 4:
        ks.append(Kernel(f"{prefix}.to_fp32", _cost(0, read=t * h * a, written=t * h * 4), per_layer))
    ks += [
        Kernel(f"{prefix}.pow", _cost(t * h, read=t * h * 4, written=t * h * 4), per_layer),
        Kernel(f"{prefix}.mean", _cost(t * h, read=t * h * 4, written=t * 4), per_layer),
        Kernel(f"{prefix}.add_eps", _cost(t, read=t * 4, written=t * 4), per_layer),
        Kernel(f"{prefix}.rsqrt", _cost(t, read=t * 4, written=t * 4), per_layer),
        Kernel(f"{prefix}.mul_rstd", _cost(t * h, read=t * h * 4 + t * 4, written=t * h * 4), per_layer),
    ]
    if a != 4:
        ks.append(Kernel(f"{prefix}.to_dtype", _cost(0, read=t * h * 4, written=t * h * a), per_layer))
    ks.append(Kernel(f"{prefix}.mul_weight", _cost(t * h, read=t * h * a + h * a, written=t * h * a), per_layer))
    return ks


def _rope_eager(cfg: ModelConfig, prefix: str, b: int, s: int, heads: int) -> list[Kernel]:
    # x: [B, S, H, D]; x1, x2 = halves; cat([x1*cos - x2*sin, x2*cos + x1*sin]); cos/sin: [1, S, 1, D/2]
    a, d = cfg.act_bytes, cfg.head_dim // 2
    n = b * s * heads * d  # elements of one half
    ks = []
    if a != 4:
        ks += [Kernel(f"{prefix}.cos_to_dtype", _cost(0, read=s * d * 4, written=s * d * a)),
               Kernel(f"{prefix}.sin_to_dtype", _cost(0, read=s * d * 4, written=s * d * a))]
    mul = _cost(n, read=n * a + s * d * a, written=n * a)
    both = _cost(n, read=2 * n * a, written=n * a)
    ks += [Kernel(f"{prefix}.mul1", mul), Kernel(f"{prefix}.mul2", mul), Kernel(f"{prefix}.sub", both),
           Kernel(f"{prefix}.mul3", mul), Kernel(f"{prefix}.mul4", mul), Kernel(f"{prefix}.add", both),
           Kernel(f"{prefix}.cat", _cost(0, read=2 * n * a, written=2 * n * a))]
    return ks


def _attention(cfg: ModelConfig, b: int, s: int, end: int, causal: bool, tp: int = 1) -> Kernel:
    # q: [B, Hq, S, D], k, v: [B, Hkv, end, D] -> o: [B, Hq, S, D]; fused: scores never reach memory
    a, d, kv = cfg.act_bytes, cfg.head_dim, kv_bytes_per_element(cfg)
    hq, hkv = _heads(cfg, tp)
    per_head = causal_pairs(s, end, "upper_left", Settings().attention_tile) if causal else s * end
    pairs = b * hq * per_head
    flops = attention_flops(pairs, d, d, _ACT[cfg.dtype][1])
    read = b * hq * s * d * a + 2 * b * hkv * end * d * kv
    return Kernel("attention.sdpa", OpCost(flops, read, b * hq * s * d * a), True, "attention")


def _heads(cfg: ModelConfig, tp: int) -> tuple[int, int]:
    """(query heads, KV heads) on one of `tp` tensor-parallel ranks: the query heads split evenly;
    the KV heads too, or, where there are fewer KV heads than ranks, each rank keeps the one its
    query heads read (a replicated KV head, as Megatron and vLLM do)."""
    if cfg.n_heads % tp:
        raise UsageError(f"{cfg.name}: {cfg.n_heads} heads do not split over {tp} tensor-parallel ranks")
    return cfg.n_heads // tp, max(cfg.n_kv_heads // tp, 1)


def _all_reduce(cfg: ModelConfig, name: str, t: int, tp: int) -> Kernel:
    """The all-reduce after a row-parallel projection: the [T, dim] partial sums, each rank's link
    carrying 2(tp-1)/tp of them (rooflight.costs.comm); read and written once in memory."""
    size = t * cfg.dim * cfg.act_bytes
    cost = OpCost({}, size, size, comm_bytes=2 * (tp - 1) / tp * size, link="peer", note=f"all-reduce over {tp} ranks")
    return Kernel(name, cost, True, "collective")


def step_cost(model: str | Mapping[str, Any] | ModelConfig, phase: str, batch: int, *, prompt: int | None = None,
              context: int | None = None, mode: str = "eager", tp: int = 1) -> StepCost:
    """The kernels of a prefill of `prompt` tokens per sequence, or of one decode step against a
    cache of `context` tokens per sequence (the new token attends context + 1 keys).  tp > 1: the
    kernels of one of `tp` tensor-parallel ranks (Megatron: q/k/v and w1/w3 split by columns, wo
    and w2 by rows, each of those followed by an all-reduce of the [tokens, dim] activations)."""
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise UsageError(f"tensor-parallel degree {tp!r}: give 1 or more ranks")
    cfg = get_config(model)
    if mode not in MODES:
        raise UsageError(f"unknown mode '{mode}'; choose from {', '.join(MODES)}")
    if batch < 1:
        raise UsageError(f"batch must be at least 1 (got {batch})")
    if phase == "prefill":
        s = prompt if prompt is not None else context
        if s is None or s < 1:
            raise UsageError("a prefill needs a prompt length of at least 1 token")
        start, end = 0, s
    elif phase == "decode":
        if context is None or context < 0:
            raise UsageError("a decode step needs a context of 0 or more cached tokens")
        s, start, end = 1, context, context + 1
    else:
        raise UsageError(f"unknown phase '{phase}'; choose prefill or decode")
    causal = s > 1 and start == 0
    if cfg.intermediate % tp:
        raise UsageError(f"{cfg.name}: the MLP's {cfg.intermediate} columns do not split over {tp} ranks")
    ks = (_eager if mode == "eager" else _fused)(cfg, batch, s, end, causal, tp)
    return StepCost(phase, mode, batch, s, end, cfg.n_layers, tuple(ks))


def _outside(cfg: ModelConfig, b: int, s: int, norm: list[Kernel]) -> list[Kernel]:
    a, h, t = cfg.act_bytes, cfg.dim, b * s
    # embedding: ids [B, S] int64; reads the rows it addresses (at most the whole table)
    emb = Kernel("tok_embeddings", _cost(0, read=min(t, cfg.vocab) * h * a + t * 8, written=t * h * a), False)
    head = _mm(cfg, "output", b, h, cfg.vocab, per_layer=False, weight=h * cfg.vocab * a)
    return [emb, *norm, head]


def _eager(cfg: ModelConfig, b: int, s: int, end: int, causal: bool, tp: int = 1) -> list[Kernel]:
    h, a, t, i = cfg.dim, cfg.act_bytes, b * s, cfg.intermediate // tp
    kv = kv_bytes_per_element(cfg)
    hq, hkv = _heads(cfg, tp)
    q_dim, kv_dim = hq * cfg.head_dim, hkv * cfg.head_dim
    ks = _rms_norm_eager(cfg, "attention_norm", t)
    ks += [_mm(cfg, "attention.wq", t, h, q_dim), _mm(cfg, "attention.wk", t, h, kv_dim),
           _mm(cfg, "attention.wv", t, h, kv_dim)]
    ks += _rope_eager(cfg, "attention.rope_q", b, s, hq)
    ks += _rope_eager(cfg, "attention.rope_k", b, s, hkv)
    # KV cache: positions = arange(start, end) (int64); k, v: [B, Hkv, S, D] index_copy_'d in place
    ks.append(Kernel("attention.positions", _cost(0, written=s * 8)))
    cache = _cost(0, read=b * kv_dim * s * kv + s * 8, written=b * kv_dim * s * kv)
    ks += [Kernel("attention.cache_k", cache), Kernel("attention.cache_v", cache)]
    ks.append(_attention(cfg, b, s, end, causal, tp))
    ks.append(_mm(cfg, "attention.wo", t, q_dim, h))
    if tp > 1:
        ks.append(_all_reduce(cfg, "attention.all_reduce", t, tp))
    ks.append(Kernel("residual_attention", _cost(t * h, read=2 * t * h * a, written=t * h * a)))
    ks += _rms_norm_eager(cfg, "ffn_norm", t)
    ks += [_mm(cfg, "feed_forward.w1", t, h, i),
           Kernel("feed_forward.silu", _cost(4 * t * i, read=t * i * a, written=t * i * a)),
           _mm(cfg, "feed_forward.w3", t, h, i),
           Kernel("feed_forward.mul", _cost(t * i, read=2 * t * i * a, written=t * i * a)),
           _mm(cfg, "feed_forward.w2", t, i, h)]
    if tp > 1:
        ks.append(_all_reduce(cfg, "feed_forward.all_reduce", t, tp))
    ks.append(Kernel("residual_ffn", _cost(t * h, read=2 * t * h * a, written=t * h * a)))
    # the final norm and the LM head see the last position of each sequence only
    final = [replace(k, per_layer=False, name="norm." + k.name.split(".", 1)[1])
             for k in _rms_norm_eager(cfg, "norm", b)]
    return ks + _outside(cfg, b, s, final)


def _fused(cfg: ModelConfig, b: int, s: int, end: int, causal: bool, tp: int = 1) -> list[Kernel]:
    h, a, t, i = cfg.dim, cfg.act_bytes, b * s, cfg.intermediate // tp
    kv = kv_bytes_per_element(cfg)
    # add + RMSNorm: read the residual and the branch's output, write the new residual and the normed input
    add_norm = _cost(5 * t * h, read=2 * t * h * a + h * a, written=2 * t * h * a)
    hd = cfg.head_dim
    hq, hkv = _heads(cfg, tp)
    q_dim, kv_dim = hq * hd, hkv * hd
    qk = t * (hq + hkv) * hd
    reduce_attn = [_all_reduce(cfg, "attention.all_reduce", t, tp)] if tp > 1 else []
    reduce_ffn = [_all_reduce(cfg, "feed_forward.all_reduce", t, tp)] if tp > 1 else []
    ks = [Kernel("attention_norm", add_norm),
          _mm(cfg, "attention.wqkv", t, h, q_dim + 2 * kv_dim),
          # RoPE on q and k (3 FLOPs per element: 2 mul + 1 add), k and v written to the cache
          Kernel("attention.rope_cache", _cost(3 * qk, read=t * (q_dim + 2 * kv_dim) * a + s * hd * 4,
                                               written=t * q_dim * a + 2 * t * kv_dim * kv)),
          _attention(cfg, b, s, end, causal, tp),
          _mm(cfg, "attention.wo", t, q_dim, h), *reduce_attn,
          Kernel("ffn_norm", add_norm),
          _mm(cfg, "feed_forward.w13", t, h, 2 * i),
          Kernel("feed_forward.silu_mul", _cost(5 * t * i, read=2 * t * i * a, written=t * i * a)),
          _mm(cfg, "feed_forward.w2", t, i, h), *reduce_ffn]
    final = [Kernel("norm", _cost(5 * b * h, read=2 * b * h * a + h * a, written=b * h * a), False)]
    return ks + _outside(cfg, b, s, final)


# ---------------------------------------------------------------------------- time


@dataclass(frozen=True)
class StepTime:
    seconds: float
    floor_s: float  # sum of the kernels' roofline floors (no efficiency, no fixed part)
    fixed_s: float  # sum of the fixed per-kernel parts
    seconds_by_label: Mapping[str, float]

    def __post_init__(self) -> None:
        object.__setattr__(self, "seconds_by_label", MappingProxyType(dict(self.seconds_by_label)))

    @property
    def label(self) -> str:
        return max(self.seconds_by_label, key=self.seconds_by_label.get) if self.seconds_by_label else ""

    @property
    def label_share(self) -> float:
        return self.seconds_by_label.get(self.label, 0.0) / self.seconds if self.seconds > 0 else math.nan


def step_time(step: StepCost, ceilings: Ceilings, *, kernel_fixed_s: float | None = None,
              efficiency: Mapping[str, float] = DEFAULT_EFFICIENCY) -> StepTime:
    """Predicted GPU time of a step: every kernel by rooflight.projection.predict_seconds."""
    total = floor = fixed = 0.0
    by_label: dict[str, float] = {}
    for k, n in step.each():
        p = predict_seconds(k.cost, ceilings, kernels=1, kernel_fixed_s=kernel_fixed_s, default_efficiency=efficiency)
        total += n * p.seconds
        floor += n * p.floor_s
        fixed += n * p.fixed_s
        by_label[p.label] = by_label.get(p.label, 0.0) + n * p.seconds
    return StepTime(total, floor, fixed, by_label)


# ---------------------------------------------------------------------------- the estimate


@dataclass(frozen=True)
class BatchEstimate:
    batch: int
    ttft_s: float  # prefill of the batch's prompts
    tpot_s: float  # one decode step at the context
    tokens_per_s: float  # decode throughput: batch / TPOT
    memory: InferenceMemory
    fits: bool
    decode_flops: float
    decode_bytes: float
    decode_label: str
    decode_label_share: float
    prefill_label: str
    prefill_label_share: float
    prefill_flops: float = math.nan
    prefill_bytes: float = math.nan

    @property
    def decode_intensity(self) -> float:
        return intensity(self.decode_flops, self.decode_bytes)


@dataclass(frozen=True)
class Estimate:
    config: ModelConfig
    gpu: str  # spec name
    gpu_key: str
    memory_bytes: float  # the GPU's capacity
    usable_bytes: float  # less the reserve
    context: int
    prompt: int
    mode: str
    rows: tuple[BatchEstimate, ...]
    max_batch: int  # at this context (0: does not fit)
    best_decode_intensity: float  # decode FLOP/B at max_batch (NaN when nothing fits)
    best_tokens_per_s: float
    best_decode_flops_per_s: float  # decode FLOPs / TPOT at max_batch
    ridge: float  # the GPU's ridge point for the GEMMs' math class (FLOP/B)
    ridge_class: str
    model: str  # the time model in words
    notes: tuple[str, ...] = ()
    ceilings: Ceilings | None = field(default=None, compare=False, repr=False)  # the GPU's datasheet roofs

    def row(self, batch: int) -> BatchEstimate:
        for r in self.rows:
            if r.batch == batch:
                return r
        raise UsageError(f"batch {batch} was not estimated (batches: {', '.join(str(r.batch) for r in self.rows)})")

    @property
    def df(self):
        import pandas as pd

        return pd.DataFrame([{
            "batch": r.batch, "ttft_s": r.ttft_s, "tpot_s": r.tpot_s, "tokens_per_s": r.tokens_per_s,
            "weights_bytes": r.memory.weights_bytes, "kv_cache_bytes": r.memory.kv_cache_bytes,
            "activations_bytes": r.memory.activations_bytes, "memory_bytes": r.memory.total_bytes, "fits": r.fits,
            "decode_intensity": r.decode_intensity, "decode_label": r.decode_label,
        } for r in self.rows]).set_index("batch")


def time_model_text(mode: str, kernel_fixed_s: float | None = None) -> str:
    fixed = ("no fixed per-kernel cost" if kernel_fixed_s == 0 else
             f"{kernel_fixed_s * 1e6:g} us per kernel" if kernel_fixed_s is not None else
             f"{KERNEL_FIXED_S * 1e6:g} us per kernel, {MATMUL_KERNEL_FIXED_S * 1e6:g} us per GEMM/attention")
    eff = ", ".join(f"{k} {v:g}" for k, v in DEFAULT_EFFICIENCY.items() if k != "communication")
    return (f"{mode} kernels; datasheet roofs at default efficiencies ({eff}) + {fixed}; GPU time, host assumed "
            "to keep up")


def _spec(hw: str | HardwareSpec, db: HardwareDB | None) -> HardwareSpec:
    if isinstance(hw, HardwareSpec):
        return hw
    return (db or load_database()).get(hw)


def estimate(model: str | Path | Mapping[str, Any] | ModelConfig, hw: str | HardwareSpec = "h100", *,
             batch: int | Sequence[int] = (1, 16, 64), context: int = 4096, prompt: int | None = None,
             mode: str = "eager", weights: str | None = None, kv: str | None = None,
             reserve: float = RESERVE_FRACTION, kernel_fixed_s: float | None = None,
             db: HardwareDB | None = None, tp: int = 1) -> Estimate:
    """TTFT, TPOT, tokens/s, memory and whether it fits, per batch, on one GPU; the largest batch
    that fits at this context and the decode intensity it reaches (see the module doc).  tp > 1:
    on each of `tp` GPUs in tensor parallelism, the all-reduces on the GPU link (not overlapped:
    eager tensor parallelism waits for each one), memory per GPU."""
    cfg = get_config(model, weights=weights, kv=kv)
    step_cost(cfg, "decode", 1, context=1, tp=tp)  # a degree that does not split the model: the error now
    spec = _spec(hw, db)
    batches = [batch] if isinstance(batch, int) else list(batch)
    if not batches or any((not isinstance(b, int)) or b < 1 for b in batches):
        raise UsageError(f"batch sizes must be positive integers (got {batches})")
    if context < 1:
        raise UsageError(f"context must be at least 1 token (got {context})")
    prompt = context if prompt is None else prompt
    if prompt < 1 or prompt > context:
        raise UsageError(f"prompt must be between 1 and the context ({context}) tokens (got {prompt})")
    if not 0 <= reserve < 1:
        raise UsageError(f"reserve must be a fraction in [0, 1) (got {reserve})")
    ceil = from_spec(spec)
    notes = []
    if context + 1 > cfg.max_seq:
        notes.append(f"context {context} + the new token is beyond {cfg.name}'s trained length {cfg.max_seq}")
    cls = _matmul_class(cfg)
    resolved = ceil.resolve(cls)
    if resolved is not cls:
        notes.append(f"{cls.value.replace('_', ' ')} GEMMs run as {resolved.value.replace('_', ' ')} math on the "
                     f"{spec.name}: no {cls.value.replace('_', ' ')}")
    room = usable_bytes(spec, reserve)

    def one(b: int) -> BatchEstimate:
        pre = step_cost(cfg, "prefill", b, prompt=prompt, mode=mode, tp=tp)
        dec = step_cost(cfg, "decode", b, context=context, mode=mode, tp=tp)
        t_pre = step_time(pre, ceil, kernel_fixed_s=kernel_fixed_s)
        td = step_time(dec, ceil, kernel_fixed_s=kernel_fixed_s)
        mem = inference_memory(cfg, b, context, prompt, tp)
        return BatchEstimate(b, t_pre.seconds, td.seconds, b / td.seconds, mem, mem.total_bytes <= room,
                             dec.flops, dec.bytes, td.label, td.label_share, t_pre.label, t_pre.label_share,
                             pre.flops, pre.bytes)

    rows = tuple(one(b) for b in batches)
    mb = max_batch(cfg, spec, context, prompt, reserve=reserve, tp=tp)
    if tp > 1:
        notes.append(f"tensor parallel over {tp} GPUs: memory is per GPU; times and tokens/s are the group's (every "
                     "GPU runs its shard of each step); each layer adds two all-reduces of the activations on the "
                     "GPU link, not overlapped")
    if mb:
        dec = step_cost(cfg, "decode", mb, context=context, mode=mode, tp=tp)
        best_i = dec.intensity
        t_best = step_time(dec, ceil, kernel_fixed_s=kernel_fixed_s).seconds
        best_tps, best_rate = mb / t_best, dec.flops / t_best
    else:
        best_i = best_tps = best_rate = math.nan
        notes.append(f"{cfg.name} ({_gb(weight_bytes(cfg))} of {cfg.weights} weights) with one sequence of "
                     f"{context} tokens does not fit in {_gb(room)} of the {spec.name} ({1 - reserve:.0%} of "
                     f"{_gb(spec.memory_bytes)})")
    return Estimate(cfg, spec.name, spec.key, spec.memory_bytes, room, context, prompt, mode, rows, mb, best_i,
                    best_tps, best_rate, ceil.peak(cls) / ceil.memory_bytes_per_s, resolved.value,
                    time_model_text(mode, kernel_fixed_s), tuple(notes), ceil)


def _gb(n: float) -> str:
    return f"{n / 1e9:.3g} GB"


@dataclass(frozen=True)
class GpuFit:
    """How far one GPU can push a model's decode at a context: the largest batch that fits."""

    gpu: str
    gpu_key: str
    memory_bytes: float
    max_batch: int
    decode_intensity: float  # at max_batch
    tpot_s: float  # at max_batch
    tokens_per_s: float  # at max_batch
    ridge: float  # FLOP/B where the GEMMs' roof meets the memory roof


def across_gpus(model: str | Path | Mapping[str, Any] | ModelConfig, *, context: int = 4096,
                prompt: int | None = None, mode: str = "eager", weights: str | None = None, kv: str | None = None,
                reserve: float = RESERVE_FRACTION, db: HardwareDB | None = None,
                gpus: Iterable[str | HardwareSpec] | None = None) -> tuple[GpuFit, ...]:
    """For every GPU in the database (or `gpus`): the largest batch at this context, the decode
    intensity it reaches beside the GPU's ridge point, and its decode speed there."""
    db = db or load_database()
    cfg = get_config(model, weights=weights, kv=kv)
    specs = [_spec(g, db) for g in gpus] if gpus is not None else list(db)
    out = []
    for spec in specs:
        ceil = from_spec(spec)
        mb = max_batch(cfg, spec, context, prompt, reserve=reserve)
        ridge = ceil.peak(_matmul_class(cfg)) / ceil.memory_bytes_per_s
        if mb:
            dec = step_cost(cfg, "decode", mb, context=context, mode=mode)
            t = step_time(dec, ceil).seconds
            out.append(GpuFit(spec.name, spec.key, spec.memory_bytes, mb, dec.intensity, t, mb / t, ridge))
        else:
            out.append(GpuFit(spec.name, spec.key, spec.memory_bytes, 0, math.nan, math.nan, math.nan, ridge))
    return tuple(out)


__all__ = ["ADAM_MIXED_BYTES", "BatchEstimate", "Estimate", "GpuFit", "InferenceMemory", "Kernel", "KV_FORMATS",
           "MODES", "ModelConfig", "PRESETS", "RESERVE_FRACTION", "StepCost", "StepTime", "TrainingMemory",
           "WEIGHT_FORMATS", "across_gpus", "activation_bytes", "config_from_dict", "estimate", "get_config",
           "inference_memory", "kv_bytes_per_element", "kv_bytes_per_token", "kv_cache_bytes", "load_config",
           "max_batch", "preset", "step_cost", "step_time", "training_activation_bytes", "training_memory",
           "usable_bytes", "weight_bytes", "weight_matrix_bytes"]
