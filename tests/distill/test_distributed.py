"""Two CPU processes (gloo) train the teacher stage together and stay bit-identical."""

from __future__ import annotations

import json
import os
import socket

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from rsd_deploy.distill.config import build_config
    from rsd_deploy.distill.trainer import Trainer

    overrides = {"data": {"photos": ["astronaut", "coffee"], "crop": 64},
                 "optim": {"steps": 2, "batch": 4, "grad_accum": 2},
                 "run": {"out_dir": out, "val_every": 0, "ckpt_every": 2, "threads": 1}}
    trainer = Trainer(build_config("demo", "teacher", overrides=overrides))
    trainer.fit()
    save_file({k: v.contiguous() for k, v in trainer.objective.networks["unet"].state_dict().items()}, f"{out}/rank{rank}.safetensors")
    trainer.close()


def test_two_process_ddp_with_accumulation_keeps_replicas_identical(tmp_path):
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    rank0, rank1 = (load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1))
    assert all(torch.equal(rank0[k], rank1[k]) for k in rank0)
    assert json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["step"] == 2
