"""Human-readable output of a diagnosis: PNG figures of a run's signals (``plots``) and one
self-contained HTML report that embeds them (``html``)."""
