"""A trained model at work: restore, predictors, catalogue export, ranking, recommendation,
reports and SavedModels."""
