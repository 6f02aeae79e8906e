"""The report: Markdown with plots, and a standalone HTML page with the images embedded."""

import json

import pandas as pd

from latprune.search.report import build_report


def fake_run(folder):
    folder.mkdir()
    cands = pd.DataFrame({
        "arch_id": ["a", "b", "c", "d"], "describe": ["A", "B", "C", "D"], "perplexity": [30.0, 40.0, 35.0, 90.0],
        "pred_decode_ms": [9.0, 7.0, 8.5, 5.0], "pred_prefill_ms": [60.0, 50.0, 58.0, 30.0],
        "pred_e2e_ms": [350.0, 270.0, 330.0, 190.0], "finalist": [True, True, True, False],
        "measured_decode_ms": [9.3, 6.8, 8.0, None], "measured_prefill_ms": [61.0, 52.0, 57.0, None],
    })
    cands.to_parquet(folder / "candidates.parquet")
    summary = {
        "device": "cpu", "metric": "decode_ms", "budget_ms": 9.5, "strategy": "nas", "optimizer": "X",
        "evaluations": 4, "device_measurements": 5, "workload": {"batch": 1, "prompt": 128, "generate": 32},
        "eval": {"heldout_windows": 40, "window": 128},
        "parent": {"parameters": 100, "heldout_perplexity": 20.0, "predicted": {"decode_ms": 15.0, "prefill_ms": 100.0},
                   "measured": {"decode_ms": 15.5, "prefill_ms": 98.0},
                   "measured_raw": {"decode_ms": 17.05, "prefill_ms": 101.0}, "drift": {"decode_ms": 1.1}},
        "winner": {"architecture_id": "a", "describe": "A", "parameters": 60, "heldout_perplexity": 31.0,
                   "calibration_perplexity": 30.0, "predicted": {"decode_ms": 9.0}, "measured": {"decode_ms": 9.3},
                   "measured_raw": {"decode_ms": 10.2}},
        "speedup": {"decode_ms": {"predicted": 15 / 9, "measured": 15.5 / 9.3}},
    }
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_report_has_plots_tables_and_a_standalone_html(tmp_path):
    md, html = build_report(fake_run(tmp_path / "run"))
    text = md.read_text()
    for needle in ("predicted_vs_measured.png", "pareto.png", "| A (winner) | 30.00 | 9.00 ms | 9.30 ms | 1.67x |",
                   "measured **1.67x**", "the parent ran 17.05 ms (+10%), and the winner 10.20 ms, raw"):
        assert needle in text
    page = html.read_text()
    assert page.count("data:image/png;base64,") >= 2 and "<table>" in page and "src=\"pareto.png\"" not in page
    assert (tmp_path / "run" / "pareto.png").stat().st_size > 10_000
