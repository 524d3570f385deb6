"""The progress plot: validation accuracy per iteration, kept ones highlighted, the running best as a step line."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from infra.records import IterationRecord  # noqa: E402


def progress_png(rows: list[IterationRecord], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    scored = [r for r in rows if r.val_accuracy is not None]
    kept = [r for r in scored if r.kept]
    other = [r for r in scored if not r.kept]
    ax.scatter([r.iteration for r in other], [r.val_accuracy for r in other], c="0.6", s=18, label="discarded")
    ax.scatter(
        [r.iteration for r in kept],
        [r.val_accuracy for r in kept],
        c="tab:green",
        s=40,
        zorder=3,
        label="kept (mean of its runs)",
    )
    failed = [r.iteration for r in rows if r.val_accuracy is None and r.finished]
    if failed and scored:
        low = min(r.val_accuracy for r in scored)
        ax.scatter(failed, [low] * len(failed), marker="x", c="tab:red", s=24, label="crashed / timeout / invalid")
    if kept:
        xs, ys, best = [], [], None
        last = max(r.iteration for r in rows)
        for r in kept:
            if best is not None:
                xs.append(r.iteration)
                ys.append(best)
            best = r.val_accuracy
            xs.append(r.iteration)
            ys.append(best)
        xs.append(last)
        ys.append(best)
        ax.plot(xs, ys, c="tab:green", lw=1.5, label="incumbent")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("iteration")
    ax.set_ylabel("validation accuracy")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
