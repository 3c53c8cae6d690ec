"""Writing a leaderboard folder (pages, tables, pictures, the site) with its manifest, and checking one is up to date."""

from __future__ import annotations

import filecmp
import json
import tempfile
from pathlib import Path
from typing import List, Optional, Sequence, Set

from ..store import atomic_write_json
from .entries import escape, load, slug, tidy
from .figures import curves
from .reported import load_reported, reported_files, reported_tables
from .site import write_site
from .tables import (INTRO, Footnotes, _corrupt_of, corrupt_section, main_table, protocol_entries, protocol_na,
                     protocol_page, provenance_footer)


MANIFEST = ".clipbench-leaderboard.json"  # beside the pages: the files clipbench wrote there, and only those it removes


def _manifest(out: Path) -> Optional[Set[str]]:
    """The files (relative to `out`) an earlier `write` made there; None when it has no manifest (a folder
    clipbench has not written, or an earlier version did) or the manifest cannot be read."""
    try:
        doc = json.loads((out / MANIFEST).read_text())
        files = doc["files"]
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not isinstance(files, list):
        return None
    return {f for f in files if isinstance(f, str) and not Path(f).is_absolute() and ".." not in Path(f).parts}


def write(results: Path, out: Path, suite: Optional[str] = None) -> List[Path]:
    """Write every leaderboard file for the records under `results` into `out`; returns the files. Files an
    earlier write made there (its manifest) and this one does not are removed; nothing else in `out` is."""
    reported = [load_reported(path) for path in reported_files(results)]  # a malformed file stops us before any write
    loaded = load(results, suite)
    entries = loaded.entries
    frame = tidy(entries)
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []

    def put(path: Path, text: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)

    put(out / "leaderboard.json", json.dumps(json.loads(frame.to_json(orient="records", double_precision=10)),
                                             indent=1) + "\n")
    put(out / "leaderboard.csv", frame.to_csv(index=False, float_format="%.10g"))
    all_protocols = {e.protocol for e in entries}
    for suite_name in sorted({e.suite for e in entries} | {n.suite for n in loaded.not_applicable}):
        suite_entries = [e for e in entries if e.suite == suite_name]
        notes = Footnotes()
        parts = [f"# Leaderboard: {escape(suite_name)}\n", INTRO]
        protocols = sorted({e.protocol for e in suite_entries}
                           | {n.protocol for n in loaded.not_applicable if n.suite == suite_name})
        for protocol in protocols:
            proto = protocol_entries(suite_entries, suite_name, protocol)
            na = protocol_na(loaded, suite_name, protocol)
            if not proto:  # only methods that cannot run it: their reasons, no page or picture
                parts.append(f"## {escape(protocol)}\n\n{main_table(proto, na)}\n")
                continue
            page = f"{slug(suite_name)}/{slug(protocol)}.md"
            pic = f"{slug(suite_name)}/{slug(protocol)}_curves.png"
            curves(proto, f"{suite_name} / {protocol}", out / pic)
            written.append(out / pic)
            parts.append(f"## {escape(protocol)}\n\n{main_table(proto, na)}\n\n"
                         f"Every metric and each row's accuracy matrix: [{escape(protocol)}]({page}).\n\n"
                         f"![curves of target accuracy and zero-shot retention]({pic})\n")
            put(out / page, protocol_page(proto, out))
            written.extend(out / slug(suite_name) / slug(protocol) / f"{e.file_stem}.png" for e in proto)  # its heatmaps
        parts += reported_tables(reported, suite_entries, suite_name, notes)
        corrupt = _corrupt_of(loaded.corrupt, set(protocols), all_protocols)
        if corrupt:
            parts.append(corrupt_section(corrupt))
        if notes.texts:
            parts.append(notes.render() + "\n")
        parts.append(provenance_footer([r for e in suite_entries for r in e.runs]) + "\n")
        put(out / f"{slug(suite_name)}.md", "\n".join(parts))
    # the same rows as a browsable site, beside the markdown; with `suite`, the index still links the others
    others = sorted({f[:-5] for f in (_manifest(out) or set()) if f.endswith(".html") and "/" not in f} - {"index"})
    write_site(out, loaded, reported, put, others if suite else [])
    _prune(out, written, suite)
    return written


def _prune(out: Path, written: Sequence[Path], suite: Optional[str]) -> None:
    """Remove the pages and pictures an earlier write made in `out` (its manifest) that this one did not:
    those of runs, methods, protocols or suites no longer in the records (with `suite`, only that suite's).
    A file clipbench did not write (a user's NOTES.md, pictures) is never touched. Then the manifest is
    written: what remains of the earlier one, and this write's files."""
    made = {str(p.relative_to(out)) for p in written}
    before = _manifest(out) or set()
    gone = {f for f in before - made if suite is None or f == f"{slug(suite)}.md" or f.startswith(f"{slug(suite)}/")}
    for rel in sorted(gone):
        path = out / rel
        if path.is_file() and not path.is_symlink():
            path.unlink()
    atomic_write_json(out / MANIFEST, {"written_by": "clipbench leaderboard", "files": sorted((before - gone) | made)})


def check(results: Path, out: Path, suite: Optional[str] = None) -> List[str]:
    """Regenerate into a temporary folder and list every difference with the files in `out`."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = Path(tmp)
        write(results, fresh, suite)
        new = {str(p.relative_to(fresh)) for p in fresh.rglob("*") if p.is_file()} - {MANIFEST}
        # the files clipbench wrote in `out` (its manifest; a folder without one: every file), never a user's
        listed = _manifest(out)
        old = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()} if out.is_dir() else set()
        old = (old & listed if listed is not None else old) - {MANIFEST}
        problems = [f"missing: {p}" for p in sorted(new - old)] + [f"not generated: {p}" for p in sorted(old - new)]
        problems += [f"differs: {p}" for p in sorted(new & old) if not filecmp.cmp(fresh / p, out / p, shallow=False)]
    return problems
