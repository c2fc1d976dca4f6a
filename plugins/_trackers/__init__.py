"""The experiment trackers behind the tensorboard, mlflow and wandb loggers: each imports its
library, which only the logger that uses it loads."""
