"""Step 3, training: TrainConfig, batches, schedule, optimizer, the loop, checkpoints, and the time-budget planner."""
