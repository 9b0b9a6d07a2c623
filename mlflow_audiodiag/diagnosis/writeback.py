"""Diagnose a run and write the result back where people look in MLflow.

Tags (searchable, shown as columns), the run description, metrics, ``findings.json``, a
self-contained HTML report and plots. Writing again replaces what an earlier diagnosis wrote:
tags and artifacts are overwritten, metrics use a fixed step and timestamp (identical points are
stored once), and the description keeps the user's own text outside the diagnosis block.
"""

from __future__ import annotations

import html
import json
import logging
import tempfile
from pathlib import Path

from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from mlflow_audiodiag import schema
from mlflow_audiodiag.diagnosis.engine import diagnose
from mlflow_audiodiag.diagnosis.evidence import RunEvidence, load_evidence
from mlflow_audiodiag.diagnosis.findings import Diagnosis
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
    write: bool = True,
) -> Diagnosis:
    """Reads ``run_id``'s evidence, diagnoses it and (by default) writes the result back.

    Works on finished, failed, killed and running runs.
    """
    client = client or MlflowClient()
    evidence = load_evidence(client, run_id)
    diagnosis = diagnose(evidence, thresholds)
    if write:
        write_diagnosis(client, run_id, diagnosis, evidence)
    return diagnosis


def write_diagnosis(
    client: MlflowClient, run_id: str, diagnosis: Diagnosis, evidence: RunEvidence
) -> None:
    run = client.get_run(run_id)
    codes = [finding.code for finding in diagnosis.findings]
    client.set_tag(run_id, schema.TAG_VERDICT, diagnosis.verdict)
    client.set_tag(run_id, schema.TAG_PRIMARY_CAUSE, diagnosis.primary_cause or "none")
    client.set_tag(run_id, schema.TAG_FINDINGS, ",".join(codes) or "none")
    previous_note = run.data.tags.get(schema.TAG_NOTE, "")
    client.set_tag(run_id, schema.TAG_NOTE, merge_note(previous_note, summary_markdown(diagnosis)))
    metrics = [Metric(schema.METRIC_DIAGNOSIS_FINDINGS, float(len(codes)), 0, 0)]
    metrics += [
        Metric(schema.DIAGNOSIS_SCORE_PREFIX + finding.code, float(finding.score), 0, 0)
        for finding in diagnosis.findings
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


def summary_markdown(diagnosis: Diagnosis) -> str:
    """The short run description: verdict, primary cause with its evidence and fix."""
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
    others = [f for f in diagnosis.findings if primary is None or f.code != primary.code]
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


def _text(value: str) -> str:
    """Dynamic text for the markdown description (which the UI renders as HTML)."""
    return html.escape(str(value))
