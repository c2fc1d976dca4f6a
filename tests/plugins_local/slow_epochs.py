"""Epochs that take at least half a second: a test can stop a job between two of them."""
import time

import jaxyard


@jaxyard.hookimpl
def jaxyard_on_epoch_end(record):
    time.sleep(0.5)
