"""A user's fine-tuning script on Hugging Face's Trainer: a small Llama from a config, a dataset of
random token ids, two micro-batches of 2 x 32 tokens per optimizer step (gradient accumulation),
three steps; Trainer's defaults otherwise (fused AdamW with weight-decay groups, gradient
clipping at 1.0, a linear schedule, loss logging)."""

import torch
from transformers import LlamaConfig, LlamaForCausalLM, Trainer, TrainingArguments


class RandomTokens(torch.utils.data.Dataset):
    def __init__(self, n: int, seq: int, vocab: int):
        self.ids = torch.randint(0, vocab, (n, seq), generator=torch.Generator().manual_seed(0))

    def __len__(self):
        return len(self.ids)

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "labels": self.ids[i]}


torch.manual_seed(0)
config = LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=512)
model = LlamaForCausalLM(config)
args = TrainingArguments(output_dir="trainer-out", per_device_train_batch_size=2, gradient_accumulation_steps=2,
                         max_steps=3, logging_steps=1, report_to=[], save_strategy="no", disable_tqdm=True,
                         use_cpu=not torch.cuda.is_available(), dataloader_num_workers=0)
Trainer(model=model, args=args, train_dataset=RandomTokens(32, 32, config.vocab_size)).train()
