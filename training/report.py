"""The evaluation table as text and as a chart."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # the backend must be chosen first

METRIC_ORDER = ("recall@10", "ndcg@10", "recall@50", "ndcg@50")


def metric_names(table: dict[str, dict[str, float]]) -> list[str]:
    present = {k for row in table.values() for k in row}
    return [m for m in METRIC_ORDER if m in present] + sorted(
        k for k in present if "@" in k and k not in METRIC_ORDER
    )


def format_table(table: dict[str, dict[str, float]], title: str = "") -> str:
    """A Markdown table: one row a method, one column a metric."""
    metrics = metric_names(table)
    lines = [f"{title}\n" if title else ""]
    lines.append("| method | " + " | ".join(metrics) + " |")
    lines.append("| --- |" + " ---: |" * len(metrics))
    for method, row in table.items():
        lines.append(
            f"| {method} | " + " | ".join(f"{row.get(m, float('nan')):.4f}" for m in metrics) + " |"
        )
    return "\n".join(lines).strip("\n")


def chart_png(table: dict[str, dict[str, float]], title: str) -> bytes:
    """Grouped bars: methods side by side for each metric."""
    metrics = metric_names(table)
    methods = list(table)
    fig, ax = plt.subplots(figsize=(7, 3.6), dpi=110)
    width = 0.8 / max(len(methods), 1)
    for i, method in enumerate(methods):
        xs = [j + i * width for j in range(len(metrics))]
        bars = ax.bar(xs, [table[method].get(m, 0.0) for m in metrics], width, label=method)
        ax.bar_label(bars, fmt="%.3f", fontsize=7, padding=1)
    ax.set_xticks([j + width * (len(methods) - 1) / 2 for j in range(len(metrics))], metrics)
    ax.set_ylabel("score (held-out users)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
