"""One rank of tests/test_fit.py's two-process check: half the data's moments, summed over ranks with gloo.

Run as ``python fit_worker.py DATA OUT`` with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT set (as torchrun would).
"""

import sys

import torch
import torch.distributed as dist
from safetensors.torch import save_file

from lens_hub.training.fit import Moments

dist.init_process_group("gloo")
rank, world = dist.get_rank(), dist.get_world_size()
data = torch.load(sys.argv[1], weights_only=True)
xs, y = data["xs"], data["y"]
moments = Moments(xs.shape[0], xs.shape[2], torch.device("cpu"))
mine = torch.arange(y.shape[0])[rank::world]  # every other token, as the trainer shares sequences
for start in range(0, len(mine), 50):
    rows = mine[start : start + 50]
    moments.update([x[rows] for x in xs], y[rows])
moments.all_reduce()
names = ("count", "sum_x", "sum_t", "sum_xx", "sum_xt")
save_file({name: getattr(moments, name).contiguous() for name in names}, sys.argv[2])
dist.destroy_process_group()
