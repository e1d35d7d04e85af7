"""Benchmark processes that finish together merge into one results file: no entry is lost, and a
reader never sees a half-written file."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time

from sne.bench.results import write_merged

WRITERS = 3
ROWS = 40

WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from sne.bench.results import write_merged

    path, writer, rows = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    for row in range(rows):
        result = {"benchmark": "contention", "zoo": "same data", "command": f"writer {writer} row {row}",
                  "entries": [{"writer": writer, "row": row, "payload": "x" * 2000}]}
        write_merged(path, result, lambda r: r["zoo"], lambda e: (e["writer"], e["row"]))
""")


def test_processes_merging_into_one_file_lose_no_row(tmp_path):
    path = tmp_path / "results" / "contention.json"
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, str(path), str(w), str(ROWS)], stderr=subprocess.PIPE)
               for w in range(WRITERS)]
    reads, seen = 0, 0
    while any(w.poll() is None for w in writers):
        if path.exists():
            entries = json.loads(path.read_text())["entries"]  # never a torn file
            assert len(entries) >= seen, "a merge dropped rows another process had written"
            seen = len(entries)
            reads += 1
        time.sleep(0.001)
    for w in writers:
        assert w.wait() == 0, w.stderr.read().decode()
    result = json.loads(path.read_text())
    rows = sorted((e["writer"], e["row"]) for e in result["entries"])
    assert rows == [(w, r) for w in range(WRITERS) for r in range(ROWS)]
    assert len(result["commands"]) == WRITERS * ROWS
    assert reads > 0
    assert not list(path.parent.glob(".*.tmp"))

