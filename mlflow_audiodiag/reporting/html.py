"""One self-contained HTML page for a diagnosis: verdict, primary cause and fix, findings,
skipped checks and the figures embedded as ``data:`` URIs (no scripts, no external assets).

Every piece of text from the run (names, findings, evidence keys and values, reasons) passes
through :func:`esc` before it reaches the markup.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from mlflow_audiodiag import signals as S
from mlflow_audiodiag.diagnosis.evidence import RunEvidence
from mlflow_audiodiag.diagnosis.findings import Diagnosis, Finding

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

CAPTIONS: dict[str, str] = {
    "training_curves": "Loss and accuracy per epoch (plateau shaded)",
    "update_ratios": "Update / weight ratio per parameter group and step (log axis)",
    "gradient_norms": "Gradient norm per parameter group and step (log axis)",
    "weight_norms": "Weight norm per parameter group and step (log axis)",
    "learning_rate": "Learning rate per parameter group",
    "histograms": "Labels per split and validation predictions per class",
    "features": "Feature statistics and train-vs-split shift",
}
VERDICT_TEXT: dict[str, str] = {
    "healthy": "Validation accuracy improved; no critical problem found.",
    "stagnant": "Validation accuracy stopped improving.",
    "diverged": "Training diverged (non-finite values or a loss blow-up).",
    "inconclusive": "The logged signals are not enough for a verdict.",
}

PAGE_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;
color:#1f2328;padding:0 1em;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.25em;margin-top:1.8em;
border-bottom:1px solid #d0d7de;padding-bottom:.2em}
.meta{color:#59636e;font-size:.9em}
.badge{display:inline-block;padding:.15em .6em;border-radius:1em;font-size:.7em;color:#fff;
vertical-align:middle;text-transform:uppercase;letter-spacing:.04em}
.v-healthy{background:#1a7f37}.v-stagnant{background:#bf8700}.v-diverged{background:#cf222e}
.v-inconclusive{background:#6e7781}
.sev{font-weight:600}.s-critical{color:#cf222e}.s-warning{color:#9a6700}.s-info{color:#0969da}
.primary{border:1px solid #d0d7de;border-left:6px solid #cf222e;border-radius:6px;
padding:.8em 1.2em;background:#fff8f8}
.fix{background:#dafbe1;border:1px solid #4ac26b;border-radius:6px;padding:.6em 1em;
margin-top:.6em}
table{border-collapse:collapse;width:100%;font-size:.9em}
th,td{border:1px solid #d0d7de;padding:.35em .6em;text-align:left;vertical-align:top}
th{background:#f6f8fa}tr.is-primary td{background:#fff8c5}
code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:.9em}
ul.kv{list-style:none;margin:0;padding:0}ul.kv li{white-space:nowrap}
figure{margin:1.2em 0}figure img{max-width:100%;border:1px solid #d0d7de}
figcaption{color:#59636e;font-size:.9em}
"""


def esc(value: object) -> str:
    """``value`` as text safe inside HTML elements and quoted attributes."""
    return html.escape(str(value), quote=True)


def _number(value: float) -> str:
    return f"{value:.4g}" if math.isfinite(value) else str(value)


def _value(value: object) -> str:
    """Escaped display form of an evidence or threshold value."""
    if isinstance(value, bool):
        return esc(value)
    if isinstance(value, int | float):
        return esc(_number(float(value)))
    return esc(value)


def _key_values(items: Mapping[str, object]) -> str:
    if not items:
        return "&mdash;"
    rows = "".join(f"<li><code>{esc(k)}</code> = {_value(v)}</li>" for k, v in items.items())
    return f'<ul class="kv">{rows}</ul>'


