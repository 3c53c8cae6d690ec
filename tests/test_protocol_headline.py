"""Each protocol names its headline metrics: registered, one per family, and in one-session protocols
never two that measure the same thing."""

import pytest

from clipbench.errors import ClipbenchError
from clipbench.leaderboard import ranked_metrics
from clipbench.protocols.catalog import get_protocol, load_protocol_file, protocol_names
from clipbench.protocols.metrics import METRICS


@pytest.mark.parametrize("name", protocol_names())
def test_shipped_protocol_names_headline_metrics_each_counted_once(name):
    proto = get_protocol(name)
    assert proto.headline and all(m in METRICS for m in proto.headline)
    one_session = proto.params.get("n_experiences") == 1
    assert ranked_metrics(proto.headline, one_session) == list(proto.headline)


def write_protocol(tmp_path, headline):
    path = tmp_path / "p.yaml"
    path.write_text(f"name: p\nversion: 1\nkind: class_incremental\nbuilder: synthetic_shapes\nheadline: {headline}\n")
    return path


@pytest.mark.parametrize("headline, message", [
    ("[last, i2t_r1, i2t_r1_drop]", "headline lists i2t_r1 and i2t_r1_drop, which rank alike"),
    ("[last, zs_retention, zs_drop]", "headline lists zs_retention and zs_drop"),
    ("[lsat]", "unknown metric 'lsat'. Did you mean 'last'?"),
    ("last", "headline must be a list of metric names"),
])
def test_bad_headline_fails_naming_the_file(tmp_path, headline, message):
    path = write_protocol(tmp_path, headline)
    with pytest.raises(ClipbenchError) as err:
        load_protocol_file(path)
    assert message in str(err.value) and str(path) in str(err.value)


def test_headline_is_read(tmp_path):
    assert load_protocol_file(write_protocol(tmp_path, "[avg, last]")).headline == ("avg", "last")
