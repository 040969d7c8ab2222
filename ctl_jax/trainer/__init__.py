"""The trainer core, the same for every task: loop, state, optimizer, checkpoints, sharding,
multi-host, preemption, the NaN guard, run logs, feature extraction and sharded inference."""
