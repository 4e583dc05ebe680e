"""Search over parallel plans: candidate space, lossless pruning, stage partitioning, ranking."""
