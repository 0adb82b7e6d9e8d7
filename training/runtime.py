"""Where a run executes and what it leaves behind: device, autocast, ranks, checkpoints.

Imported by fit.py and evaluate.py (and nothing here imports them), so the training modules
form no import circle.

Checkpoints are data: fit.py writes only tensors and JSON-able settings, and every load goes
through `read_checkpoint` (torch.load with weights_only=True), so a crafted file given to
score.py, SyncLoss.from_checkpoint, fit.py --resume or a Ray worker's --sync-scorer never runs
code. A file you trust that needs more is converted once, on your explicit request:

    python -m training.runtime convert IN.pt OUT.pt
"""
from __future__ import annotations

import argparse
import contextlib
import os
import pickle
import sys
from collections import OrderedDict
from pathlib import Path, PurePath

import numpy as np
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
    """What `UniSync(**config)` needs to rebuild the model of a checkpoint; a model with its own
    `config()` (AV-SyncNet: training/avsync.py, whose config names it under `model`) gives that."""
    if callable(getattr(model, "config", None)):
        return model.config()
    return {"combo": model.combo, "width": model.width, "depth": model.depth,
            "visual_dim": model.visual_dim, "audio_dim": model.audio_dim}


class CheckpointError(ValueError):
    """A file that is not a loadable checkpoint; the message names the file, why, and what to do."""


CONVERT_HINT = ("if you trust the file and where it came from, convert it once with "
                "`python -m training.runtime convert {path} SAFE.pt` (that runs the file's code, "
                "once) and use SAFE.pt")


