"""MLflow tracking: stage child runs, reproducibility tags, the pyfunc model, run comparison.

Plain MLflow code with no Kedro import. The Kedro side (which node opens which run) is in
:mod:`defect_pipeline.hooks`; kedro-mlflow opens the parent run of every ``kedro run``.
"""
