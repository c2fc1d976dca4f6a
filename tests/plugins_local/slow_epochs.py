"""Epochs that take at least 0.3 s: a test can stop a job between two of them."""
import time

import jaxyard


@jaxyard.hookimpl
def jaxyard_on_epoch_end(record):
    time.sleep(0.3)
