"""What a run leaves on disk: the run directory, checkpoints (interface, integrity record,
retention policy) and the state they hold."""
