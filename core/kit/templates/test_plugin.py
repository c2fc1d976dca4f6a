"""jaxyard's conformance kit over this package's components: one test per component and check.

Run ``python -m pytest -q`` once the package is installed (the kit finds the components through
its entry point, as ``jaxyard list`` does). Opt a check out with its reason:
``parametrize_with_checks(distribution="jaxyard-PLUGIN", skip={"PLUGIN_EXAMPLE": {"check_name": "why"}})``.
"""

from jaxyard.testing import parametrize_with_checks


@parametrize_with_checks(distribution="jaxyard-PLUGIN")
def test_conformance(entry, check, tmp_path):
    check(entry, tmp_path)
