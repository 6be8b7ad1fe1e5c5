"""A plain script (no workloads) used by the CLI tests: it reads its own arguments, marks a
region with rooflight and another with NVTX, and can be told to fail or to exit."""

import argparse
import sys

import torch

import rooflight

parser = argparse.ArgumentParser()
parser.add_argument("--size", type=int, default=64)
parser.add_argument("--fail", action="store_true")
parser.add_argument("--exit", type=int, default=None)
args = parser.parse_args()

x = torch.randn(args.size, args.size)
with rooflight.region("matmul"):
    y = x @ x
torch.cuda.nvtx.range_push("activation")
y = torch.relu(y)
torch.cuda.nvtx.range_pop()


def broken():
    raise ValueError("the user's own bug")


if args.fail:
    broken()
if args.exit is not None:
    sys.exit(args.exit)
