"""A ten-line event plugin: logs each epoch to a file of its own and stops the run early."""
import json

import jaxyard


@jaxyard.hookimpl
def jaxyard_on_epoch_end(run, record):
    with open(run.directory / "my_log.jsonl", "a") as f:
        f.write(json.dumps({"epoch": record["epoch"], "val_acc": record["val_acc"]}) + "\n")
    if record["epoch"] >= 2:
        run.stop("epoch 2 is enough")
