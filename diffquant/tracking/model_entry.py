"""The models-from-code entry point MLflow loads a policy model from (no pickled Python object in the model)."""

import mlflow

from diffquant.tracking.models import PolicyModel

mlflow.models.set_model(PolicyModel())