def plain(value, where: str = "checkpoint"):
    """`value` as tensors and JSON-able data only (what weights_only=True loads back).

    Paths become strings, numpy scalars numbers and numpy arrays tensors; anything else is a
    TypeError naming where it sits, so fit.py never writes a checkpoint that needs code to load.
    """
    if isinstance(value, np.generic):  # before the builtins: np.float64 is a float subclass
        return value.item()
    if value is None or isinstance(value, torch.Tensor):
        return value
    for base in (bool, int, float, str):  # a subclass (an enum, say) would pickle as its class
        if isinstance(value, base):
            return value if type(value) is base else base(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, (list, tuple)):
        items = [plain(v, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if isinstance(value, tuple) else items
    if isinstance(value, dict):
        keys = [plain(k, f"{where} key {k!r}") for k in value]
        bad = [k for k in keys if not isinstance(k, (str, int))]
        if bad:
            raise TypeError(f"{where}: key {bad[0]!r} is a {type(bad[0]).__name__}, not a str or int")
        out = {k: plain(v, f"{where}[{k!r}]") for k, v in zip(keys, value.values())}
        if isinstance(value, OrderedDict):  # a state dict: keep its type and version metadata
            out = OrderedDict(out)
            if isinstance(getattr(value, "_metadata", None), dict):
                out._metadata = plain(dict(value._metadata), f"{where}._metadata")
        return out
    raise TypeError(f"{where} is a {type(value).__module__}.{type(value).__qualname__}: a checkpoint "
                    "holds only tensors and JSON-able data")


def save_checkpoint(path: Path, model: UniSync, optimizer: torch.optim.Optimizer, step: int,
                    args: dict, extra: dict | None = None) -> None:
    """Write atomically (temporary file, then rename): a crash never leaves half a checkpoint.

    The model and optimiser state dicts are torch's own (tensors and numbers); `args` and
    `extra` pass through `plain`, so the file loads with weights_only=True."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": int(step),
             "args": plain(dict(args), "args"), "config": model_config(model),
             **plain(dict(extra or {}), "extra")}
    tmp = Path(path).with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(path)


def _torch_reason(exc: BaseException) -> str:
    """The one line of torch's weights-only refusal that says what the file asked for."""
    for line in str(exc).splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(" was not an allowed", 1)[0].strip()
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def read_checkpoint(path: Path | str, map_location: str | torch.device = "cpu"):
    """torch.load with weights_only=True: tensors and plain data, never code from the file.

    A pickle that needs more (a class, a function: what a crafted payload needs) is refused with a
    CheckpointError saying why and how to convert a file you trust; a file torch cannot read at
    all (truncated, not written by torch.save) is a CheckpointError too."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Weights only load failed" not in str(exc):
            raise CheckpointError(f"{path}: not a torch checkpoint ({_torch_reason(exc)})") from None
        raise CheckpointError(
            f"{path}: refused to load: it holds more than tensors and plain data, and unpickling it "
            f"would run code the file names ({_torch_reason(exc)}). Checkpoints written by "
            f"training/fit.py hold only tensors and JSON-able settings, so this file was written by "
            f"other code or crafted; {CONVERT_HINT.format(path=path)}") from None
    except (KeyError, EOFError, ValueError) as exc:  # what torch's readers raise on a non-torch file
        raise CheckpointError(f"{path}: not a torch checkpoint (torch.load: {type(exc).__name__} "
                              f"{exc}); expected a file written by torch.save") from None
    except RuntimeError as exc:
        if "PytorchStreamReader" not in str(exc):
            raise
        raise CheckpointError(f"{path}: a damaged torch checkpoint ({str(exc).split('. ')[0]}): "
                              "truncated or modified after saving") from None


def _bare_state_dict(ckpt) -> bool:
    return isinstance(ckpt, dict) and bool(ckpt) and all(isinstance(v, torch.Tensor) for v in ckpt.values())


def unisync_parts(path: Path | str, ckpt) -> tuple[dict, dict]:
    """(config, model state) of a UniSync checkpoint dict; CheckpointError naming what is missing."""
    if _bare_state_dict(ckpt):
        raise CheckpointError(
            f"{path}: not a UniSync checkpoint: it is a bare state dict ({len(ckpt)} tensors, no "
            "'config' or 'model' key), e.g. SyncNet weights (those go to --scorer syncnet / "
            "--syncnet-weights or SyncLoss.from_syncnet); a UniSync checkpoint is training/fit.py's "
            "checkpoint.pt or best.pt")
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not a UniSync checkpoint: it holds a {type(ckpt).__name__}, "
                              "not training/fit.py's dict")
    missing = [k for k in ("config", "model") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not a UniSync checkpoint: no {' or '.join(map(repr, missing))} "
                              f"key (it has {sorted(map(str, ckpt))[:8]}); training/fit.py writes "
                              "'config' (the model settings) and 'model' (the weights)")
    if not isinstance(ckpt["config"], dict) or not isinstance(ckpt["model"], dict):
        raise CheckpointError(f"{path}: not a UniSync checkpoint: 'config' and 'model' must be dicts")
    return ckpt["config"], ckpt["model"]


def load_checkpoint(path: Path | str, map_location: str | torch.device = "cpu") -> tuple[UniSync, dict]:
    """The model of a checkpoint (eval mode) and the whole checkpoint dict.

    The one loader of UniSync checkpoints (score.py, scorers, SyncLoss, evaluate.py, sync_pass
    workers): weights_only (read_checkpoint), then a model the file's config describes."""
    ckpt = read_checkpoint(path, map_location)
    config, weights = unisync_parts(path, ckpt)
    try:
        if config.get("model") == "avsync":  # an AV-SyncNet checkpoint (fit.py --model avsync)
            from training.avsync import build_avsync
            model = build_avsync(config)
        else:
            model = UniSync(**config)
    except (TypeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: its config {config} does not describe a UniSync model ({exc})") from None
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes "
                              f"({str(exc).splitlines()[0]} ...)") from None
    return model.eval(), ckpt


def convert(src: Path | str, dst: Path | str) -> dict:
    """Rewrite a checkpoint you trust as tensors and plain data (it loads with weights_only then).

    This is the one place that unpickles with weights_only=False: it runs the file's code, so it
    runs only when a person asks for it (`python -m training.runtime convert IN OUT`)."""
    src, dst = Path(src), Path(dst)
    if src.resolve() == dst.resolve():
        raise ValueError("convert writes a new file: give OUT different from IN")
    raw = torch.load(src, map_location="cpu", weights_only=False)  # trusted by the person asking
    if isinstance(raw, dict) and "model" in raw and isinstance(raw["model"], torch.nn.Module):
        raw = {**raw, "model": raw["model"].state_dict()}  # a whole pickled model: keep its weights
    try:
        safe = plain(raw, "checkpoint")
    except TypeError as exc:
        raise CheckpointError(f"{src}: cannot be converted: {exc}") from None
    tmp = dst.with_suffix(dst.suffix + ".tmp")
    torch.save(safe, tmp)
    tmp.replace(dst)
    return read_checkpoint(dst)  # proves the result loads with weights_only=True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.runtime",
                                description="Checkpoint tools. convert: rewrite a checkpoint YOU TRUST "
                                            "(it is unpickled with code) as tensors and plain data.")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("convert", help="IN (trusted; its pickle runs) -> OUT (loads with weights_only=True)")
    c.add_argument("src", type=Path)
    c.add_argument("dst", type=Path)
    args = p.parse_args(argv)
    try:
        safe = convert(args.src, args.dst)
    except (CheckpointError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kind = "UniSync checkpoint" if isinstance(safe, dict) and "config" in safe else "checkpoint"
    print(f"wrote {args.dst}: a {kind} of tensors and plain data (loads with weights_only=True)")
    return 0


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


if __name__ == "__main__":
    sys.exit(main())
