"""What users do with the method: split, train, evaluate, learning curves, the model registry."""
