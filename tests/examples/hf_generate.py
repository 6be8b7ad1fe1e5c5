"""A user's script, as written: build a small Llama from a config (random weights, no download),
then generate.  `rooflight profile tests/examples/hf_generate.py -- --new-tokens 8`"""

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--new-tokens", type=int, default=8)
ap.add_argument("--prompt", type=int, default=16)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = ap.parse_args()

torch.manual_seed(0)
config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
model = LlamaForCausalLM(config).to(args.device).eval()
prompt = torch.randint(0, config.vocab_size, (1, args.prompt), device=args.device)
with torch.no_grad():
    out = model.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False)
print("generated", out.shape[1] - prompt.shape[1], "tokens")
