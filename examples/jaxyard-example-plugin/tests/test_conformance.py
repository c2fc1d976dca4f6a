"""jaxyard's conformance kit over this package's components: one test per component and check."""

from jaxyard.testing import parametrize_with_checks


@parametrize_with_checks(distribution="jaxyard-example-plugin")
def test_conformance(entry, check, tmp_path):
    check(entry, tmp_path)


def test_found_through_the_entry_point(jaxyard_registry):  # a fixture of jaxyard's pytest plugin
    assert jaxyard_registry.plugin("example").distribution == "jaxyard-example-plugin"
