"""wer.png: the figure of one evaluation, WER against SNR with a line per rate pair (bars for a single column).

Drawn with matplotlib's object API (no pyplot: no global state; PNGs are drawn by Agg), imported only here.
"""

from __future__ import annotations

import math
import textwrap
from pathlib import Path

import numpy as np

from .evaluate import CLEAN, Evaluation, rate_label, snr_label


def _short(name: str) -> str:
    """A model or dataset path shown by its last part; names as they are."""
    return Path(name).name if ("/" in name or "\\" in name) and Path(name).exists() else name


def plot_wer(evaluation: Evaluation, path) -> None:
    """WER % against SNR, a line per rate pair (clean at the right end); bars per rate pair for a single column."""
    from matplotlib.figure import Figure  # no pyplot: no global state, and PNGs are drawn by Agg

    j = evaluation.job
    numeric = sorted(s for s in j.snrs if s != CLEAN)
    columns = numeric + ([CLEAN] if CLEAN in j.snrs else [])
    legend_title = {"av": "rates (audio, video)", "a": "audio rate", "v": "video rate"}[j.mode]
    source = evaluation.noise or {}
    noise = {"babble": "babble noise", "file": f"noise from {Path(source.get('path', '')).name}"}
    noise = noise.get(source.get("source"), "")  # "" when every column is clean

    def percent(rate, snr) -> float:
        wer = evaluation.cell(rate, snr).errors.wer
        return 100 * wer if math.isfinite(wer) else math.nan

    fig = Figure(figsize=(8, 5), dpi=150)
    ax = fig.subplots()
    if len(columns) == 1:
        snr = columns[0]
        labels = [rate_label(r) for r in evaluation.rates]
        values = [percent(r, snr) for r in evaluation.rates]
        bars = ax.bar(labels, values, color=[f"C{k % 10}" for k in range(len(labels))], width=0.6)
        ax.bar_label(bars, labels=[f"{v:.1f}" if math.isfinite(v) else "-" for v in values], padding=3)
        spare = max(0.0, (4 - len(labels)) / 2)  # one or two bars stay bar-shaped
        ax.set_xlim(-0.5 - spare, len(labels) - 0.5 + spare)
        ax.set_xlabel(legend_title.capitalize())
        condition = "clean audio" if snr == CLEAN else f"{noise} at {snr_label(snr)} SNR"
        shown = values
    else:
        gap = min(np.diff(numeric)) if len(numeric) > 1 else 5
        x_clean = (numeric[-1] + gap) if numeric else 0
        xs = [x_clean if s == CLEAN else s for s in columns]
        shown = []
        for k, rate in enumerate(evaluation.rates):
            ys = [percent(rate, s) for s in columns]
            shown += ys
            # distinct markers, later ones smaller and on top: rate pairs with equal WER stay visible
            style = dict(color=f"C{k % 10}", marker="osD^vP*X"[k % 8], markersize=max(3.5, 9 - 1.5 * k),
                         zorder=2 + k, clip_on=False)
            ax.plot(xs[: len(numeric)], ys[: len(numeric)], label=rate_label(rate), linewidth=2, **style)
            if CLEAN in columns:  # clean is not a point on the dB scale: a dotted link, not a line
                ax.plot(xs[-2:] if numeric else xs[-1:], ys[-2:] if numeric else ys[-1:], linestyle=":",
                        linewidth=1.2, markevery=[-1], **style)
        ax.set_xticks(xs, [CLEAN if s == CLEAN else f"{s:g}".replace("-", "\u2212") for s in columns])
        ax.set_xlabel(f"SNR (dB){f', {noise}' if noise else ''}")
        ax.legend(title=legend_title, frameon=False)
        condition = "clean = no noise added" if CLEAN in columns else noise
    dataset = _short(j.dataset) + (f" {evaluation.split}" if evaluation.split else "")
    modality = {"av": "audio-visual", "a": "audio only", "v": "video only"}[j.mode]
    title = f"Word error rate of {_short(j.model)} on {dataset}, {modality}"
    ax.set_title("\n".join(textwrap.wrap(title, 70)), fontsize=12, pad=18)
    ax.text(0.5, 1.0, f"{evaluation.evaluated} utterances; {condition}", transform=ax.transAxes, ha="center",
            va="bottom", fontsize=9, color="0.4")
    ax.set_ylabel("WER (%)")
    finite = [v for v in shown if math.isfinite(v)]
    ax.set_ylim(0, max([1.0, *finite]) * 1.12)  # from 0, with room for the labels; 0 to 1 when all are 0
    ax.grid(axis="y", alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    fig.savefig(path, format="png")


__all__ = ["plot_wer"]
