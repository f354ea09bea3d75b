"""The run's figures, drawn with matplotlib's Agg backend into PNG bytes (pure: arrays in, bytes out):
trajectory.png (the interpretability trajectory by epoch, gakt-launch) and the mastery pictures of gakt-eval:
mastery_students.png (every practised concept's mastery along a few students), mastery_calibration.png (a
reliability diagram of m_t[c_{t+1}] and of the predicted P(correct)) and mastery_truth.png (learned against true
mastery, synthetic data)."""
from __future__ import annotations

import io

import numpy as np

MAX_CONCEPT_ROWS = 16  # concepts drawn per student in mastery_students_png


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    _pyplot().close(fig)
    return buffer.getvalue()


def trajectory_png(trajectory: list[dict]) -> bytes:
    """Correlations and loss shares per epoch, as a PNG (the UI's charts hold the same numbers)."""
    if not trajectory:
        return b""
    plt = _pyplot()
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
    return _png(fig)


def mastery_students_png(students: list[dict], title: str = "Mastery per concept") -> bytes:
    """One heatmap panel per student: x = step t, y = concept k, colour = m_t[k] on 0..1 (one colour bar), with the
    student's answer at each step on the row of the concept answered (filled white circle: correct; red x: wrong).

    Each student is {"label": str, "concepts": (n,) int, the concept c_t answered at step t; "responses": (n,) 0/1;
    "mastery": (n, C) float, every concept's mastery after step t}. Only concepts the student practised are drawn:
    with more than MAX_CONCEPT_ROWS, the most practised ones (ties: the earlier first practised), listed top to
    bottom in order of first practice; answers of concepts left out are not marked. Raises ValueError naming the
    student when the arrays do not fit together.
    """
    if not students:
        raise ValueError("mastery_students_png: no students to draw; fix: pass at least one student")
    panels = [_student_panel(s) for s in students]
    plt = _pyplot()
    from matplotlib.ticker import MaxNLocator

    heights = [max(len(shown), 1) * 0.28 + 0.9 for _, shown, _ in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(10, sum(heights) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": heights}, layout="constrained")
    image = legend = None
    for ax, (student, shown, practised) in zip(axes[:, 0], panels):
        c, r, m = student["concepts"], student["responses"], student["mastery"]
        n = c.shape[0]
        caption = (f"{student['label']}: {n} step{'s' * (n != 1)}, "
                   f"{len(shown)} of {practised} practised concept{'s' * (practised != 1)}")
        ax.set_title(caption, fontsize=9, loc="left")
        if n == 0:
            ax.text(0.5, 0.5, "no steps", ha="center", va="center", transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        image = ax.imshow(m[:, shown].T, aspect="auto", interpolation="nearest", cmap="viridis", vmin=0.0, vmax=1.0,
                          extent=(-0.5, n - 0.5, len(shown) - 0.5, -0.5))
        row_of = {k: i for i, k in enumerate(shown)}
        t = np.flatnonzero(np.isin(c, shown))
        y = np.array([row_of[int(k)] for k in c[t]])
        right = r[t] > 0
        ax.scatter(t[right], y[right], s=22, marker="o", facecolors="white", edgecolors="black", linewidths=0.6,
                   label="correct")
        ax.scatter(t[~right], y[~right], s=22, marker="x", color="red", linewidths=1.2, label="wrong")
        ax.set_yticks(range(len(shown)), [str(k) for k in shown], fontsize=7)
        ax.set_ylabel("concept", fontsize=8)
        ax.set_xlim(-0.5, n - 0.5)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        legend = legend or ax.get_legend_handles_labels()
    axes[-1, 0].set_xlabel("step")
    if image is not None:
        fig.colorbar(image, ax=axes[:, 0].tolist(), label="mastery", fraction=0.025, pad=0.01)
        fig.legend(*legend, loc="outside upper right", ncol=2, fontsize=7, frameon=False)
    fig.suptitle(title, fontsize=11)
    return _png(fig)


def _student_panel(student: dict) -> tuple[dict, list[int], int]:
    """The student's arrays as numpy, checked; the concepts to draw (see mastery_students_png) and how many it
    practised."""
    label = student.get("label", "?")
    c = np.asarray(student["concepts"]).astype(np.int64).ravel()
    r = np.asarray(student["responses"]).astype(np.int64).ravel()
    m = np.asarray(student["mastery"], dtype=np.float64)
    if m.ndim != 2 or m.shape[0] != c.shape[0] or r.shape != c.shape:
        raise ValueError(f"student {label!r}: concepts {c.shape}, responses {r.shape} and mastery {m.shape} do not "
                         "fit; fix: concepts and responses of length n and mastery of shape (n, C)")
    if c.size and (c.min() < 0 or c.max() >= m.shape[1]):
        raise ValueError(f"student {label!r}: concept ids {c.min()}..{c.max()} outside 0..{m.shape[1] - 1}, the "
                         "mastery's columns; fix: pass mastery over every concept of the data set")
    ids, first, counts = np.unique(c, return_index=True, return_counts=True)
    keep = np.lexsort((first, -counts))[:MAX_CONCEPT_ROWS]  # most practised, ties: first practised earlier
    keep = keep[np.argsort(first[keep])]  # drawn in order of first practice
    return {"label": label, "concepts": c, "responses": r, "mastery": m}, [int(k) for k in ids[keep]], len(ids)


def mastery_calibration_png(mastery, predicted, y) -> bytes:
    """A reliability diagram over the same steps: the mastery of the concept about to be answered, m_t[c_{t+1}],
    and the model's predicted P(correct), each cut into deciles (metrics.stats.reliability_bins: equal-count bins)
    and drawn as the bin's mean value against the observed rate of correct answers, with the diagonal (a calibrated
    probability lies on it) and each series' AUC against y in the legend. Marker area grows with the bin's count;
    many equal values (mastery clamped at 1) leave some bins empty, and the legend says how many are drawn."""
    from gainakt3exp.metrics.stats import reliability_bins, roc_auc

    y = np.asarray(y, dtype=np.float64).ravel()
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.2))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="calibrated")
    for values, name, colour in ((mastery, "mastery m_t[c_{t+1}]", "tab:blue"),
                                 (predicted, "predicted P(correct)", "tab:orange")):
        values = np.asarray(values, dtype=np.float64).ravel()
        bins = reliability_bins(values, y, bins=10)
        full = bins["count"] > 0
        size = 12 + 60 * bins["count"][full] / max(int(bins["count"].max()), 1)
        merged = f", {int(full.sum())} non-empty bins (ties)" if not full.all() else ""
        ax.plot(bins["mean_p"][full], bins["rate"][full], color=colour, linewidth=1,
                label=f"{name}, AUC {roc_auc(y, values):.3f}{merged}")
        ax.scatter(bins["mean_p"][full], bins["rate"][full], s=size, color=colour, zorder=3)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="mean value in the decile", ylabel="observed rate of correct answers",
           title=f"Calibration by decile ({y.size} steps)")
    ax.set_aspect("equal")
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _png(fig)


