"""MLflow "models from code" entry point: the file logged as the pyfunc model's code.

Logging a file instead of a pickled object means loading the model never unpickles code: MLflow
runs this file, which names the model class (``mlflow.models.set_model``).
"""

import mlflow

from defect_pipeline.tracking.pyfunc import DefectPyfuncModel

mlflow.models.set_model(DefectPyfuncModel())
