"""The conformance checks, one module per kind: importing this package registers them all.

The order of the imports below is the order of :data:`jaxyard.core.kit.harness.CHECKS`, hence the
order of a component's tests: the checks of every kind first, then kind by kind.
"""

# The import order is the registration order: keep it.
# isort: off
from jaxyard.core.kit.checks import common
from jaxyard.core.kit.checks import tasks
from jaxyard.core.kit.checks import optimizers
from jaxyard.core.kit.checks import schedulers
from jaxyard.core.kit.checks import models
from jaxyard.core.kit.checks import loaders
from jaxyard.core.kit.checks import checkpointers
from jaxyard.core.kit.checks import loggers

# isort: on

#: The modules, in the order they register their checks.
MODULES = (common, tasks, optimizers, schedulers, models, loaders, checkpointers, loggers)
