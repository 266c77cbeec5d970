"""The evaluation's Ray-free parts: metrics against the clean excerpt, baselines, and the report
(``pipelines/evaluate.py`` wires them to Ray Data and MLflow)."""
