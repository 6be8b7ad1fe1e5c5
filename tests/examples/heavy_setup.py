"""A plain nn.Module script with heavy setup: a wide MLP built and initialised on the CPU, then
three forward passes.  The setup is most of the run; the steps are the work."""

import torch

torch.manual_seed(0)
device = "cuda" if torch.cuda.is_available() else "cpu"
model = torch.nn.Sequential(torch.nn.Linear(1024, 4096), torch.nn.GELU(), torch.nn.Linear(4096, 1024))
for p in model.parameters():  # a deliberate, slow initialisation
    torch.nn.init.trunc_normal_(p, std=0.02)
model = model.to(device)
x = torch.randn(64, 1024, device=device)
with torch.no_grad():
    for _ in range(3):
        y = model(x)
print(float(y.sum()))
