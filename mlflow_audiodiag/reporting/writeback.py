"""Diagnose a run and write the result back where people look in MLflow.

Tags (searchable, shown as columns), the run description, metrics, ``findings.json``, a
self-contained HTML report and plots. Writing again replaces what an earlier diagnosis wrote:
tags and artifacts are overwritten, metrics are logged with the current time (the latest value
is the one MLflow shows; scores of findings that no longer fire are set to 0), and the
description keeps the user's own text outside the diagnosis block.
"""

from __future__ import annotations

import html
import json
import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema
from mlflow_audiodiag.diagnosis.engine import diagnose
from mlflow_audiodiag.diagnosis.evidence import RunEvidence, load_evidence
from mlflow_audiodiag.diagnosis.findings import Diagnosis, Severity
from mlflow_audiodiag.diagnosis.rules import STAGNANT_VALIDATION, Rule
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds
from mlflow_audiodiag.reporting.html import render_report
from mlflow_audiodiag.reporting.plots import save_all

logger = logging.getLogger(__name__)

NOTE_START = "<!-- audiodiag:diagnosis -->"
NOTE_END = "<!-- /audiodiag:diagnosis -->"


def diagnose_run(
    run_id: str,
    client: MlflowClient | None = None,
    thresholds: Thresholds = DEFAULT_THRESHOLDS,
    rules: Sequence[Rule] | None = None,
    write: bool = True,
    status: str | None = None,
) -> Diagnosis:
    """Reads ``run_id``'s evidence, diagnoses it and (by default) writes the result back.

    Works on finished, failed, killed and running runs; ``status`` names the run's status
    when it is diagnosed at the end of its own training (it is still RUNNING then).

    Example::

        diagnosis = diagnose_run(run_id)
        print(diagnosis.verdict, diagnosis.primary_cause)
    """
    client = client or MlflowClient()
    evidence = load_evidence(client, run_id, status=status)
    diagnosis = diagnose(evidence, thresholds, rules)
    if write:
        write_diagnosis(client, run_id, diagnosis, evidence)
    return diagnosis


def write_diagnosis(
    client: MlflowClient, run_id: str, diagnosis: Diagnosis, evidence: RunEvidence
) -> None:
    run = client.get_run(run_id)
    shown = [f for f in diagnosis.findings if f.severity is not Severity.INFO]
    codes = [finding.code for finding in shown]
    client.set_tag(run_id, schema.TAG_VERDICT, diagnosis.verdict)
    client.set_tag(run_id, schema.TAG_PRIMARY_CAUSE, diagnosis.primary_cause or "none")
    client.set_tag(run_id, schema.TAG_FINDINGS, ",".join(codes) or "none")
    client.set_tag(run_id, schema.TAG_LIVE, final_state(diagnosis, evidence))
    previous_note = run.data.tags.get(schema.TAG_NOTE, "")
    client.set_tag(run_id, schema.TAG_NOTE, merge_note(previous_note, summary_markdown(diagnosis)))
    now = int(time.time() * 1000)
    scores = {f.code: float(f.score) for f in shown}
    stale = {
        key.removeprefix(schema.DIAGNOSIS_SCORE_PREFIX)
        for key in run.data.metrics
        if key.startswith(schema.DIAGNOSIS_SCORE_PREFIX)
    }
    scores.update({code: 0.0 for code in stale - set(scores)})
    metrics = [Metric(schema.METRIC_DIAGNOSIS_FINDINGS, float(len(codes)), now, 0)]
    metrics += [
        Metric(schema.DIAGNOSIS_SCORE_PREFIX + code, value, now, 0)
        for code, value in scores.items()
    ]
    client.log_batch(run_id, metrics=metrics)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        (out / Path(schema.ARTIFACT_FINDINGS).name).write_text(
            json.dumps(diagnosis.to_dict(), indent=2)
        )
        images = save_all(evidence, diagnosis, out)
        run_name = run.info.run_name or run_id
        (out / Path(schema.ARTIFACT_REPORT).name).write_text(
            render_report(diagnosis, evidence, run_name, images), encoding="utf-8"
        )
        client.log_artifacts(run_id, tmp, schema.ARTIFACT_DIR_DIAGNOSIS)


def final_state(diagnosis: Diagnosis, evidence: RunEvidence) -> str:
    """The live tag's last value: the verdict, the epochs and the plateau the report names."""
    epochs = evidence.n_epochs
    text = f"finished after {epochs} epochs: {diagnosis.verdict}"
    symptom = diagnosis.finding(STAGNANT_VALIDATION)
    if symptom is not None:
        text += f"; {symptom.title}"
    if diagnosis.primary_cause:
        text += f" (most likely cause: {diagnosis.primary_cause})"
    return text[:5000]


def summary_markdown(diagnosis: Diagnosis) -> str:
    """The short run description: verdict, primary cause with its evidence and fix (findings
    of severity info, such as a converged plateau, are in the report only)."""
    lines = [f"**audiodiag verdict: {diagnosis.verdict}**"]
    primary = diagnosis.finding(diagnosis.primary_cause) if diagnosis.primary_cause else None
    if primary is not None:
        lines += [
            "",
            f"**Most likely cause: {_text(primary.title)}** (`{primary.code}`)",
            "",
            "Evidence: " + _figures(primary.evidence),
            "",
            f"Fix: {_text(primary.fix)}",
        ]
    others = [
        f
        for f in diagnosis.findings
        if (primary is None or f.code != primary.code) and f.severity is not Severity.INFO
    ]
    if others:
        lines += ["", "Other findings: " + ", ".join(f"`{f.code}` ({f.severity})" for f in others)]
    if diagnosis.skipped_checks:
        skipped = ", ".join(sorted(diagnosis.skipped_checks))
        lines += ["", f"Skipped checks (signal missing): {skipped}"]
    lines += ["", f"Full report: artifact `{schema.ARTIFACT_REPORT}`."]
    return "\n".join(lines)


def merge_note(previous: str, block: str) -> str:
    """``previous`` with its diagnosis block replaced by ``block`` (or ``block`` appended)."""
    wrapped = f"{NOTE_START}\n{block}\n{NOTE_END}"
    if NOTE_START in previous and NOTE_END in previous:
        head, rest = previous.split(NOTE_START, 1)
        tail = rest.split(NOTE_END, 1)[1]
        return f"{head}{wrapped}{tail}"
    return f"{previous.rstrip()}\n\n{wrapped}" if previous.strip() else wrapped


def _figures(evidence: dict) -> str:
    parts = []
    for key, value in evidence.items():
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        parts.append(f"{_text(key)} = {_text(shown)}")
    return "; ".join(parts) or "none recorded"


_MARKDOWN = str.maketrans({c: f"\\{c}" for c in "\\`*_{}[]()#+!|~"})


def _text(value: str) -> str:
    """Dynamic text for the markdown description (which the UI renders as HTML): HTML
    special characters escaped, and Markdown's own with a backslash."""
    return html.escape(str(value)).translate(_MARKDOWN)
