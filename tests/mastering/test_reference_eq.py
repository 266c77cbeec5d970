"""The reference EQ's bound as users set it (--max-eq-db): checked before any cluster, in one line."""

from __future__ import annotations

import numpy as np
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


@pytest.mark.parametrize("make, words", [
    (lambda x, sr: x[:, : sr // 10], "needs at least 0.4 s"),          # shorter than one loudness block
    (lambda x, sr: np.concatenate([x, x, x]), "must be mono or stereo"),  # a 6-channel mix
    (lambda x, sr: 30.0 * x, "louder than any master"),                  # a float file far above full scale
])
def test_a_reference_that_is_no_master_is_refused_with_the_reason(tmp_path, make, words):
    import soundfile as sf

    from automaster.audio import read_audio
    from automaster.mastering.masterer import MasteringError, load_reference

    x, sr = read_audio(DATA / "music" / "d01_librosa_brahms_hungarian_dance_5.flac")
    path = tmp_path / "ref.wav"
    sf.write(path, make(x, sr).T, sr, subtype="FLOAT")
    with pytest.raises(MasteringError, match=words):
        load_reference(str(path))
