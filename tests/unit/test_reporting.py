"""Report figures and the HTML report, on a synthetic stagnant run (no MLflow)."""

from __future__ import annotations

import base64
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from mlflow_audiodiag.diagnosis import rules as codes
from mlflow_audiodiag.diagnosis.engine import diagnose
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Diagnosis, Finding, Severity
from mlflow_audiodiag.reporting import plots
from mlflow_audiodiag.reporting.html import esc, render_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
GROUPS = ("embedding", "encoder.layers.0", "encoder.layers.1", "head")
EPOCHS = 20
STEPS = 120
SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
CLASSES = ["dog", SCRIPT, IMG, "cat"]


def stagnant_run() -> RunEvidence:
    """Val accuracy pinned at the majority guess while weights barely move (LR too low)."""
    counts = {"train": [40, 30, 20, 10], "val": [10, 8, 5, 2]}
    summary = {
        "data/val_majority_accuracy": 0.4,
        "labels/train/imbalance_ratio": 4.0,
        "labels/train/majority_fraction": 0.4,
        "features/raw/train/mean": -42.0,
        "features/raw/train/std": 18.0,
        "features/raw/val/mean": -40.0,
        "features/raw/val/std": 17.0,
        "features/input/train/mean": 0.0,
        "features/input/train/std": 1.0,
        "features/input/val/mean": 0.1,
        "features/input/val/std": 0.9,
        "features/input/train/dynamic_range": 11.0,
        "features/raw/train/dynamic_range": 100.0,
        "feature_shift/input/val_vs_train_smd_max": 0.3,
        "feature_shift/input/val_vs_train_smd_mean": 0.1,
        "labels/val/n": 25.0,
        **{f"frozen_fraction/{g}": 0.0 for g in GROUPS},
        **{
            f"labels/{split}/count/{c}": n
            for split, values in counts.items()
            for c, n in zip(CLASSES, values, strict=True)
        },
    }
    steps: dict[str, list[float]] = {
        "grad_norm/total": [2.0] * STEPS,
        "lr/0": list(np.geomspace(1e-7, 1e-6, STEPS)),
        "train/step_loss": [1.3] * STEPS,
        "nonfinite/loss": [0.0] * 4,
        "nonfinite/grads": [0.0] * 4,
    }
    for i, group in enumerate(GROUPS):
        steps[f"grad_norm/{group}"] = list(np.geomspace(10.0 ** -(4 - i), 1.0, STEPS))
        steps[f"update_ratio/{group}"] = [1e-6] * STEPS
        steps[f"weight_norm/{group}"] = [10.0 + i] * STEPS
    return RunEvidence.from_values(
        epochs={
            "val/accuracy": [0.4] * EPOCHS,
            "train/accuracy": [0.39, 0.41] * (EPOCHS // 2),
            "train/loss": [1.30, 1.29] * (EPOCHS // 2),
            "val/loss": [1.3] * EPOCHS,
            "val_pred/top_class_fraction": [1.0] * EPOCHS,
            **{
                f"val_pred_count/{c}": [n] * EPOCHS
                for c, n in zip(CLASSES, [25, 0, 0, 0], strict=True)
            },
        },
        steps=steps,
        summary=summary,
        params={"optim.lr": "1e-6"},
        group_order=GROUPS,
    )


class _Elements(HTMLParser):
    """Every start tag with its attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def _elements(page: str) -> list[tuple[str, dict[str, str | None]]]:
    parser = _Elements()
    parser.feed(page)
    parser.close()
    return parser.tags


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > 5_000


@pytest.fixture
def run() -> tuple[RunEvidence, Diagnosis]:
    evidence = stagnant_run()
    return evidence, diagnose(evidence)


def test_the_synthetic_run_is_stagnant_with_a_cause(run: tuple[RunEvidence, Diagnosis]) -> None:
    _, diagnosis = run
    assert diagnosis.verdict == "stagnant"
    assert diagnosis.primary_cause is not None
    assert diagnosis.finding(codes.STAGNANT_VALIDATION) is not None
    assert plots.plateau_window(diagnosis) is not None


def test_save_all_writes_every_figure_as_png(
    run: tuple[RunEvidence, Diagnosis], tmp_path: Path
) -> None:
    evidence, diagnosis = run
    written = plots.save_all(evidence, diagnosis, tmp_path / "plots")
    assert list(written) == list(plots.FILES)
    assert sorted(p.name for p in written.values()) == sorted(plots.FILES.values())
    for path in written.values():
        _assert_png(path)


def test_missing_signals_give_fewer_figures_without_errors(tmp_path: Path) -> None:
    only_curves = RunEvidence.from_values({"val/accuracy": [0.1, 0.2, 0.3]})
    written = plots.save_all(only_curves, diagnose(only_curves), tmp_path / "some")
    assert list(written) == ["training_curves"]
    _assert_png(written["training_curves"])

    empty = RunEvidence()
    assert plots.save_all(empty, diagnose(empty), tmp_path / "none") == {}
    assert plots.training_curves(empty, None) is None
    assert plots.gradient_norms(empty) is None
    assert plots.update_ratios(empty) is None
    assert plots.weight_norms(empty) is None
    assert plots.lr_curve(empty) is None
    assert plots.label_and_prediction_histograms(empty) is None
    assert plots.feature_statistics(empty) is None

    # Zero or non-finite gradient norms are left out rather than failing.
    odd = RunEvidence.from_values(steps={"grad_norm/head": [0.0, np.nan, 1.0], "lr/0": [0.0]})
    assert plots.gradient_norms(odd) is not None
    assert plots.lr_curve(odd) is not None


def test_step_plots_use_log_axes_and_forward_order(run: tuple[RunEvidence, Diagnosis]) -> None:
    step_plots = (plots.update_ratios, plots.gradient_norms, plots.weight_norms)
    for figure in (plot(run[0]) for plot in step_plots):
        ax = figure.axes[0]
        assert ax.get_yscale() == "log"
        labels = [
            line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")
        ]
        assert labels == list(GROUPS)  # the input end first


def test_long_runs_plot_at_most_a_thousand_points_per_line() -> None:
    steps = {"update_ratio/a": list(np.geomspace(1e-2, 1e-4, 50_000))}
    figure = plots.update_ratios(RunEvidence.from_values(steps=steps))
    assert len(figure.axes[0].get_lines()[0].get_xdata()) <= plots.MAX_COLUMNS


def test_report_shows_verdict_primary_cause_fix_findings_and_images(
    run: tuple[RunEvidence, Diagnosis], tmp_path: Path
) -> None:
    evidence, diagnosis = run
    images = plots.save_all(evidence, diagnosis, tmp_path)
    page = render_report(diagnosis, evidence, "baseline-run", images)
    primary = diagnosis.finding(diagnosis.primary_cause)
    assert "baseline-run" in page
    assert esc(diagnosis.verdict) in page
    assert esc(primary.code) in page and esc(primary.title) in page
    assert esc(primary.fix) in page
    for finding in diagnosis.findings:
        assert esc(finding.code) in page
    for code, reason in diagnosis.skipped_checks.items():
        assert esc(code) in page and esc(reason) in page

    sources = [attrs["src"] for tag, attrs in _elements(page) if tag == "img"]
    assert len(sources) == len(images)
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1]).startswith(PNG_SIGNATURE)
    assert "<script" not in page.lower()
    assert "http://" not in page and "https://" not in page
    assert not re.search(r"""<link|\ssrc=["'](?!data:)""", page)

    path = write_report(diagnosis, evidence, "baseline-run", images, tmp_path / "r.html")
    assert path.read_text("utf-8").startswith("<!DOCTYPE html>")


def test_markup_in_names_findings_and_reasons_is_escaped(
    run: tuple[RunEvidence, Diagnosis], tmp_path: Path
) -> None:
    evidence, diagnosis = run
    diagnosis.findings.append(
        Finding(
            code=codes.LABEL_NOISE,
            severity=Severity.INFO,
            title=f"class {SCRIPT} looks noisy",
            evidence={f"recall/{IMG}": 0.1, "note": SCRIPT},
            thresholds={IMG: 1.0},
            fix=f"relabel {IMG}",
            score=0.5,
        )
    )
    diagnosis.skipped_checks[codes.ATTENTION_COLLAPSE] = f"{SCRIPT}: not logged"
    evidence.run_id = IMG
    images = plots.save_all(evidence, diagnosis, tmp_path)
    page = render_report(diagnosis, evidence, f"run {SCRIPT}{IMG}", images)

    assert SCRIPT not in page and IMG not in page
    assert "<script" not in page.lower()
    assert esc(SCRIPT) in page and esc(IMG) in page
    tags = _elements(page)
    assert not [t for t, _ in tags if t == "script"]
    assert all("onerror" not in attrs for _, attrs in tags)
    images_found = [attrs for t, attrs in tags if t == "img"]
    assert len(images_found) == len(images)
    assert all(attrs["src"].startswith("data:image/png;base64,") for attrs in images_found)
    assert "http://" not in page and "https://" not in page


def test_report_rejects_non_png_images(run: tuple[RunEvidence, Diagnosis], tmp_path: Path) -> None:
    evidence, diagnosis = run
    fake = tmp_path / "x.png"
    fake.write_text("<svg onload=alert(1)>")
    with pytest.raises(ValueError, match="not a PNG"):
        render_report(diagnosis, evidence, "r", {"features": fake})
