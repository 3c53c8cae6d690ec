"""Every shipped protocol and suite file parses, names a known builder and refers to known things."""

import pytest

from clipbench.protocols.catalog import BUILDERS, get_protocol, get_suite, protocol_names, suite_names


@pytest.mark.parametrize("name", protocol_names())
def test_protocol_file_is_well_formed(name):
    proto = get_protocol(name)
    assert proto.builder in BUILDERS and proto.version >= 1
    assert proto.assets(None) is not None  # the dry-run report can be made


@pytest.mark.parametrize("name", suite_names())
def test_suite_refers_to_known_protocols_and_methods(name):
    from clipbench.methods.base import METHODS

    suite = get_suite(name)
    for protocol in suite.protocols:
        get_protocol(protocol)
    if suite.methods != "all":
        for method in suite.methods:
            METHODS.get(method)


def test_the_expected_suites_exist():
    assert {"paper", "cil_cifar100", "mtil", "mini", "tiny"} <= set(suite_names())
