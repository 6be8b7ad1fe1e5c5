"""A user's script, as written: a 1B-shape Llama (Llama-3.2-1B's config, random weights) built on
the CPU, moved to the GPU in bf16, then `generate()` 32 tokens from a 128-token prompt.
`rooflight profile benchmarks/scripts/hf_generate_1b.py` (add `-- --small` on a CPU)."""

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--new-tokens", type=int, default=32)
ap.add_argument("--prompt", type=int, default=128)
ap.add_argument("--small", action="store_true")
args = ap.parse_args()
device = "cuda" if torch.cuda.is_available() else "cpu"
dtype = torch.bfloat16 if device == "cuda" else torch.float32
if args.small:
    config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, vocab_size=512)
else:
    config = LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                         num_key_value_heads=8, vocab_size=128256, max_position_embeddings=131072,
                         rope_theta=500000.0, tie_word_embeddings=True)
torch.manual_seed(0)
model = LlamaForCausalLM(config).to(device, dtype).eval()
prompt = torch.randint(0, config.vocab_size, (1, args.prompt), device=device)
with torch.no_grad():
    out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
print("generated", out.shape[1] - prompt.shape[1], "tokens")
