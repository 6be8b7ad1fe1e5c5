"""The capture range nsys and ncu users put in scripts: only what runs between
torch.cuda.profiler.start() and stop() is the workload."""

import torch
import torch.cuda.profiler as profiler

torch.manual_seed(0)
a = torch.randn(256, 256)
b = torch.randn(256, 256)
warm = a @ b  # before the range: setup
profiler.start()
for _ in range(2):
    c = torch.nn.functional.relu(a @ b)
profiler.stop()
print(float(c.sum()))  # after the range: teardown
