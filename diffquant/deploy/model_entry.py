"""The models-from-code entry point MLflow loads a policy model from (no pickled Python object in the model)."""

import mlflow

from diffquant.deploy.mlflow_model import PolicyModel

mlflow.models.set_model(PolicyModel())
