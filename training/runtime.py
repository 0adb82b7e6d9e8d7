"""Where a run executes and what it leaves behind: device, autocast, ranks, checkpoints.

Imported by fit.py and evaluate.py (and nothing here imports them), so the training modules
form no import circle.
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

import torch

from training.model import UniSync


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def autocast(device: torch.device | str, enabled: bool = True):
    """bf16 autocast on CUDA, nothing elsewhere (CPU runs stay float32)."""
    device = torch.device(device)
    if enabled and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def model_config(model: UniSync) -> dict:
    """What `UniSync(**config)` needs to rebuild the model of a checkpoint."""
    return {"combo": model.combo, "width": model.width, "depth": model.depth,
            "visual_dim": model.visual_dim, "audio_dim": model.audio_dim}


def save_checkpoint(path: Path, model: UniSync, optimizer: torch.optim.Optimizer, step: int,
                    args: dict, extra: dict | None = None) -> None:
    """Write atomically (temporary file, then rename): a crash never leaves half a checkpoint."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
             "args": dict(args), "config": model_config(model), **(extra or {})}
    tmp = Path(path).with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str, map_location: str = "cpu") -> tuple[UniSync, dict]:
    """The model of a checkpoint (eval mode) and the whole checkpoint dict."""
    ckpt = torch.load(path, map_location=map_location, weights_only=False)
    model = UniSync(**ckpt["config"])
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


class Dist:
    """rank / world / collectives; a plain `python training/fit.py` is rank 0 of 1.

    Under torchrun (WORLD_SIZE > 1) it joins the process group: NCCL on CUDA (one GPU per
    LOCAL_RANK), gloo on CPU.
    """

    def __init__(self, device_name: str = "auto"):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.local_world = int(os.environ.get("LOCAL_WORLD_SIZE", str(self.world)))
        self.enabled = self.world > 1
        device = pick_device(device_name)
        if self.enabled and device.type == "cuda":
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        if self.enabled:
            import torch.distributed as dist
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")

    @property
    def master(self) -> bool:
        return self.rank == 0

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank."""
        if not self.enabled:
            return bool(flag)
        import torch.distributed as dist
        t = torch.tensor([1.0 if flag else 0.0], device=self._comm_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item() > 0)

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        import torch.distributed as dist
        t = torch.tensor([value], dtype=torch.float64, device=self._comm_device())
        dist.all_reduce(t)
        return float(t.item()) / self.world

    def gather(self, obj):
        """Every rank's `obj`, in rank order (on every rank)."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def _comm_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def close(self) -> None:
        if self.enabled:
            import torch.distributed as dist
            if dist.is_initialized():
                dist.destroy_process_group()
