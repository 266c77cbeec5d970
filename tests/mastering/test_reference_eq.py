"""The reference EQ's bound as users set it (--max-eq-db): checked before any cluster, in one line."""

from __future__ import annotations

import pytest

from automaster.cli import main
from automaster.config import ConfigError, MasterConfig
from tests.conftest import DATA

MUSIC = DATA / "music"


@pytest.mark.parametrize("value", ["0", "-3", "nan", "inf"])
def test_bad_max_eq_db_exits_2_in_one_line(tmp_path, capsys, value):
    code = main(["master", "--input", str(MUSIC), "--out", str(tmp_path / "o"), f"--max-eq-db={value}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "--max-eq-db" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_config_names_the_flag():
    assert MasterConfig().max_eq_db == 6.0
    with pytest.raises(ConfigError, match="--max-eq-db"):
        MasterConfig(max_eq_db=0.0)
