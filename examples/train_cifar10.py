"""Train a zoo model in its TRAIN form on CIFAR-10 (CPU) and save it as an edgerep checkpoint.

This is how edgerep's embedded default (``edgerep/data/models/``) was made; the defaults are its recipe:

    python examples/train_cifar10.py --model repghostnet_050 --epochs 8 --threads 1 --out-dir edgerep/data/models

Other models go to edgerep's cache (``~/.cache/edgerep/models``; ``$EDGEREP_CACHE`` moves it), which is where
``bench/int8_accuracy.py`` looks for them. The state after each epoch is kept beside the output
(``<model>_cifar10.resume.pt``), so an interrupted run continues from its last finished epoch with the same command.

(``--threads 1`` because the 2 shared cores were oversubscribed: two intra-op threads then wait on
each other and ran a step 3-10x slower than one thread; on an idle machine use 2.)

32x32 inputs (random crop with 4-px zero padding + horizontal flip), SGD + Nesterov with a linear
warm-up then cosine decay, label smoothing. The whole training set is decoded once into a uint8 tensor
(40k x 3 x 32 x 32 = 120 MB), so an epoch is pure compute. ImageNet-shaped networks keep their strides:
with a 32x32 input a stride-32 network ends on a 1x1 feature map, which costs accuracy but keeps the
architecture identical to the one users deploy. Training runs in channels-last memory format (13% faster per
step for RepVGG-A0 on one thread here, 2026-12-07). Values are stored in fp16 to keep the file small; the
reported top-1 is measured with those fp16-rounded weights (the file as shipped).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from edgerep.checkpoints.load import save_checkpoint
from edgerep.errors import BadInputError, EdgerepError
from edgerep.fileio import atomic_path, sha256_path, write_json
from edgerep.images import Preprocess, list_images, load_images, normalize
from edgerep.resources import cache_dir
from edgerep.zoo import create_model, get_spec

REPO = Path(__file__).resolve().parents[1]
SHARED_CIFAR = Path(os.environ.get("EDGEREP_SHARED", REPO.parent / "shared")) / "data/cifar10"
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
PAD = 4


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="repghostnet_050", help="zoo model name (see edgerep.zoo.list_models)")
    p.add_argument("--data", type=Path, default=SHARED_CIFAR / "train", help="train folder")
    p.add_argument("--test", type=Path, default=SHARED_CIFAR / "test", help="test folder")
    p.add_argument("--shipped", type=Path, default=REPO / "edgerep/data/cifar10/test", help="shipped test images")
    p.add_argument("--out-dir", type=Path, default=cache_dir() / "models", help="default: %(default)s")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.2, help="peak learning rate (after warm-up)")
    p.add_argument("--warmup-epochs", type=float, default=0.5)
    p.add_argument("--weight-decay", type=float, default=5e-4, help="on conv/linear weights only")
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--limit", type=int, default=0, help="train on a seeded random subset of N images (smoke runs)")
    return p.parse_args(argv)


def load_split(folder: Path, pre: Preprocess, what: str) -> tuple[Tensor, Tensor, list[str]]:
    """A labelled folder as uint8 (N, 3, H, W) + labels, decoded once; prints progress every 10k images."""
    t0 = time.perf_counter()
    last = [0]

    def progress(done: int, total: int) -> None:
        if done - last[0] >= 10_000 or done == total:
            last[0] = done
            print(f"  {what}: decoded {done}/{total} images ({time.perf_counter() - t0:.0f} s)", flush=True)

    items = list_images(folder)
    if items.labels is None:
        raise SystemExit(f"{folder} has no class subfolders; CIFAR-10 training needs labelled images")
    batch = load_images(items, pre, raw=True, progress=progress)
    return batch.images, batch.labels, items.classes or []


def augment(x: Tensor, gen: torch.Generator) -> Tensor:
    """Random crop of the zero-padded image + random horizontal flip, on a whole uint8 batch at once."""
    n, c, h, w = x.shape
    padded = F.pad(x, (PAD, PAD, PAD, PAD))
    oy = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * PAD + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
    out = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    flip = torch.rand(n, generator=gen) < 0.5
    out[flip] = out[flip].flip(3)
    return out


@torch.no_grad()
def top1(model: nn.Module, x: Tensor, y: Tensor, pre: Preprocess, batch_size: int = 500) -> float:
    model.eval()
    correct = sum(
        (model(normalize(x[i : i + batch_size], pre)).argmax(1) == y[i : i + batch_size]).sum().item()
        for i in range(0, len(x), batch_size)
    )
    return correct / len(x)


def make_optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """No weight decay on BN/bias/scale vectors: decaying them only fights the normalization."""
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)


def lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    return 0.5 * peak * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def save(path: Path, model: nn.Module, name: str, meta: dict) -> None:
    """An edgerep checkpoint of ``model`` with fp16 values (BN counters stay int64)."""
    half = copy.deepcopy(model).half()
    save_checkpoint(path, half, model=name, form="train", num_classes=meta["num_classes"], extra=meta)


RESUMED_ARGS = ("model", "data", "epochs", "batch_size", "lr", "warmup_epochs", "weight_decay", "label_smoothing",
                "seed", "limit")


def keep_state(path: Path, args: dict, model: nn.Module, opt: torch.optim.Optimizer, gen: torch.Generator,
               history: list[dict]) -> None:
    """Everything needed to continue after the last finished epoch, written atomically."""
    state = {"args": json.dumps({k: str(args[k]) for k in RESUMED_ARGS}), "history": json.dumps(history),
             "model": model.state_dict(), "optimizer": opt.state_dict(), "generator": gen.get_state()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def resume(path: Path, args: dict, model: nn.Module, opt: torch.optim.Optimizer,
           gen: torch.Generator) -> list[dict]:
    """The finished epochs' history from ``path`` when it holds a run of the same recipe, else a fresh start."""
    if not path.exists():
        return []
    state = torch.load(path, weights_only=True)
    if json.loads(state["args"]) != {k: str(args[k]) for k in RESUMED_ARGS}:
        raise SystemExit(f"{path} holds a run with other settings; delete it to start over")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    history = json.loads(state["history"])
    print(f"resuming after epoch {len(history)} from {path}", flush=True)
    return history


