"""Tensor arithmetic with no nn.Module and no marks: no steps to find."""

import torch

x = torch.randn(128, 128)
for _ in range(3):
    x = torch.tanh(x @ x.T / 128)
print(float(x.sum()))
