"""A user's training script with gradient accumulation: a small Llama from a config, three
optimizer steps of four micro-batches each (forward, scaled loss, backward), then AdamW; an
evaluation forward after each optimizer step.  `--accum N` sets the micro-batches."""

import argparse

import torch
from transformers import LlamaConfig, LlamaForCausalLM

ap = argparse.ArgumentParser()
ap.add_argument("--accum", type=int, default=4)
ap.add_argument("--iters", type=int, default=3)
ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
args = ap.parse_args()

torch.manual_seed(0)
device = args.device
config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
model = LlamaForCausalLM(config).to(device)
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
held_out = torch.randint(0, config.vocab_size, (4, 32), device=device)
for it in range(args.iters):
    model.train()
    for micro in range(args.accum):
        batch = torch.randint(0, config.vocab_size, (2, 32), device=device)
        loss = model(input_ids=batch, labels=batch).loss / args.accum
        loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    model.eval()
    with torch.no_grad():
        val = model(input_ids=held_out, labels=held_out).loss
    print(f"iter {it}: train loss {loss.item() * args.accum:.3f}, held-out loss {val.item():.3f}")
