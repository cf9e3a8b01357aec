"""Self-describing checkpoints, written atomically and read safely.

A checkpoint holds everything needed to resume or to understand a run: model, optimizer,
scheduler and grad-scaler states, epoch, global step, total steps, RNG states (as tensors),
the resolved configuration, the label space, the monitored metric and its best value, the
data-manifest hash and the training history so far. Files are written to a temporary file in
the same folder, flushed and fsync'ed, then renamed over the final name (:func:`atomic_write`, also
used by the project's report datasets), so a crash never leaves a partial file at ``best.pt`` /
``last.pt`` / ``step_<N>.pt``; a full disk raises :class:`DiskFullError`, naming the file and the free space, with the
previous file untouched. Loading always uses ``torch.load(weights_only=True)``: a pickle that would
run code is refused.
"""

from __future__ import annotations

import errno
import os
import random
import re
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used (missing, corrupt, unsafe, or from another setup)."""


class DiskFullError(OSError):
    """No space left (or the quota reached) while writing ``path``; the previous file is untouched."""

    def __init__(self, path: str | os.PathLike, free_bytes: int | None) -> None:
        self.path, self.free_bytes = Path(path), free_bytes
        free = "free space unknown" if free_bytes is None else f"{_human_size(free_bytes)} ({free_bytes:,} bytes) free"
        super().__init__(errno.ENOSPC, (
            f"no space left on the device while writing {self.path} ({free} in {self.path.parent}); the previous "
            f"{self.path.name}, if any, is untouched. Free some space there (or point the output elsewhere) and "
            "run again: a training stage resumes from its last checkpoint"))

    def __reduce__(self) -> tuple:  # picklable across processes (the default would pass errno, message)
        return type(self), (self.path, self.free_bytes)

    def __str__(self) -> str:
        return self.strerror


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.1f} {unit}" if unit != "B" else f"{size} B"
        value /= 1024
    return f"{value:.1f} TiB"


def _free_bytes(folder: Path) -> int | None:
    try:
        return shutil.disk_usage(folder).free
    except OSError:
        return None


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[Path]:
    """A temp path beside ``path`` to write to; on success it is fsync'ed and renamed over ``path``.

    On any error the temp file is removed and ``path`` keeps its previous content; a full disk
    (``ENOSPC``/``EDQUOT``, in the write, the fsync or the rename) becomes a :class:`DiskFullError`.
    The temp file is created with the usual permissions (``0o666`` less the umask), not ``0o600``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _create_temp(path)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException as error:
        tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT) \
                and not isinstance(error, DiskFullError):
            raise DiskFullError(path, _free_bytes(path.parent)) from error
        raise
    _fsync(path.parent)  # the rename itself survives a power cut


def _create_temp(path: Path) -> Path:
    """A new empty ``.<name>.<random>.tmp`` beside ``path`` (the pattern stale-file clean-up looks for)."""
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temp file beside ``path``, fsync, then rename over ``path`` (:func:`atomic_write`)."""
    path = Path(path)
    with atomic_write(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)
    return path


def safe_torch_load(path: str | os.PathLike) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; refuse anything else with a clear error.

    An explicit ``weights_only=True`` is not overridden by ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    (torch only applies that variable when the call site leaves the argument unset).
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError for unsafe globals, RuntimeError for corrupt zips
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(error).__name__}: {_reason(error)} "
            "(read with torch.load(weights_only=True): corrupt files and pickles that would run code are refused)"
        ) from None


def _reason(error: Exception) -> str:
    """The informative line of a torch.load error (not torch's advice to retry with weights_only=False)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Weights only load failed"):
        detail = [line for line in lines[1:] if not line.startswith(("Please file an issue", "Check the documentation"))]
        return "; ".join(detail)[:300] or "refused by the weights-only unpickler"
    return lines[0][:300] if lines else type(error).__name__


def read_weights_file(path: str | os.PathLike) -> dict[str, Any]:
    """A ``.safetensors`` file, or any other checkpoint through :func:`safe_torch_load`."""
    path = Path(path)
    if path.suffix == ".safetensors":
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    return safe_torch_load(path)


def capture_rng_state() -> dict[str, torch.Tensor]:
    """Python, NumPy and torch RNG states as tensors (loadable with weights_only=True)."""
    version, state, gauss = random.getstate()
    np_state = np.random.get_state()
    out = {
        "python": torch.tensor([version, *state], dtype=torch.int64),
        "python_gauss": torch.tensor([float("nan") if gauss is None else gauss], dtype=torch.float64),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": torch.tensor([np_state[2], np_state[3]], dtype=torch.int64),
        "numpy_gauss": torch.tensor([np_state[4]], dtype=torch.float64),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.stack(torch.cuda.get_rng_state_all()) if torch.cuda.device_count() else torch.empty(0)
    return out


def restore_rng_state(state: dict[str, torch.Tensor]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    python = state["python"].tolist()
    gauss = state["python_gauss"].item()
    random.setstate((python[0], tuple(python[1:]), None if np.isnan(gauss) else gauss))
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32),
                         int(state["numpy_meta"][0]), int(state["numpy_meta"][1]), float(state["numpy_gauss"][0])))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]):
        torch.cuda.set_rng_state_all(list(state["cuda"]))


