"""The training core shared by every family: the Trainer, its callbacks, optimizers and schedules."""
