"""The pictures: accuracy-matrix heatmaps and the curves of target accuracy and zero-shot retention (PNG,
byte-stable: same data, same bytes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .entries import Entry, _entry_name


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    # no mathtext: a name like `$\frac{x$` from a record is shown as written, never parsed as TeX
    plt.rcParams.update({"svg.hashsalt": "clipbench", "font.size": 9, "text.parse_math": False})
    return plt


def _save(fig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, metadata={"Software": None})  # no version stamp: same data, same bytes
    _plt().close(fig)


def mean_matrix(runs: List[Dict[str, Any]]) -> np.ndarray:
    return np.mean([np.array(r["raw"]["acc_matrix"], dtype=float) for r in runs], axis=0)


def heatmap(matrix: np.ndarray, title: str, path: Path) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(1.2 + 0.6 * matrix.shape[1], 1.0 + 0.45 * matrix.shape[0]))
    im = ax.imshow(matrix, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    for i in range(matrix.shape[0]):
        for j in range(matrix.shape[1]):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", color="w" if matrix[i, j] < 0.6 else "k", fontsize=7)
    ax.set_xlabel("test set of experience")
    ax.set_ylabel("after experience (0 = before training)")
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_yticks(range(matrix.shape[0]))
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    _save(fig, path)


def seen_accuracy(raw: Dict[str, Any]) -> List[float]:
    """Per row i >= 1: accuracy on the union of the test sets seen so far (row 0: on experience 0's)."""
    R, n = raw["acc_matrix"], raw["test_sizes"]
    out = [R[0][0]]
    for i in range(1, len(R)):
        out.append(sum(n[j] * R[i][j] for j in range(i)) / sum(n[:i]))
    return out


def retention_curve(raw: Dict[str, Any]) -> Optional[List[float]]:
    sets = [v for v in (raw.get("zeroshot") or {}).values() if v and v[0] > 0]
    if not sets:
        return None
    return [float(np.mean([v[i] / v[0] for v in sets])) for i in range(len(sets[0]))]


def curves(entries: Sequence[Entry], title: str, path: Path) -> None:
    plt = _plt()
    # tall enough for the legend of every row (one column up to 20 rows, then two)
    columns = 1 if len(entries) <= 20 else 2
    fig, (a, b) = plt.subplots(1, 2, figsize=(9 + 2 * (columns - 1), max(3.4, 0.16 * -(-len(entries) // columns) + 1.2)))
    colours = plt.get_cmap("tab20")(np.linspace(0, 1, max(len(entries), 2)))
    for k, e in enumerate(entries):
        style = dict(marker="os^D"[k % 4], ms=3, color=colours[k], linestyle=["-", "--", ":"][k % 3],
                     label=_entry_name(e, entries))
        a.plot(np.mean([seen_accuracy(r["raw"]) for r in e.runs], axis=0), **style)
        ret = [retention_curve(r["raw"]) for r in e.runs]
        if all(x is not None for x in ret):
            b.plot(np.mean(ret, axis=0), **style)
    a.set_title("target accuracy on classes seen so far", fontsize=9)
    b.set_title("zero-shot retention (after / before)", fontsize=9)
    for ax in (a, b):
        ax.set_xlabel("experience (0 = before training)")
        ax.grid(alpha=0.3)
    # the legend sits right of the retention panel; without held-out sets that panel is empty: a's lines name it
    handles, labels = (b if b.lines else a).get_legend_handles_labels()
    b.legend(handles, labels, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), ncol=columns)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    _save(fig, path)