def mastery_truth_png(label: str, learned, truth, y) -> bytes:
    """One student's learned mastery of the concept about to be answered, m_t[c_{t+1}], beside the true one
    p*_t[c_{t+1}] (gaps where the truth is NaN), over the steps t, with the answer r_{t+1} to that concept as a
    marker at the top (correct, filled) or the bottom (wrong, x)."""
    learned = np.asarray(learned, dtype=np.float64).ravel()
    truth = np.asarray(truth, dtype=np.float64).ravel()
    y = np.asarray(y).ravel()
    t = np.arange(learned.size)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.6))
    ax.plot(t, learned, color="tab:blue", linewidth=1.3, label="learned m_t[c_{t+1}]")
    ax.plot(t, truth, color="black", linewidth=1.3, linestyle="--", label="true p*_t[c_{t+1}]")
    right = y > 0.5
    ax.scatter(t[right], np.full(int(right.sum()), 1.04), s=14, marker="o", color="tab:green",
               label="answer correct")
    ax.scatter(t[~right], np.full(int((~right).sum()), -0.04), s=14, marker="x", color="tab:red",
               label="answer wrong")
    ax.set(ylim=(-0.09, 1.09), xlabel="step t", ylabel="mastery of the concept answered next",
           title=f"Learned against true mastery: {label}")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    fig.tight_layout()
    return _png(fig)
