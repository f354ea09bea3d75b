"""The shipped search spaces (configs/spaces): named by --space NAME, every one valid against the parameters."""
import pytest

from gainakt3exp.errors import ConfigError
from gainakt3exp.study.search import SPACES_DIR, load_space, shipped_spaces, space_path


def test_every_shipped_space_loads_by_name_and_by_path():
    assert "cpu-default" in shipped_spaces()
    for name in shipped_spaces():
        assert space_path(name) == SPACES_DIR / f"{name}.json"
        assert load_space(name) == load_space(str(SPACES_DIR / f"{name}.json")) and load_space(name)


def test_an_unknown_space_name_lists_the_shipped_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="space file nope does not exist; name a shipped space .*cpu-default"):
        load_space("nope")