def html_table(headers: Sequence[str], rows: Iterable[tuple[str, Sequence[str]]]) -> str:
    """A table; ``headers`` are escaped here, each row is ``(css class, escaped cells)``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        (f'<tr class="{esc(css)}">' if css else "<tr>")
        + "".join(f"<td>{cell}</td>" for cell in cells)
        + "</tr>"
        for css, cells in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _severity(finding: Finding) -> str:
    level = finding.severity.value
    return f'<span class="sev s-{esc(level)}">{esc(level)}</span>'


def _header(diagnosis: Diagnosis, evidence: RunEvidence, run_name: str) -> str:
    verdict = diagnosis.verdict
    meta = [
        f"run status {esc(evidence.status)}",
        f"{evidence.n_epochs} validation epochs",
    ]
    if evidence.front_end:
        meta.append(f"recorded by {esc(evidence.front_end)}")
    if evidence.run_id:
        meta.insert(0, f"run id <code>{esc(evidence.run_id)}</code>")
    return (
        f"<h1>Diagnosis of {esc(run_name)} "
        f'<span class="badge v-{esc(verdict)}">{esc(verdict)}</span></h1>'
        f'<p class="meta">{" &middot; ".join(meta)}</p>'
        f"<p>{esc(VERDICT_TEXT.get(verdict, ''))}</p>"
    )


def _primary(diagnosis: Diagnosis) -> str:
    finding = diagnosis.finding(diagnosis.primary_cause) if diagnosis.primary_cause else None
    if finding is None:
        text = (
            "No problem found."
            if diagnosis.verdict == "healthy"
            else "No cause identified from the logged signals; see the findings and skipped "
            "checks below."
        )
        return f"<h2>Primary cause</h2><p>{esc(text)}</p>"
    return (
        "<h2>Primary cause</h2>"
        '<div class="primary">'
        f"<p><code>{esc(finding.code)}</code> &middot; {_severity(finding)} &middot; "
        f"score {esc(_number(finding.score))}</p>"
        f"<p><strong>{esc(finding.title)}</strong></p>"
        f'<div class="fix"><strong>Fix:</strong> {esc(finding.fix)}</div>'
        "</div>"
    )


def _findings(diagnosis: Diagnosis) -> str:
    if not diagnosis.findings:
        return "<h2>Findings</h2><p>None.</p>"
    rows = [
        (
            "is-primary" if f.code == diagnosis.primary_cause else "",
            [
                esc(rank),
                f"<code>{esc(f.code)}</code>",
                _severity(f),
                esc(_number(f.score)),
                esc(f.title),
                _key_values(f.evidence),
                _key_values(f.thresholds),
                esc(f.fix),
            ],
        )
        for rank, f in enumerate(diagnosis.findings, start=1)
    ]
    headers = ("#", "code", "severity", "score", "title", "evidence", "thresholds", "fix")
    return "<h2>Findings</h2>" + html_table(headers, rows)


def _skipped(diagnosis: Diagnosis) -> str:
    parts = []
    if diagnosis.skipped_checks:
        rows = [
            ("", [f"<code>{esc(code)}</code>", esc(reason)])
            for code, reason in diagnosis.skipped_checks.items()
        ]
        parts.append(
            "<h2>Skipped checks</h2><p>These checks could not run because a signal was "
            "missing.</p>" + html_table(("check", "missing signal"), rows)
        )
    if diagnosis.not_applicable:
        rows = [
            ("", [f"<code>{esc(code)}</code>", esc(reason)])
            for code, reason in diagnosis.not_applicable.items()
        ]
        parts.append("<h2>Checks that do not apply</h2>" + html_table(("check", "why"), rows))
    return "".join(parts)


def _classes(evidence: RunEvidence) -> str:
    names: list[str] = []
    for key in evidence.summary:
        found = S.LABEL_COUNT.match(key)
        if found is not None and found["cls"] not in names:
            names.append(found["cls"])
    if not names:
        return ""
    columns = {
        "train labels": lambda c: evidence.summary.get(S.LABEL_COUNT.key(split="train", cls=c)),
        "val labels": lambda c: evidence.summary.get(S.LABEL_COUNT.key(split="val", cls=c)),
        "val predictions (last epoch)": lambda c: evidence.latest(S.VAL_PRED_COUNT.key(cls=c)),
        "val recall (last epoch)": lambda c: evidence.latest(S.VAL_RECALL.key(cls=c)),
    }
    rows = []
    for name in names:
        values = [get(name) for get in columns.values()]
        cells = ["&mdash;" if v is None else _value(v) for v in values]
        rows.append(("", [esc(name), *cells]))
    return "<h2>Classes</h2>" + html_table(("class", *columns), rows)


def image_data_uri(path: str | Path) -> str:
    """``data:image/png;base64,...`` for a PNG file (anything else is rejected)."""
    data = Path(path).read_bytes()
    if not data.startswith(PNG_SIGNATURE):
        raise ValueError(f"{path} is not a PNG file")
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def _figures(images: Mapping[str, Path]) -> str:
    if not images:
        return ""
    parts = []
    for name, path in images.items():
        caption = CAPTIONS.get(name, name)
        parts.append(
            f'<figure><img src="{esc(image_data_uri(path))}" alt="{esc(caption)}">'
            f"<figcaption>{esc(caption)}</figcaption></figure>"
        )
    return "<h2>Plots</h2>" + "".join(parts)


def render_report(
    diagnosis: Diagnosis,
    evidence: RunEvidence,
    run_name: str,
    images: Mapping[str, Path] | None = None,
) -> str:
    """The whole report as one HTML document; ``images`` maps figure names (see
    :data:`CAPTIONS`) to PNG files, embedded in that order."""
    body = "".join(
        (
            _header(diagnosis, evidence, run_name),
            _primary(diagnosis),
            _findings(diagnosis),
            _skipped(diagnosis),
            _classes(evidence),
            _figures(images or {}),
        )
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>Diagnosis of {esc(run_name)}: {esc(diagnosis.verdict)}</title>"
        f"<style>{PAGE_CSS}</style></head><body>{body}</body></html>\n"
    )


def write_report(
    diagnosis: Diagnosis,
    evidence: RunEvidence,
    run_name: str,
    images: Mapping[str, Path] | None,
    path: str | Path,
) -> Path:
    """Renders the report and writes it to ``path`` (UTF-8); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_report(diagnosis, evidence, run_name, images), "utf-8")
    return out
