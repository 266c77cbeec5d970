"""The console summaries of the batch jobs: one line per file, whatever its name, and why a file
kept its level."""

from __future__ import annotations


def test_master_and_batch_summaries_escape_hostile_names():
    from automaster.pipelines.batch import format_summary
    from automaster.pipelines.master import summary_table

    ok = {"rel_path": "a\nb.wav", "status": "ok", "lufs_before": -20.0, "lufs_after": -14.0, "true_peak_after_dbtp": -1.0,
          "applied": "restore"}  # fmt: skip
    quiet = {**ok, "rel_path": "quiet.wav", "lufs_after": -60.0, "loudness_note": "refused: +46.0 dB is beyond +24 dB (level kept)"}
    loud = {**ok, "rel_path": "loud.wav", "applied": "restore, +2.4 dB soft clip", "loudness_note": "restore: ... soft clipper"}
    table = summary_table({"files": [ok, quiet, loud]})
    assert table.splitlines()[3].endswith("restore, +2.4 dB soft clip")  # said once
    assert len(table.splitlines()) == 4 and "a\\nb.wav" in table
    assert table.splitlines()[2].endswith("restore, refused: +46.0 dB is beyond +24 dB (level kept)")  # why it stayed quiet
    summary = {"ok": 1, "failed": 1, "skipped": 0, "passed_over": 0, "mode": "local", "repairs": {}, "out": "/o",
               "failures": [{"rel_path": "\x1b[31mred.wav", "reason": "empty file"}], "log_file": "/o/log",
               "name_collisions": [{"rel_path": "c\td.wav", "output": "c\td_2.wav", "reason": "clash"}],
               "mlflow_run_id": "r", "tracking_uri": "sqlite:///x"}  # fmt: skip
    text = format_summary("master", summary)
    assert "\x1b" not in text and "\t" not in text
    assert "failed: \\x1b[31mred.wav: empty file" in text and "renamed: c\\td.wav -> c\\td_2.wav" in text


def test_the_master_table_keeps_its_columns_for_accents_and_wide_characters():
    """Names in NFD (e + combining accent) and CJK took more or fewer terminal columns than their
    length: the LUFS column of their rows moved (before: padded by len())."""
    from automaster.pipelines.master import columns, summary_table

    row = {"status": "ok", "lufs_before": -20.0, "lufs_after": -14.0, "true_peak_after_dbtp": -1.0, "applied": "x"}
    names = ["plain.wav", "e\u0301te\u0301.flac", "\u00c6r\u00f8 \u2013 \u97f3\u697d.flac"]
    lines = summary_table({"files": [{**row, "rel_path": n} for n in names]}).splitlines()[1:]
    assert len({columns(line[: line.index("-20.0")]) for line in lines}) == 1, lines
    assert columns("\u97f3") == 2 and columns("e\u0301") == 1
