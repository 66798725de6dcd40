"""Model lifecycle around `luban train`: hyperparameter search, cross-validation, ensembles, experiment tracking."""
