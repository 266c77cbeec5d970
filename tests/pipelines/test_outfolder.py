"""The output folder's manifest: what decides whether a run may resume into it."""

from __future__ import annotations

import pytest

from automaster.pipelines.outfolder import OutputFolder, OutputFolderError, make_manifest


def _settings(level_model: str, sha: str) -> dict:
    return {"inversion": "chain", "level_model": level_model, "level_model_sha256": sha}


def test_a_level_model_is_compared_by_its_weights_not_its_path(tmp_path):
    """A submitted job's checkout is a new temporary copy each time: the same shipped level model
    at another path resumes; other weights (at the same path) do not."""
    folder = OutputFolder(str(tmp_path / "out"))
    first = "/tmp/ray/session_1/runtime_resources/working_dir_files/_ray_pkg_aaa/models/spectral"
    again = "/tmp/ray/session_2/runtime_resources/working_dir_files/_ray_pkg_bbb/models/spectral"
    assert folder.check_manifest(make_manifest("master", _settings(first, "1" * 64), "m"), overwrite=False) == "new"
    assert folder.check_manifest(make_manifest("master", _settings(again, "1" * 64), "m"), overwrite=False) == "same"
    with pytest.raises(OutputFolderError, match="level_model_sha256: 1111"):
        folder.check_manifest(make_manifest("master", _settings(again, "2" * 64), "m"), overwrite=False)
    with pytest.raises(OutputFolderError, match="inversion: chain -> mask"):
        folder.check_manifest(make_manifest("master", {**_settings(again, "1" * 64), "inversion": "mask"}, "m"), overwrite=False)
