"""Per-epoch metrics of a run: ``metrics.jsonl``, ``metrics.csv`` and ``curves.png``, rewritten atomically."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from pyfast.harness.files import atomic_write, atomic_write_text


def write_metrics(out: Path, history: list[dict]) -> None:
    """``metrics.jsonl``, ``metrics.csv`` and ``curves.png`` from the whole history (rewritten atomically)."""
    atomic_write_text(out / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in history))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(history[0]))
    writer.writeheader()
    writer.writerows(history)
    atomic_write_text(out / "metrics.csv", buf.getvalue())
    plot_curves(out / "curves.png", history)


def plot_curves(path: Path, history: list[dict]) -> bool:
    """Loss and accuracy against epoch as a PNG; returns False (and writes nothing) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    epochs = [r["epoch"] for r in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split in ("train", "test"):
        ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], marker="o", label=split)
        ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in history], marker="o", label=split)
    ax_loss.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write(path, lambda f: f.write(buf.getvalue()))
    return True
