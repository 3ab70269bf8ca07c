"""Test-wide settings."""

import os

import torch

# The suite's models are tiny: one thread is as fast as two for them, and on a busy 2-core
# machine torch's spinning OpenMP threads can make a step 50x slower. Subprocesses (the DDP
# tests) inherit the environment variable.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)