def _shown(path: Path) -> str:
    """A path as recorded in the recipe: relative to the repository when inside it."""
    p = path.resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else str(p)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.perf_counter()
    pre = Preprocess(32, mean=CIFAR_MEAN, std=CIFAR_STD)
    get_spec(args.model)  # an unknown name is refused before minutes of decoding photos

    print(f"loading data ({args.data}, {args.test}, {args.shipped})", flush=True)
    x_train, y_train, classes = load_split(args.data, pre, "train")
    if args.limit:
        keep = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed))[: args.limit]
        x_train, y_train = x_train[keep], y_train[keep]
    x_test, y_test, test_classes = load_split(args.test, pre, "test")
    x_ship, y_ship, ship_classes = load_split(args.shipped, pre, "shipped")
    if not classes == test_classes == ship_classes:
        raise BadInputError(f"class folders differ: train {classes}, test {test_classes}, shipped {ship_classes};"
                            " give --data, --test and --shipped folders with the same class subfolders")
    t_loaded = time.perf_counter()

    model = create_model(args.model, num_classes=len(classes)).to(memory_format=torch.channels_last)
    n_params = sum(p.numel() for p in model.parameters())
    opt = make_optimizer(model, args.lr, args.weight_decay)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)
    gen = torch.Generator().manual_seed(args.seed)
    steps_per_epoch = math.ceil(len(x_train) / args.batch_size)
    total, warmup = args.epochs * steps_per_epoch, max(1, round(args.warmup_epochs * steps_per_epoch))
    print(f"{args.model}: {n_params / 1e6:.2f} M parameters, {len(x_train)} train images, "
          f"{args.epochs} epochs x {steps_per_epoch} steps, {args.threads} threads", flush=True)

    stem = f"{args.model}_cifar10"
    args.out_dir.mkdir(parents=True, exist_ok=True)
    resume_path = args.out_dir / f"{stem}.resume.pt"
    history = resume(resume_path, vars(args), model, opt, gen)
    resumed_after = len(history)
    step = len(history) * steps_per_epoch
    for epoch in range(len(history), args.epochs):
        model.train()
        t0, loss_sum, correct = time.perf_counter(), 0.0, 0
        order = torch.randperm(len(x_train), generator=gen)
        for i in range(0, len(order), args.batch_size):
            idx = order[i : i + args.batch_size]
            x, y = normalize(augment(x_train[idx], gen), pre), y_train[idx]
            for g in opt.param_groups:
                g["lr"] = lr_at(step, total, warmup, args.lr)
            logits = model(x)
            loss = loss_fn(logits, y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            loss_sum += loss.item() * len(idx)
            correct += (logits.argmax(1) == y).sum().item()
        acc = top1(model, x_test, y_test, pre)
        row = {"epoch": epoch + 1, "loss": loss_sum / len(x_train), "train_top1": correct / len(x_train),
               "test_top1": acc, "seconds": time.perf_counter() - t0}
        history.append(row)
        keep_state(resume_path, vars(args), model, opt, gen, history)
        print(f"epoch {epoch + 1}/{args.epochs}  loss {row['loss']:.3f}  train top-1 {row['train_top1']:.3f}  "
              f"test top-1 {acc:.4f}  {row['seconds']:.0f} s", flush=True)

    # Measure what ships: the fp16-rounded weights loaded back into a fresh fp32 model.
    shipped_model = create_model(args.model, num_classes=len(classes))
    shipped_model.load_state_dict(copy.deepcopy(model).half().state_dict())
    test_fp32, ship_fp32 = top1(model, x_test, y_test, pre), top1(model, x_ship, y_ship, pre)
    test_fp16, ship_fp16 = top1(shipped_model, x_test, y_test, pre), top1(shipped_model, x_ship, y_ship, pre)

    meta = {
        "num_classes": len(classes), "input_size": [3, 32, 32], "mean": list(CIFAR_MEAN), "std": list(CIFAR_STD),
        "crop_pct": 1.0, "labels": classes, "dtype": "float16", "trained_by": "examples/train_cifar10.py",
        "dataset": "CIFAR-10 (JPEG re-encoding, see edgerep/data/cifar10/SOURCE.md)",
        "top1_test": test_fp16, "recipe": f"{stem}.json",
    }
    save(args.out_dir / f"{stem}.pt", model, args.model, meta)
    recipe = {
        "model": args.model, "form": "train", "parameters": n_params, "checkpoint": f"{stem}.pt",
        "checkpoint_bytes": (args.out_dir / f"{stem}.pt").stat().st_size,
        "checkpoint_sha256": sha256_path(args.out_dir / f"{stem}.pt"),
        "values": "float16 (floating tensors); accuracy below measured with these rounded values",
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr, "warmup_epochs": args.warmup_epochs,
        "schedule": "linear warm-up then cosine to 0, per step", "optimizer": "SGD momentum 0.9 nesterov",
        "weight_decay": args.weight_decay, "weight_decay_on": "tensors with ndim > 1 (conv/linear weights)",
        "label_smoothing": args.label_smoothing, "seed": args.seed, "threads": args.threads,
        "augmentation": f"random crop 32x32 of the {PAD}-px zero-padded image + horizontal flip (p=0.5)",
        "input": "32x32 RGB, ImageNet-shaped strides kept (a stride-32 network ends on a 1x1 feature map)",
        "preprocess": pre.to_dict(),
        "data": {"train": _shown(args.data), "train_images": len(x_train), "test": _shown(args.test),
                 "test_images": len(x_test), "shipped": _shown(args.shipped), "shipped_images": len(x_ship),
                 "classes": classes},
        "top1": {"test_fp16": test_fp16, "shipped_fp16": ship_fp16, "test_fp32": test_fp32, "shipped_fp32": ship_fp32},
        "wall_seconds": {"load": t_loaded - t_start, "epochs": sum(h["seconds"] for h in history),
                         "this_run": time.perf_counter() - t_start, "resumed_after_epoch": resumed_after},
        "history": history,
        "environment": {"torch": torch.__version__, "python": platform.python_version(),
                        "machine": platform.machine(), "cpu_threads": args.threads},
    }
    write_json(args.out_dir / f"{stem}.json", recipe)
    resume_path.unlink(missing_ok=True)
    print(f"saved {args.out_dir / stem}.pt ({recipe['checkpoint_bytes'] / 1e6:.2f} MB)  top-1: test ({len(x_test)}) "
          f"{test_fp16:.4f} (fp32 {test_fp32:.4f}), shipped ({len(x_ship)}) {ship_fp16:.4f}  "
          f"{args.epochs} epochs {recipe['wall_seconds']['epochs']:.0f} s", flush=True)


if __name__ == "__main__":
    try:
        main()
    except EdgerepError as exc:  # bad paths, unreadable photos, unknown model: one line, exit 2
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
