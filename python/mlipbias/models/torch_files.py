"""Writing and reading the torch files of mlipbias (training checkpoints, GNN and PaiNN model files).

They hold tensors and plain types only and are read with ``torch.load(weights_only=True)``, so no
object in them is ever built: a file holding anything else (a crafted pickle would run code) is
refused, naming the object, before anything of it runs. Every error names the file.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
import zipfile
from pathlib import Path

import torch


def save_plain(payload, path: str | Path) -> Path:
    """Write ``payload`` (tensors and plain types) to ``path`` atomically: a reader, or a run that is
    killed meanwhile, never sees a half-written file. Creates the folder."""
    from mlipbias.modelfile import _umask

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    # mkstemp makes the file private (0600); a model file or checkpoint gets the usual permissions,
    # as write_model_file gives .mlip files.
    os.fchmod(handle, 0o666 & ~_umask())
    os.close(handle)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_plain(path: str | Path, what: str, advice: str = "", map_location="cpu"):
    """The contents of the torch file ``path``; ``what`` names it in errors (e.g. "checkpoint",
    "PaiNN model file") and ``advice`` is appended to them."""
    path = Path(path)
    tail = f"; {advice}" if advice else ""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as error:
        # A pickle that asks for an object: name it, not torch's advice to load with weights_only=False.
        refused = re.search(r"Unsupported global: GLOBAL (\S+)", str(error))
        if refused:
            raise ValueError(
                f"{path}: refused to load: the {what} holds objects other than tensors and plain types "
                f"({refused.group(1)}; not one mlipbias wrote, it may be crafted to run code){tail}"
            ) from None
        # torch's message here only advises weights_only=False, which would run the file's code
        raise ValueError(
            f"{path}: not a readable {what}: not a torch file of tensors and plain types, or damaged{tail}"
        ) from None
    except (RuntimeError, EOFError, OSError, zipfile.BadZipFile, ValueError) as error:
        detail = str(error).splitlines()[0] if str(error) else "no detail"
        raise ValueError(
            f"{path}: not a readable {what}, the file is truncated or damaged "
            f"({type(error).__name__}: {detail}){tail}"
        ) from None


def load_model_payload(path: str | Path, what: str, file_format: str, format_version: int) -> dict:
    """The payload of a model file written as ``{"format": file_format, "format_version": ..., ...}``:
    a missing, foreign, damaged or newer file is a clear error."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist")
    payload = load_plain(path, what)
    if not isinstance(payload, dict) or payload.get("format") != file_format:
        raise ValueError(f"{path} is not an {file_format} model file")
    if payload.get("format_version", 0) > format_version:
        raise ValueError(
            f"{path}: {what} format version {payload['format_version']} is newer than this mlipbias "
            f"({format_version})"
        )
    return payload
