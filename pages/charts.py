"""The Evaluation page's plotly figures (rendering only: curves, counts and scores come from
``tracin_core.audit.rankers``). A module of its own so that the server's warm-up
(:func:`warm_up`, called by ``app.py``) builds the page's very figures before the first visit."""
from __future__ import annotations

from typing import Optional

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from tracin_core.audit import rankers as rk

HIST_BINS = 40


def ranking_label(name: str) -> str:
    return f"{name} (default)" if name == rk.DEFAULT_RANKER else name


def _line_width(name: str) -> float:
    return 3.5 if name == rk.DEFAULT_RANKER else 1.6


#: one clearly different colour per ranking (plotly's 24-colour qualitative palette), the
#: same ranking in the same colour on every chart; the default ranking drawn in black
PALETTE = ("#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#B68100", "#750D86", "#EB663B",
           "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE", "#862A16",
           "#A777F1", "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038", "#222A2A")


def _colour(name: str) -> str:
    if name == rk.DEFAULT_RANKER:
        return "#000000"
    others = [n for n in rk.RANKERS if n != rk.DEFAULT_RANKER]
    return PALETTE[others.index(name) % len(PALETTE)] if name in others else "#7F7F7F"


def _line(name: str) -> dict:
    return dict(width=_line_width(name), color=_colour(name))


LEGEND = dict(font=dict(size=12), itemclick="toggleothers", title=dict(text="click: show only this one"))


def _xy(points: np.ndarray) -> np.ndarray:
    """A curve's coordinates as float32 (plotly sends numpy arrays as base64: half the bytes
    of float64, and the curves look the same)."""
    return np.asarray(points, dtype=np.float32)


def curves_figure(curves: dict[str, rk.QueueCurves], truth: np.ndarray) -> go.Figure:
    """The ROC curves (left) and the share of mislabels found against the share of the data
    reviewed (right), one figure with one legend: a ranking keeps its colour on both, and a
    click on its legend entry shows or hides it on both. (One plotly figure instead of two:
    each figure costs the browser a draw of its own.)"""
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.13, subplot_titles=(
        "ROC curve (mislabelled vs clean)", "Mislabels found vs data reviewed"))
    for name, c in curves.items():
        common_style = dict(mode="lines", line=_line(name), legendgroup=name)
        fig.add_trace(go.Scatter(x=_xy(c.roc[0]), y=_xy(c.roc[1]), name=f"{ranking_label(name)} · AUC {c.auc:.4f}",
                                 **common_style), row=1, col=1)
        fig.add_trace(go.Scatter(x=_xy(c.found[0]), y=_xy(c.found[1]), name=ranking_label(name), showlegend=False,
                                 **common_style), row=1, col=2)
    share = float(truth.mean())
    fig.add_trace(go.Scatter(x=[0, share, 1], y=[0, 1, 1], mode="lines", name="perfect queue",
                             line=dict(dash="dash", color="black")), row=1, col=2)
    for col in (1, 2):
        fig.add_trace(go.Scatter(x=[0, 1], y=[0, 1], mode="lines", name="random order", legendgroup="random",
                                 showlegend=col == 1, line=dict(dash="dot", color="gray")), row=1, col=col)
    fig.update_xaxes(title_text="false positive rate", row=1, col=1)
    fig.update_yaxes(title_text="true positive rate", row=1, col=1)
    fig.update_xaxes(title_text="share of the data reviewed", tickformat=".0%", row=1, col=2)
    fig.update_yaxes(title_text="share of the mislabels found", tickformat=".0%", row=1, col=2)
    fig.update_layout(height=520, legend=LEGEND, margin=dict(l=10, r=10, t=50, b=10))
    return fig


def precision_figure(precisions: dict[str, float], k: int) -> go.Figure:
    names = sorted(precisions, key=lambda n: -precisions[n])
    fig = go.Figure(go.Bar(x=[precisions[n] for n in names], y=[ranking_label(n) for n in names], orientation="h",
                           text=[f"{precisions[n]:.1%}" for n in names], textposition="auto"))
    fig.update_layout(title=f"Precision in the top {k:,}", xaxis_title="share of mislabelled items",
                      xaxis_tickformat=".0%", xaxis_range=[0, 1], yaxis_autorange="reversed",
                      height=max(300, 28 * len(names) + 80), margin=dict(l=10, r=10, t=50, b=10))
    return fig


def histogram_figure(score: np.ndarray, truth: Optional[np.ndarray], name: str) -> go.Figure:
    # counted here and drawn as bars: the browser gets HIST_BINS numbers, not every score
    fig = go.Figure()
    lo, hi = float(np.min(score)), float(np.max(score))
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, HIST_BINS + 1)
    centres, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]

    def bars(values: np.ndarray, name: str, **style) -> go.Bar:
        return go.Bar(x=centres, y=np.histogram(values, bins=edges)[0], width=width, name=name, **style)

    if truth is None:
        fig.add_trace(bars(score, "all items"))
    else:
        fig.add_trace(bars(score[~truth], f"clean ({int((~truth).sum()):,})", opacity=0.65, marker_color="#4C78A8"))
        fig.add_trace(bars(score[truth], f"mislabelled ({int(truth.sum()):,})", opacity=0.75,
                           marker_color="#E45756"))
    fig.update_layout(barmode="overlay", title=f"Scores of {ranking_label(name)}",
                      xaxis_title="score (higher = more likely mislabelled)", yaxis_title="training items", height=380,
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def precision_histogram_figure(precisions: dict[str, float], k: int, score: np.ndarray, truth: np.ndarray,
                               name: str) -> go.Figure:
    """Precision in the top ``k`` of each ranking (left) and the histogram of ranking
    ``name``'s scores, mislabelled vs clean (right): :func:`precision_figure` and
    :func:`histogram_figure` as one figure (one draw in the browser instead of two)."""
    bar, hist = precision_figure(precisions, k), histogram_figure(score, truth, name)
    fig = make_subplots(rows=1, cols=2, horizontal_spacing=0.1,
                        subplot_titles=(bar.layout.title.text, hist.layout.title.text))
    for trace in bar.data:
        fig.add_trace(trace.update(showlegend=False), row=1, col=1)
    for trace in hist.data:
        fig.add_trace(trace, row=1, col=2)
    fig.update_xaxes(title_text=bar.layout.xaxis.title.text, tickformat=".0%", range=[0, 1], row=1, col=1)
    fig.update_yaxes(autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text=hist.layout.xaxis.title.text, row=1, col=2)
    fig.update_yaxes(title_text=hist.layout.yaxis.title.text, row=1, col=2)
    fig.update_layout(barmode="overlay", height=max(bar.layout.height, hist.layout.height),
                      legend=dict(x=1, y=1, xanchor="right", bgcolor="rgba(255,255,255,0.6)"),
                      margin=dict(l=10, r=10, t=50, b=10))
    return fig


def warm_up() -> None:
    """Build and serialise both of the page's figures once, on made-up scores: plotly loads
    each property's validator on its first use (about 0.2 s of the first figure, else paid
    by the first visitor)."""
    truth = np.arange(20) % 4 == 0
    score = np.linspace(0.0, 1.0, 20)
    curves = {name: rk.queue_curves(score, truth) for name in (rk.DEFAULT_RANKER, "loss_mean")}
    curves_figure(curves, truth).to_json()
    precision_histogram_figure({n: c.precision_at(5) for n, c in curves.items()}, 5, score, truth,
                               rk.DEFAULT_RANKER).to_json()
