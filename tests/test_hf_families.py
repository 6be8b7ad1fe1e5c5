"""Code no one here wrote, family by family: Hugging Face models built from tiny configs (2 layers,
64 wide, random weights, no downloads), each trained one step and run for inference under the
capture, with no op left without a cost formula: on the CPU, and on a GPU in bf16 (there the capture
sees the CUDA kernels' own ops).  A family this transformers lacks is skipped."""

from __future__ import annotations

import importlib.util
import warnings

import pytest
import torch

from rooflight.capture import count

pytestmark = pytest.mark.skipif(importlib.util.find_spec("transformers") is None,
                                reason="transformers is not installed (test extra)")

CAUSAL = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text", "phi", "phi3", "gpt2", "gpt_neox",
          "gptj", "codegen", "opt", "bloom", "falcon", "mpt", "stablelm", "starcoder2", "olmo", "olmo2", "cohere",
          "granite", "persimmon", "gpt_bigcode", "biogpt", "xglm", "exaone4", "glm", "helium", "smollm3", "ernie4_5",
          "arcee", "hunyuan_v1_dense", "seed_oss", "apertus", "lfm2", "bitnet", "falcon_h1", "mixtral", "qwen2_moe",
          "qwen3_moe", "olmoe", "granitemoe", "minimax", "llama4_text", "gpt_oss")
ENCODERS = ("bert", "roberta", "deberta", "deberta-v2", "electra", "distilbert", "albert", "xlm-roberta", "mpnet",
            "longformer", "big_bird", "squeezebert", "convbert", "modernbert", "ernie", "megatron-bert", "rembert",
            "canine")
SEQ2SEQ = ("bart", "mbart", "pegasus", "marian", "blenderbot", "led", "m2m_100", "plbart", "fsmt")
SMALL = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128)
VISION = {"vit": SMALL, "deit": SMALL, "beit": SMALL, "dinov2": SMALL, "siglip_vision_model": SMALL,
          "clip_vision_model": SMALL, "swin": dict(embed_dim=32, depths=[1, 1], num_heads=[2, 2], window_size=2),
          "convnext": dict(hidden_sizes=[16, 32], depths=[1, 1], num_stages=2), "mobilevit": {}, "pvt": {},
          "segformer": {}}
AUDIO = ("wav2vec2", "hubert", "wavlm")
# one KV head, 32-wide heads, a pad id inside the vocabulary, 2 of the experts, a 16-wide rotary,
# 2-layer encoder-decoders
OVERRIDES = dict(pad_token_id=0, head_dim=32, num_key_value_heads=1, rotary_dim=16, num_experts_per_tok=2,
                 decoder_start_token_id=0, d_model=64, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
                 decoder_attention_heads=2, encoder_ffn_dim=128, decoder_ffn_dim=128, embedding_size=64,
                 max_position_embeddings=128, image_size=64, patch_size=16)


def _config(family: str, **kw):
    from transformers import AutoConfig

    try:
        cfg = AutoConfig.for_model(family, **kw)
    except (ValueError, KeyError):
        pytest.skip(f"this transformers has no {family}")
    for k, v in OVERRIDES.items():
        if hasattr(cfg, k) and not isinstance(getattr(type(cfg), k, None), property):  # (Falcon's head_dim is derived)
            setattr(cfg, k, v)
    torch.manual_seed(0)
    return cfg


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def _placed(model, device: str):
    """The model on `device`: bf16 on a GPU (as users run it there), fp32 on the CPU."""
    return model.to(device, torch.bfloat16) if device == "cuda" else model


def _through(train, infer) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = count(train)
        with torch.no_grad():
            inferred = count(infer)
    assert not trained.uncounted() and not inferred.uncounted(), (trained.uncounted(), inferred.uncounted())
    assert any(o.phase == "backward" and o.total_flops for o in trained.ops)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", CAUSAL)
def test_a_causal_lms_training_step_and_generate_are_counted_through(family, device):
    from transformers import AutoModelForCausalLM

    # CodeGen splits its heads over 4 "model-parallel" groups in some transformers versions (5.17): 4 heads
    heads = dict(num_attention_heads=4) if family == "codegen" else {}
    cfg = _config(family, **{**SMALL, **heads}, vocab_size=500)
    model = _placed(AutoModelForCausalLM.from_config(cfg), device)
    ids = torch.randint(1, 400, (1, 12), device=device)
    _through(lambda: model(input_ids=ids, labels=ids).loss.backward(),
             lambda: model.eval().generate(input_ids=ids, max_new_tokens=2, do_sample=False, pad_token_id=0))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ENCODERS + SEQ2SEQ)
def test_a_text_encoders_or_encoder_decoders_training_step_and_inference_are_counted_through(family, device):
    from transformers import AutoModel, AutoModelForSeq2SeqLM

    cfg = _config(family, **SMALL, vocab_size=500)
    ids = torch.randint(3, 400, (2, 16), device=device)
    if family in SEQ2SEQ:
        model = _placed(AutoModelForSeq2SeqLM.from_config(cfg), device)
        _through(lambda: model(input_ids=ids, labels=ids).loss.backward(),
                 lambda: model.eval().generate(input_ids=ids, max_new_tokens=2, do_sample=False))
    else:
        model = _placed(AutoModel.from_config(cfg), device)
        mask = torch.ones_like(ids)
        _through(lambda: model(input_ids=ids, attention_mask=mask).last_hidden_state.sum().backward(),
                 lambda: model.eval()(input_ids=ids))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", list(VISION) + list(AUDIO))
def test_a_vision_or_audio_encoders_training_step_and_inference_are_counted_through(family, device):
    from transformers import AutoModel

    cfg = _config(family, **VISION.get(family, SMALL))
    model = _placed(AutoModel.from_config(cfg), device)
    audio = family in AUDIO
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    # 1 s of 16 kHz audio; a 64 x 64 image
    x = torch.randn((1, 16000) if audio else (1, 3, 64, 64), device=device, dtype=dtype)
    key = "input_values" if audio else "pixel_values"

    def out():
        o = model(**{key: x})
        return o.last_hidden_state if getattr(o, "last_hidden_state", None) is not None else o[0]

    def infer():
        model.eval()
        return out()

    _through(lambda: out().float().sum().backward(), infer)
