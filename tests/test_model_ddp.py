"""Distributed training on CPU (gloo): DDP over 2 processes gives the gradients of one process
on the whole batch, and ``mmhnet train`` runs under torchrun."""

import os
import socket
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from mmhnet.model import (SyntheticTask, build_model, draw_training_randomness,
                          flow_matching_loss, get_config, load_checkpoint)
from mmhnet.model.distributed import init_distributed, shutdown_distributed, wrap_model

BATCH, SECONDS = 4, 2.0
WORKER_TIMEOUT = 240


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model_and_batch():
    """The same model and batch in every process: seeded, with non-zero head and modulations so
    that every block receives a gradient at the first step."""
    torch.manual_seed(0)
    model = build_model("tiny")
    for name, p in model.named_parameters():
        if "modulation" in name or name.startswith("head.out"):
            torch.nn.init.normal_(p, std=0.05)
    task = SyntheticTask(get_config("tiny"))
    clips = task.sample(SECONDS, BATCH, generator=torch.Generator().manual_seed(1))
    draws = draw_training_randomness(clips.latents, generator=torch.Generator().manual_seed(2))
    draws = draws._replace(drop_video=torch.tensor([True, False, False, False]),
                           drop_text=torch.tensor([False, False, True, False]))
    return model, clips, draws


def _half(x, rank, world):
    per = BATCH // world
    return x[rank * per:(rank + 1) * per]


def _ddp_worker(rank, world, port, out_path):
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    info = init_distributed("cpu")
    model, clips, draws = _model_and_batch()
    ddp = wrap_model(model, info)
    cond = type(clips.conditions)(*(_half(t, rank, world) for t in clips.conditions))
    part = type(draws)(*(_half(t, rank, world) for t in draws))
    flow_matching_loss(ddp, _half(clips.latents, rank, world), cond, part).loss.backward()
    if rank == 0:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out_path)
    # free DDP (its reducer) while the group is alive, and let both ranks arrive before the group
    # is torn down: a DDP freed after destroy_process_group hung about one run in four
    del ddp
    torch.distributed.barrier()
    shutdown_distributed()


def test_ddp_two_processes_match_one_process(tmp_path):
    out = str(tmp_path / "grads.pt")
    workers = mp.spawn(_ddp_worker, args=(2, _free_port(), out), nprocs=2, join=False)
    deadline = time.monotonic() + WORKER_TIMEOUT
    while not workers.join(timeout=2):
        if time.monotonic() > deadline:
            for p in workers.processes:
                p.kill()
            pytest.fail(f"the DDP workers did not finish within {WORKER_TIMEOUT} s")
    ddp_grads = torch.load(out)

    model, clips, draws = _model_and_batch()
    flow_matching_loss(model, clips.latents, clips.conditions, draws).loss.backward()
    for name, p in model.named_parameters():
        ref, got = p.grad, ddp_grads[name]
        assert got is not None, name
        scale = ref.norm().item()
        assert scale > 0, f"{name}: no gradient in the reference"
        err = (got - ref).norm().item() / scale
        assert err < 1e-4, f"{name}: relative gradient difference {err:.2e}"


def test_mmhnet_train_under_torchrun(tmp_path):
    ckpt = tmp_path / "run.pt"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_port", str(_free_port()), "-m", "mmhnet.cli", "train", "--config", "tiny",
           "--synthetic", "--steps", "2", "--batch-size", "1", "--clip-seconds", "2",
           "--log-every", "1", "--out", str(ckpt)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "on 2 process(es)" in proc.stdout
    loaded = load_checkpoint(ckpt)
    assert loaded.step == 2 and loaded.kind == "mmhnet"
