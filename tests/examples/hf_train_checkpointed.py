"""A user's training script with the memory savers on: a small GQA Llama from a config, activation
checkpointing (Hugging Face's switch), bf16 autocast and a GradScaler, three AdamW iterations."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512, max_position_embeddings=256, use_cache=False)
model = LlamaForCausalLM(config).to(device).train()
model.gradient_checkpointing_enable()
opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
scaler = torch.amp.GradScaler(device, enabled=device == "cuda")
batch = torch.randint(0, config.vocab_size, (2, 32), device=device)
for it in range(3):
    opt.zero_grad(set_to_none=True)
    with torch.autocast(device_type=device, dtype=torch.bfloat16):
        loss = model(input_ids=batch, labels=batch).loss
    scaler.scale(loss).backward()
    scaler.step(opt)
    scaler.update()
print("loss", loss.item())