STEP_FILE = re.compile(r"^step_(\d+)\.pt$")  # the numbered checkpoints of checkpoint_every_n_steps


@dataclass(frozen=True)
class CheckpointStore:
    """The folder of one training stage: ``last.pt`` (resume point), ``best.pt``, and the numbered
    ``step_<N>.pt`` (the state after optimizer step ``N``) when a stage writes them."""

    path: str

    @property
    def last_path(self) -> Path:
        return Path(self.path) / "last.pt"

    @property
    def best_path(self) -> Path:
        return Path(self.path) / "best.pt"

    def has_last(self) -> bool:
        return self.last_path.is_file()

    def has_best(self) -> bool:
        return self.best_path.is_file()

    def save(self, kind: str, state: dict[str, Any]) -> Path:
        """Write ``kind`` (``"last"`` or ``"best"``) atomically."""
        if kind not in ("last", "best"):
            raise ValueError(f"unknown checkpoint kind {kind!r}")
        return atomic_torch_save({"format": CHECKPOINT_FORMAT, "kind": kind, **state}, Path(self.path) / f"{kind}.pt")

    def load(self, kind: str) -> dict[str, Any]:
        return safe_torch_load(Path(self.path) / f"{kind}.pt")

    def step_path(self, step: int) -> Path:
        return Path(self.path) / f"step_{step}.pt"

    def save_step(self, step: int, state: dict[str, Any]) -> Path:
        """Write ``step_<step>.pt`` atomically (a resumable checkpoint of kind ``step``)."""
        return atomic_torch_save({"format": CHECKPOINT_FORMAT, "kind": "step", **state}, self.step_path(step))

    def step_files(self) -> list[tuple[int, Path]]:
        """``(N, path)`` of every ``step_<N>.pt`` in the folder, the smallest ``N`` first."""
        folder = Path(self.path)
        found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := STEP_FILE.match(p.name))] \
            if folder.is_dir() else []
        return sorted(found)

    def remove_old_steps(self, keep: int | None, *, newest: int) -> list[Path]:
        """Delete the ``step_<N>.pt`` with the smallest ``N`` beyond the ``keep`` newest (``None``: keep all);
        ``step_<newest>.pt``, the one just written, is never removed. The deleted paths."""
        if keep is None:
            return []
        files = [(step, path) for step, path in self.step_files() if step != newest]
        removed = [path for _, path in files[:max(len(files) + 1 - keep, 0)]]
        for path in removed:
            path.unlink(missing_ok=True)
        return removed

    def remove_stale_temp_files(self) -> list[str]:
        """Delete temp files a killed write left behind (``.last.pt.*.tmp``); their names."""
        folder = Path(self.path)
        stale = sorted(folder.glob(".*.pt.*.tmp")) if folder.is_dir() else []
        for path in stale:
            path.unlink(missing_ok=True)
        return [p.name for p in stale]


def check_compatible(checkpoint: dict[str, Any], *, backbone: str, decoder: str, seg_mode: str,
                     labels: dict[str, Any], source: str) -> None:
    """Refuse a checkpoint built for another architecture or class list, naming the mismatch."""
    problems = []
    meta = checkpoint.get("model_meta", {})
    for key, expected in (("backbone", backbone), ("decoder", decoder), ("seg_mode", seg_mode)):
        if meta.get(key) != expected:
            problems.append(f"{key}: checkpoint has {meta.get(key)!r}, the current configuration has {expected!r}")
    if checkpoint.get("labels") != labels:
        problems.append(f"classes: checkpoint has {checkpoint.get('labels')}, the current data has {labels}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not match this run:\n  - " + "\n  - ".join(problems))
