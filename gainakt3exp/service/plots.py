"""The run's trajectory figure (plots/trajectory.png): validation AUC and the interpretability trajectory by epoch."""
from __future__ import annotations

import io


def trajectory_png(trajectory: list[dict]) -> bytes:
    """Correlations and loss shares per epoch, as a PNG (the UI's charts hold the same numbers)."""
    if not trajectory:
        return b""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [e["epoch"] for e in trajectory]

    def series(key, sub=None):
        values = [(e.get(sub) or {}).get(key) if sub else e.get(key) for e in trajectory]
        return [float("nan") if v is None else v for v in values]

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for key in ("mastery_correlation", "gain_correlation", "target_mastery_correlation",
                "global_alignment_mastery_corr", "peak_mastery_corr"):
        left.plot(epochs, series(key), marker="o", label=key)
    left.set(title="Interpretability trajectory", xlabel="epoch", ylabel="Pearson r")
    left.legend(fontsize=7)
    for key in ("main", "constraint_total", "alignment", "lag", "retention"):
        right.plot(epochs, series(key, "loss_shares"), marker="o", label=key)
    right.set(title="Loss shares", xlabel="epoch", ylabel="share of BCE + constraints")
    right.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return buffer.getvalue()
