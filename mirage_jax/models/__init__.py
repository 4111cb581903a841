"""Neural network models (Flax NNX)."""
