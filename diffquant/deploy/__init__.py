"""From research to paper trading: the policy bundle, MLflow models and registry, the paper trader."""
