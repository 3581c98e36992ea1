"""Reading checkpoint files safely: tensors only, never code, with errors a user can act on."""

from __future__ import annotations

import io
import pickle
import warnings
from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError

# Keys under which training scripts commonly nest the weights (timm, the original repos, Lightning...).
_NESTED_KEYS = ("state_dict", "model", "model_ema", "state_dict_ema", "net", "module")


def load_bytes(data: bytes, p: Path) -> dict[str, object]:
    """``torch.load(..., weights_only=True)`` of a file's bytes, every failure turned into a one-line error.

    A pickle that holds code (or any object beyond tensors, containers and primitives) is refused by
    the weights-only unpickler before anything in it runs. ``p`` names the file in messages.
    """
    if not data:
        raise CheckpointError(f"checkpoint {p} is empty (0 bytes); re-copy or re-save it")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols it then reads fine
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines()]
        blocked = next((ln for ln in lines if "GLOBAL" in ln), None)
        if blocked is not None:
            raise CheckpointError(
                f"checkpoint {p} holds Python objects, not just tensors ({_global_name(blocked)});"
                " edgerep never unpickles code: re-save it with torch.save(model.state_dict(), path)"
            ) from None
        why = next((ln for ln in lines if ln.startswith(("Unsupported", "invalid load key"))), "unreadable")
        raise _unreadable(p, why) from None
    except Exception as exc:  # the weights-only unpickler meets garbage with any error (IndexError, KeyError...)
        lines = str(exc).strip().splitlines()
        raise _unreadable(p, f"{type(exc).__name__}: {lines[0][:160]}" if lines else type(exc).__name__) from None
    if isinstance(obj, dict):
        return obj
    raise CheckpointError(
        f"checkpoint {p} holds a {type(obj).__name__}, not a dict of tensors; save model.state_dict() instead"
    )


def extract_state_dict(obj: dict[str, object], path: str | Path = "<checkpoint>") -> dict[str, Tensor]:
    """The tensor dict inside a checkpoint: unwraps common nesting and DataParallel's ``module.`` prefix."""
    sd: object = obj
    # A known nested dict wins even beside top-level tensors (files that also store inputs/outputs).
    while isinstance(sd, dict):
        inner = next((sd[k] for k in _NESTED_KEYS if isinstance(sd.get(k), dict)), None)
        if inner is None or (_is_tensor_dict(sd) and not _is_tensor_dict(inner)):
            break
        sd = inner
    if not isinstance(sd, dict) or not _is_tensor_dict(sd):
        keys = ", ".join(list(obj)[:8])
        raise CheckpointError(
            f"checkpoint {path} has no state dict (top-level keys: {keys}); expected a dict of tensors"
            f" or one nested under {'/'.join(_NESTED_KEYS)}"
        )
    tensors = {k: v for k, v in sd.items() if isinstance(v, Tensor)}
    if tensors and all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _is_tensor_dict(d: dict) -> bool:
    return bool(d) and sum(isinstance(v, Tensor) for v in d.values()) >= max(1, len(d) // 2)


def _unreadable(p: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"checkpoint {p} is not a readable PyTorch checkpoint ({why}): corrupt, truncated, or not written by"
        " torch.save; re-download or re-save it"
    )


def _global_name(line: str) -> str:
    """'... GLOBAL posix.system whose ...' -> 'refused global posix.system'."""
    words = line.replace("`", " ").split()
    i = words.index("GLOBAL") if "GLOBAL" in words else -1
    return f"refused global {words[i + 1]}" if 0 <= i < len(words) - 1 else "refused by the weights-only loader"
