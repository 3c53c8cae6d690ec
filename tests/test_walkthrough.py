"""docs/your-data.md ("Your data in five minutes"), run exactly as written: its `clipbench` commands, in a folder
outside the checkout holding an ImageFolder of real clip art (three openclipart-png folders) and a captions
CSV, end with the user's protocol in the leaderboard."""

from __future__ import annotations

import shlex
from pathlib import Path

import pytest

from clipbench.protocols import catalog
from helpers import records, run_cli
from test_new_protocol import captions_csv, clipart_folder

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "your-data.md"
HEADING = "# Your data in five minutes"


def walkthrough_commands() -> list:
    """The `clipbench` lines of the page's first bash block."""
    text = PAGE.read_text()
    section = text[text.index(HEADING):]
    block = section[section.index("```bash\n") + len("```bash\n"):]
    block = block[:block.index("```")]
    return [shlex.split(line) for line in block.splitlines() if line.startswith("clipbench ")]


def test_the_walkthrough_names_a_protocol_file_and_a_leaderboard():
    commands = walkthrough_commands()
    assert [c[1] for c in commands] == ["new", "run", "run", "leaderboard"]
    assert all("--protocol" in c and c[c.index("--protocol") + 1].endswith(".yaml") for c in commands[1:3])


@pytest.mark.slow
def test_walkthrough_from_a_folder_of_images_to_the_leaderboard(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(catalog.INCLUDE_ENV, "")  # restored after the test, whatever the commands add
    assert not tmp_path.resolve().is_relative_to(ROOT)
    clipart_folder(tmp_path)
    captions_csv(tmp_path)
    monkeypatch.chdir(tmp_path)
    for argv in walkthrough_commands():
        assert run_cli(*argv[1:]) == 0, argv
    runs = records(tmp_path / "results")
    assert {(r["spec"]["protocol"], r["spec"]["method"], r["status"]) for r in runs.values()} == {
        ("clipart", "zeroshot", "complete"), ("clipart", "finetune", "complete")}
    assert all("i2t_r1" in r["metrics"] and "zs_acc.clipart" in r["metrics"] for r in runs.values())
    board = (tmp_path / "results" / "leaderboards" / "tiny.md").read_text()
    assert "## clipart" in board and (tmp_path / "results" / "leaderboards" / "tiny" / "clipart.md").is_file()
