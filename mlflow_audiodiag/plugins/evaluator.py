"""The ``audiodiag`` MLflow model-evaluator plugin: ``mlflow.models.evaluate`` diagnoses a run.

    with mlflow.start_run():
        ...  # train with the monitor
        mlflow.models.evaluate(model=None, data=pd.DataFrame({"x": [0]}),
                               model_type="audiodiag", evaluators=["audiodiag"])

It diagnoses the run being evaluated (the evaluation's ``run_id``), writes the result back to it
like ``mlflow-audiodiag diagnose`` and returns the finding scores as evaluation metrics. It
reads the run's recorded evidence, not the ``data``: pass any small frame. Only
``model_type="audiodiag"`` selects it, so other evaluations never trigger it by accident.
``evaluator_config={"thresholds": {...}, "write": False}`` is accepted.
"""

from __future__ import annotations

from typing import Any

from mlflow.models.evaluation.base import EvaluationResult, ModelEvaluator

from mlflow_audiodiag import schema
from mlflow_audiodiag.diagnosis.thresholds import DEFAULT_THRESHOLDS, Thresholds
from mlflow_audiodiag.reporting.writeback import diagnose_run

MODEL_TYPE = "audiodiag"


class AudioDiagEvaluator(ModelEvaluator):
    """Diagnoses stagnant validation from the evaluated run's recorded evidence."""

    @classmethod
    def can_evaluate(cls, *, model_type: str | None, evaluator_config: dict, **kwargs: Any) -> bool:
        return model_type == MODEL_TYPE

    def evaluate(
        self,
        *,
        model_type: str,
        dataset: Any,
        run_id: str,
        evaluator_config: dict,
        model: Any = None,
        **kwargs: Any,
    ) -> EvaluationResult:
        config = evaluator_config or {}
        thresholds = DEFAULT_THRESHOLDS
        if config.get("thresholds"):
            thresholds = Thresholds.from_dict(config["thresholds"])
        diagnosis = diagnose_run(run_id, thresholds=thresholds, write=config.get("write", True))
        metrics = {schema.METRIC_DIAGNOSIS_FINDINGS: float(len(diagnosis.findings))}
        metrics.update(
            {schema.DIAGNOSIS_SCORE_PREFIX + f.code: float(f.score) for f in diagnosis.findings}
        )
        return EvaluationResult(metrics=metrics, artifacts={})
