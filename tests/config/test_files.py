"""config/files.py: config files are written by a real TOML writer and read back as written."""

from hypothesis import given, settings
from hypothesis import strategies as st

from recscale.config.files import to_toml, tomllib

VALUES = st.one_of(st.text(), st.integers(-2**63, 2**63 - 1), st.floats(allow_nan=False), st.booleans(),
                   st.lists(st.integers(0, 1000), max_size=4))


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.text(min_size=1), VALUES, max_size=5))
def test_any_setting_round_trips(body):
    # quotes, backslashes, newlines, control characters and non-ASCII keys and values alike
    assert tomllib.loads(to_toml({"run": body, "model": {"note": 'a "b"\n\\c'}})) == {"run": body,
                                                                                     "model": {"note": 'a "b"\n\\c'}}


def test_tuples_become_arrays_and_none_is_left_out():
    assert tomllib.loads(to_toml({"eval": {"ks": (10, 20), "missing": None}})) == {"eval": {"ks": [10, 20]}}
