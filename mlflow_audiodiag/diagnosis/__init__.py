"""Post-run diagnosis: why did validation accuracy stagnate?

``evidence`` reads one run's signals from MLflow into plain arrays, ``rules`` turns them into
ranked ``findings`` against configurable ``thresholds``, and ``engine.diagnose`` combines the
findings into a verdict and a primary cause.
"""
