"""`latprune report`: Markdown + standalone HTML (images embedded) for a search output
directory: predicted vs measured latency, speedup table, Pareto front, predictor accuracy."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd

from latprune.errors import LatpruneError

BAND = 0.10


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _verified(summary: dict, cands: pd.DataFrame, metric: str) -> pd.DataFrame:
    """Parent and finalists with predicted and measured values of `metric`."""
    fin = cands[cands.finalist].copy()
    rows = [{"name": "parent", "describe": "parent", "predicted": summary["parent"]["predicted"][metric],
             "measured": summary["parent"]["measured"][metric], "perplexity": None}]
    for _, r in fin.iterrows():
        rows.append({"name": r.arch_id, "describe": r["describe"], "predicted": r[f"pred_{metric}"],
                     "measured": r[f"measured_{metric}"], "perplexity": r.perplexity})
    return pd.DataFrame(rows)


def plot_predicted_vs_measured(summary: dict, cands: pd.DataFrame, path: Path) -> None:
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.2))
    for ax, metric in zip(axes, ("decode_ms", "prefill_ms")):
        v = _verified(summary, cands, metric)
        hi = 1.15 * max(v.measured.max(), v.predicted.max())
        xs = [0, hi]
        ax.fill_between(xs, [0, hi * (1 - BAND)], [0, hi * (1 + BAND)], color="tab:green", alpha=0.15,
                        label="±10%")
        ax.plot(xs, xs, color="tab:green", lw=1)
        ax.scatter(v.measured[1:], v.predicted[1:], label="finalists", zorder=3)
        ax.scatter(v.measured[:1], v.predicted[:1], marker="s", color="black", label="parent", zorder=3)
        ax.set(xlim=(0, hi), ylim=(0, hi), xlabel=f"measured {metric}", ylabel=f"predicted {metric}",
               title=f"{metric} on {summary['device']}")
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pareto(summary: dict, cands: pd.DataFrame, path: Path) -> None:
    from latprune.search.pareto import pareto_front

    plt = _plt()
    metric = summary["metric"]
    col = f"pred_{metric}"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.scatter(cands[col], cands.perplexity, s=14, alpha=0.5, label="evaluated (predicted latency)")
    front = pareto_front(cands, col)
    ax.step(front[col], front.perplexity, where="post", color="tab:orange", label="Pareto front")
    ax.axvline(summary["budget_ms"], color="tab:red", ls="--", label=f"budget {summary['budget_ms']:g} ms")
    win = summary["winner"]
    ax.scatter([win["predicted"][metric]], [win["calibration_perplexity"]], marker="*", s=250, color="tab:red",
               zorder=4, label="winner")
    ax.set(xlabel=f"predicted {metric}", ylabel="calibration perplexity (log)", yscale="log",
           title="perplexity vs predicted latency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def speedup_table(summary: dict, cands: pd.DataFrame) -> str:
    metric = summary["metric"]
    v = _verified(summary, cands, metric)
    parent = v.iloc[0]
    lines = [f"| architecture | calibration ppl | predicted {metric} | measured {metric} | predicted speedup | "
             "measured speedup | within ±10% |", "|---|---|---|---|---|---|---|"]
    for _, r in v.iterrows():
        ps, ms = parent.predicted / r.predicted, parent.measured / r.measured
        ok = abs(r.predicted / r.measured - 1) <= BAND
        ppl = "" if r.perplexity is None or pd.isna(r.perplexity) else f"{r.perplexity:.2f}"
        win = " (winner)" if r["name"] == summary["winner"]["architecture_id"] else ""
        lines.append(f"| {r['describe']}{win} | {ppl} | {r.predicted:.2f} ms | {r.measured:.2f} ms | {ps:.2f}x | "
                     f"{ms:.2f}x | {'yes' if ok else 'no'} |")
    return "\n".join(lines)


def quality_table(summary: dict) -> str:
    """Markdown rows: the parent, the winner before and after recovery, and as saved."""
    w, p = summary["winner"], summary["parent"]
    rows = [("parent", p.get("quality"))]
    if "quality_before_recovery" in w:
        rows.append(("winner, pruned (zero-shot)", w["quality_before_recovery"]))
        steps = [f"{summary['selection']['steps_each']} as a finalist"] if summary.get("selection") else []
        steps += [f"{summary['recovery']['steps']} as the winner"] if summary.get("recovery") else []
        if steps:
            rows.append((f"winner, recovered (distillation steps: {' + '.join(steps)})", w["quality"]))
    lines = ["| model | held-out ppl | second-text ppl | KL to parent (nats/token) | top-1 agreement |",
             "|---|---|---|---|---|"]
    for name, q in rows:
        if q:
            lines.append(f"| {name} | {q['heldout_perplexity']:.2f} | {q['second_text_perplexity']:.2f} | "
                         f"{q['kl_to_parent']:.3f} | {q['top1_agreement']:.1%} |")
    if "saved" in w:
        lines.append(f"| winner as saved ({w['saved']['dtype']}) | {w['saved']['heldout_perplexity']:.2f} | | | |")
    return "\n".join(lines)


def _budget_use(summary: dict) -> list[str]:
    """How much of the budget the winner spends, and the device timings that decided it."""
    use = summary.get("budget_use")
    if not use:
        return [f"{summary['device_measurements']} on-device timings."]
    low, high = use["predicted_interval_ms"]
    refined = summary.get("refinement", {})
    return ["", f"Budget use: measured **{use['measured_over_budget']:.1%}** of the budget (predicted median "
                f"{low:.2f} ms, upper bound {high:.2f} ms; chosen from the `{use['chosen_from']}` round). Device "
                f"timings: **{use['device_measurements']}**, {use.get('in_refinement', 0)} in refinement (candidates "
                f"near the budget, the predictor refitted {refined.get('refits', 0)} times) and "
                f"{use.get('in_verification', use['device_measurements'])} in verification (3 paired rounds per "
                "finalist)."]


def _measurement_note(summary: dict) -> list[str]:
    """How measured figures were taken, and how far the machine had drifted (summary v2)."""
    p, w, m = summary["parent"], summary["winner"], summary["metric"]
    if "drift" not in p or m not in p["drift"]:
        return []
    return ["", f"Measured figures are drift-corrected: each finalist is timed in bursts interleaved with the parent, "
                f"and its latency is its median ratio to the parent x the parent's {m} when the profile "
                f"behind the predictor was calibrated ({p['measured'][m]:.2f} ms). During verification the parent ran "
                f"{p['measured_raw'][m]:.2f} ms ({p['drift'][m] - 1:+.0%}), and the winner "
                f"{w['measured_raw'][m]:.2f} ms, raw."]


def build_report(run_dir: str | Path, predictor_dir: str | Path | None = None,
                 out: str | Path | None = None) -> tuple[Path, Path]:
    """Write report.md, report.html and PNGs into `run_dir` (or next to `out`)."""
    run_dir = Path(run_dir)
    for name in ("summary.json", "candidates.parquet"):
        if not (run_dir / name).is_file():
            raise LatpruneError(f"'{run_dir}' is not a search output directory (no {name}); pass the --out of "
                                "'latprune search' or 'latprune run'")
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
        cands = pd.read_parquet(run_dir / "candidates.parquet")
    except (ValueError, OSError) as exc:
        raise LatpruneError(f"'{run_dir}' holds a damaged search output ({exc}); search again") from None
    md_path = Path(out) if out else run_dir / "report.md"
    folder = md_path.parent
    folder.mkdir(parents=True, exist_ok=True)
    images = {"predicted_vs_measured.png": plot_predicted_vs_measured, "pareto.png": plot_pareto}
    for name, fn in images.items():
        fn(summary, cands, folder / name)
    m, w, p = summary["metric"], summary["winner"], summary["parent"]
    sp = summary["speedup"][m]
    parts = [
        f"# latprune report: {summary['device']}, {m} budget {summary['budget_ms']:g} ms",
        "",
        f"Winner **{w['describe']}**: {w['parameters']:,} of {p['parameters']:,} parameters "
        f"({w['parameters'] / p['parameters']:.0%}). Measured {m} **{w['measured'][m]:.2f} ms**, "
        f"{w['measured'][m] / summary['budget_ms']:.0%} of the budget (predicted {w['predicted'][m]:.2f} ms"
        + (f", upper bound {w['predicted_upper'][m]:.2f} ms" if m in w.get("predicted_upper", {}) else "")
        + f"; parent {p['measured'][m]:.2f} ms); speedup measured **{sp['measured']:.2f}x**, predicted "
        f"{sp['predicted']:.2f}x (predictions are labelled as such everywhere below). Held-out perplexity "
        f"{w['heldout_perplexity']:.2f} (parent {p['heldout_perplexity']:.2f}), over "
        f"{summary['eval']['heldout_windows']} windows of {summary['eval']['window']} tokens.",
        "",
        f"Search: strategy `{summary['strategy']}`"
        + (" (chosen by `auto`)" if summary.get("strategy_requested") == "auto" else "")
        + (f" ({summary['optimizer']})" if summary.get("optimizer") else "")
        + f", {summary['evaluations']} perplexity evaluations, workload {summary['workload']}.",
        *_budget_use(summary),
        "",
        *(["## Quality", "", "Held-out: every 5th paragraph of the text, never trained on; second text: standard-"
            "library docstrings, never trained or calibrated on.", "", quality_table(summary), ""]
          if "quality" in p else []),
        "## Speedup: parent vs finalists",
        "",
        speedup_table(summary, cands),
        *_measurement_note(summary),
        "",
        "## Predicted vs measured latency",
        "",
        "![predicted vs measured](predicted_vs_measured.png)",
        "",
        "## Perplexity vs latency",
        "",
        "![pareto](pareto.png)",
    ]
    if predictor_dir and (Path(predictor_dir) / "metadata.json").is_file():
        meta = json.loads((Path(predictor_dir) / "metadata.json").read_text())
        from latprune.predictors.accuracy import format_band_table, format_table

        rows = meta["rows"]
        parts += ["", f"## Predictor accuracy ({meta['kind']}, {rows['used']} training rows; "
                      f"{rows['failed']} failed, {rows['drift_flagged']} drift-flagged excluded)", "",
                  format_table(meta["accuracy"])]
        if meta.get("accuracy_by_band"):
            parts += ["", "By latency relative to the parent's (small sub-networks time noisily):", "",
                      format_band_table(meta["accuracy_by_band"], ceiling=meta.get("repeatability_by_band"))]
    markdown = "\n".join(parts) + "\n"
    md_path.write_text(markdown)
    html_path = md_path.with_suffix(".html")
    html_path.write_text(markdown_to_html(markdown, folder))
    return md_path, html_path


def markdown_to_html(markdown: str, folder: Path) -> str:
    """A small converter for what our reports use: headings, paragraphs, tables, images
    (embedded as base64 so the page stands alone)."""
    out, table = [], []

    def flush_table() -> None:
        if not table:
            return
        rows = [r.strip("|").split("|") for r in table if not set(r.replace("|", "").strip()) <= {"-"}]
        head, *body = rows
        out.append("<table><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr>"
                   + "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in r) + "</tr>" for r in body)
                   + "</table>")
        table.clear()

    for line in markdown.splitlines():
        if line.startswith("|"):
            table.append(line)
            continue
        flush_table()
        if line.startswith("#"):
            level = len(line) - len(line.lstrip("#"))
            out.append(f"<h{level}>{_inline(line.lstrip('#').strip())}</h{level}>")
        elif line.startswith("!["):
            src = line[line.index("(") + 1 : line.rindex(")")]
            data = base64.b64encode((folder / src).read_bytes()).decode()
            out.append(f'<p><img alt="{html.escape(src)}" src="data:image/png;base64,{data}"></p>')
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    flush_table()
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:4px 8px}"
             "th{background:#f3f3f3}img{max-width:100%}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>latprune report</title>"
            f"<style>{style}</style></head><body>{''.join(out)}</body></html>")


def _inline(text: str) -> str:
    import re

    text = html.escape(text.strip())
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)
