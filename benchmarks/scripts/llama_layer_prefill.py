"""A user's script, as written: a Llama-3-8B-shaped decoder layer (Hugging Face, random weights,
built on the CPU and moved to the GPU), a 1024-token prefill three times.
`rooflight profile benchmarks/scripts/llama_layer_prefill.py` (add `-- --small` on a CPU)."""

import argparse

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

ap = argparse.ArgumentParser()
ap.add_argument("--tokens", type=int, default=1024)
ap.add_argument("--small", action="store_true", help="a 256-wide layer, for a CPU")
args = ap.parse_args()
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32

if args.small:
    config = LlamaConfig(hidden_size=256, intermediate_size=688, num_attention_heads=8, num_key_value_heads=2)
else:  # Llama-3-8B's layer: 4096 wide, 32 heads, 8 KV heads, MLP 14336
    config = LlamaConfig(hidden_size=4096, intermediate_size=14336, num_attention_heads=32, num_key_value_heads=8,
                         rope_theta=500000.0, max_position_embeddings=8192)
config._attn_implementation = "sdpa"


class Layer(torch.nn.Module):
    def __init__(self, config):
        super().__init__()
        self.rotary = LlamaRotaryEmbedding(config)
        self.layer = LlamaDecoderLayer(config, layer_idx=0)

    def forward(self, x):
        positions = torch.arange(x.shape[1], device=x.device)[None]
        out = self.layer(x, position_ids=positions, position_embeddings=self.rotary(x, positions))
        return out[0] if isinstance(out, tuple) else out


torch.manual_seed(0)
model = Layer(config)  # weights initialised on the CPU, then copied over
model = model.to(device, dtype).eval()
x = torch.randn(1, args.tokens, config.hidden_size, device=device, dtype=dtype)
with torch.no_grad():
    for _ in range(3):
        y = model(x)
print("out", tuple(y.shape), float(y.float().abs().mean()))
