"""Dataset back-ends that need optional dependencies (TensorFlow Datasets)."""
