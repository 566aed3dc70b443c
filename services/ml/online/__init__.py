"""Online learning with river: models created on first use that learn each sample once, scored
prequentially, watched for drift by ADWIN, checkpointed in DATA_DIR and logged to MLflow; stream
bindings train them from `simulation.metrics.*` as points arrive. river is imported lazily, by
the functions that build or load a model, so the ml service starts as fast without it."""
