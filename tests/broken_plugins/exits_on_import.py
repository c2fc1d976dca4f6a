"""A plugin that calls sys.exit() while it is imported: skipped like any failing plugin."""
import sys

sys.exit(3)
