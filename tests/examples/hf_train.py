"""A user's training script: a small Llama from a config, three iterations of forward, loss,
backward and AdamW."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=256)
model = LlamaForCausalLM(config).to(device).train()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
batch = torch.randint(0, config.vocab_size, (2, 32), device=device)
for it in range(3):
    opt.zero_grad()
    loss = model(input_ids=batch, labels=batch).loss
    loss.backward()
    opt.step()
print("loss", float(loss))
