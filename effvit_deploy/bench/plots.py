"""The report's plots (matplotlib, Agg, PNG written atomically): latency and peak memory against
tokens per image on log-log axes with each variant's fitted scaling exponent; speed-up over
exact attention with the attention-free bound's ceiling; accuracy against latency with the
Pareto front. One panel per (backend, precision, batch); one colour per attention everywhere.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter  # noqa: E402

from ..atomic import atomic_path  # noqa: E402
from ..attention import ATTENTIONS  # noqa: E402
from .analysis import EXACT, display_order, fit_exponent, pareto_front  # noqa: E402
from .bound import BOUND  # noqa: E402


def colour(attention: str) -> str:
    """The same colour for one attention in every plot: the mechanisms in display order take
    matplotlib's C0, C1, ... (exact blue, linformer orange, ...), the bound black."""
    if attention == BOUND:
        return "k"
    known = display_order(ATTENTIONS)
    return f"C{known.index(attention) if attention in known else 5 + sum(map(ord, attention)) % 4}"


def scaling_plot(series: dict, field: str, ylabel: str, title: str, path: Path, scale: float = 1.0) -> None:
    """`field` (times `scale`) against tokens per image, log-log, one line per attention labelled
    with its fitted exponent, one panel per (backend, precision, batch) of `series`; PNG at `path`."""
    keys = sorted(series)
    fig, axes = _panels(len(keys))
    for ax, key in zip(axes, keys):
        for att in display_order(series[key]):
            pts = [p for p in series[key][att] if p.get(field)]
            if not pts:
                continue
            slope = fit_exponent(pts, field)
            label = f"{att} (slope {slope:.2f})" if slope is not None else att
            ax.plot([p["tokens"] for p in pts], [p[field] * scale for p in pts], marker="o", label=label, color=colour(att))
        _style(ax, key, "tokens per image", ylabel)
    fig.suptitle(title)
    _save(fig, path)


def _panels(count: int):
    """A figure with `count` side-by-side panels (one per backend/precision/batch)."""
    fig, axes = plt.subplots(1, count, figsize=(5.2 * count, 4.2), squeeze=False)
    return fig, axes[0]


def _style(ax, key: tuple, xlabel: str, ylabel: str, log_y: bool = True, title_suffix: str = "") -> None:
    """Log-scaled axes, labels, the panel's (backend, precision, batch) title, grid and legend."""
    ax.set_xscale("log")
    _plain_log_ticks(ax.xaxis)
    if log_y:
        ax.set_yscale("log")
        _plain_log_ticks(ax.yaxis)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(f"{key[0]} {key[1]} batch {key[2]}{title_suffix}")
    ax.grid(True, which="both", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _plain_log_ticks(axis) -> None:
    """Log-axis labels at 1, 2 and 5 per decade, plain numbers, unlabelled minor ticks: labels
    that never collide (matplotlib's default labels minor ticks on short ranges, and they did)."""
    axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())


def _save(fig, path: Path) -> None:
    """Lay out and write the PNG atomically."""
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def speedup_plot(series: dict, path: Path, targets: dict[int, float]) -> Optional[bool]:
    """Draw the plot; None when there is nothing to draw, else whether the bound line is in it."""
    keys = [k for k in sorted(series) if EXACT in series[k] and len(series[k]) > 1]
    if not keys:
        return None
    fig, axes = _panels(len(keys))
    for ax, key in zip(axes, keys):
        exact = {p["tokens"]: p["latency_median_ms"] for p in series[key][EXACT]}
        for att in display_order(series[key]):
            if att == EXACT:
                continue
            pts = [(p["tokens"], exact[p["tokens"]] / p["latency_median_ms"]) for p in series[key][att] if p["tokens"] in exact]
            if pts:
                style = ({"color": "k", "linestyle": "--", "label": "largest possible (attention-free bound)"} if att == BOUND
                         else {"label": att, "color": colour(att)})
                ax.plot(*zip(*pts), marker="o", **style)
        patch = series[key][EXACT][0].get("patch") or 16
        for res, target in targets.items():
            ax.plot([1 + (res // patch) ** 2], [target], marker="*", color="k", markersize=11, linestyle="none")
        ax.axhline(1.0, color="grey", linewidth=1)
        _style(ax, key, "tokens per image", "speed-up over exact (x)", title_suffix="  (stars: your targets)" if targets else "")
    _save(fig, path)
    return any(BOUND in series[k] for k in keys)


def tradeoff_plot(points: dict, path: Path) -> None:
    """One colour per attention, one marker per resolution, 95% intervals as error bars; a
    legend instead of point labels (which overlapped into unreadable clusters)."""
    keys = sorted(points, key=lambda k: k[2])
    fig, axes = _panels(len(keys))
    markers = "osD^vP*X"
    for ax, key in zip(axes, keys):
        pts = points[key]
        resolutions = sorted({p["resolution"] for p in pts})
        colours = {att: colour(att) for att in display_order({p["attention"] for p in pts})}
        for p in pts:
            lo, hi = p.get("top1_ci95") or (p["top1"], p["top1"])
            ax.errorbar(p["latency_median_ms"], 100 * p["top1"], yerr=[[100 * (p["top1"] - lo)], [100 * (hi - p["top1"])]],
                        fmt=markers[resolutions.index(p["resolution"]) % len(markers)], color=colours[p["attention"]],
                        capsize=2, zorder=3)
        lat = [p["latency_median_ms"] for p in pts]
        front = pareto_front(lat, [p["top1"] for p in pts])
        ax.step([lat[i] for i in front], [100 * pts[i]["top1"] for i in front], where="post", color="grey",
                linestyle=":", zorder=2)
        ax.scatter([lat[i] for i in front], [100 * pts[i]["top1"] for i in front], s=180, facecolors="none",
                   edgecolors="grey", linewidths=1.2, zorder=4)
        handles = [plt.Line2D([], [], color=c, marker="o", linestyle="none", label=a) for a, c in colours.items()]
        handles += [plt.Line2D([], [], color="k", marker=markers[i % len(markers)], linestyle="none", label=f"{r} px")
                    for i, r in enumerate(resolutions)]
        handles.append(plt.Line2D([], [], color="grey", linestyle=":", marker="o", markerfacecolor="none", markersize=11,
                                  label="Pareto front (ringed)"))
        _style(ax, key, "median latency (ms), log scale", "top-1 (%), 95% interval", log_y=False)
        ax.legend(handles=handles, fontsize=7, loc="best")
    _save(fig, path)
