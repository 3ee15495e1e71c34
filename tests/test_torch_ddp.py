"""Two CPU processes (gloo) with a DDP-wrapped attached model: the atoms stay in sync, and the result
equals one process training on the whole batch (gradients are averaged over equal shards)."""

from __future__ import annotations

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel as DDP

from moram_ref.config import MoRAMConfig
from moram_ref.torch import attach as A

CFG = MoRAMConfig(atoms_per_task=2, top_k=3, temperature=0.2)
STEPS, BATCH = 6, 8


def build():
    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 4)).double()
    A.attach(m, CFG, ["0", "2"])
    return m


def train(model, rank, world, tasks=2):
    data = torch.randn(tasks, STEPS, BATCH, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    target = torch.randn(tasks, STEPS, BATCH, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    shard = slice(rank * BATCH // world, (rank + 1) * BATCH // world)
    g = torch.Generator().manual_seed(3)
    for t in range(tasks):
        A.begin_task(model, g)  # same generator on every rank: identical fresh atoms
        net = DDP(model) if world > 1 else model  # wrap after begin_task: the atoms are new parameters
        opt = torch.optim.AdamW(list(A.trainable_parameters(model)), lr=0.05, weight_decay=0.01)
        for s in range(STEPS):
            opt.zero_grad()
            torch.nn.functional.mse_loss(net(data[t, s, shard]), target[t, s, shard]).backward()
            opt.step()
        A.end_task(model)
    return torch.cat([layer.frozen_keys.flatten() for _, layer in A.attached_layers(model)]
                     + [layer.frozen_values.flatten() for _, layer in A.attached_layers(model)])


def worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        state = train(build(), rank, world)
        gathered = [torch.empty_like(state) for _ in range(world)]
        dist.all_gather(gathered, state)
        if rank == 0:
            torch.save({"ranks": gathered}, os.path.join(out_dir, "ddp.pt"))
        dist.barrier()  # nobody tears the group down while another process still works
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.cpu_only  # gloo on CPU processes
def test_ddp_two_processes_match_one(tmp_path):
    mp.spawn(worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    ranks = torch.load(tmp_path / "ddp.pt")["ranks"]  # our own file, tensors only
    assert torch.equal(ranks[0], ranks[1]), "atoms diverged between processes"
    single = train(build(), 0, 1)
    torch.testing.assert_close(ranks[0], single, rtol=1e-10, atol=1e-12)
