"""What a researcher does with a lens: trajectories, evaluation, statistics, causal bases, anomaly detection."""
