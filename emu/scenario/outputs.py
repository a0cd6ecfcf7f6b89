"""The output folder of a run: emu touches only the files it wrote itself.

`--out .` or `--out ~/captures` may hold a user's own files, pcaps
included. The folder keeps a manifest (`.emu-manifest.json`) naming every
file the last run wrote there; a run removes or overwrites only those.
Any other file is left alone, and a run that would write a file of the same
name refuses with one line (ScenarioError on the field `--out`) before
anything is written.

Nothing is written in place: the run writes into a staging folder inside
the output folder (`.emu-staging/`, always emu's) and renames each finished
file over its final name (an atomic rename on one file system). A crash
leaves the previous run's files or the new ones, never half of a
stats.json or pcap; the next run clears what a crash left in staging.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from emu.scenario.errors import ScenarioError

MANIFEST = ".emu-manifest.json"
STAGING = ".emu-staging"
FIXED_OUTPUTS = ("all.pcapng", "stats.json")


class OutputFolder:
    """`path` as a run's output folder: what emu owns there, the staging
    folder, and the final move into place."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise ScenarioError("--out", f"{self.path} exists and is not a directory")
        self.owned = self._read_manifest()
        self.staging = self.path / STAGING

    def _read_manifest(self) -> set[str]:
        try:
            document = json.loads((self.path / MANIFEST).read_text())
            files = document["files"]
        except FileNotFoundError:
            return set()
        except (OSError, ValueError, KeyError, TypeError):
            raise ScenarioError("--out", f"{self.path / MANIFEST} is not emu's manifest; "
                                "remove it or choose another folder") from None
        return {name for name in files if isinstance(name, str) and "/" not in name
                and name not in ("", ".", "..")}

    def is_foreign(self, name: str) -> bool:
        """A file named `name` is there and emu did not write it."""
        target = self.path / name
        return (target.exists() or target.is_symlink()) and name not in self.owned

    def claim(self, name: str) -> None:
        """Refuse (one line) when `name` would overwrite a file emu did not write."""
        if self.is_foreign(name):
            raise ScenarioError("--out", f"{self.path / name} exists and was not written by emu; "
                                "move it or choose another folder (nothing was written)")

    def open(self, names: list[str]) -> Path:
        """Check the names this run will write at least (`FIXED_OUTPUTS` and
        the pcaps of the cluster as built), then give a fresh staging folder."""
        for name in (*FIXED_OUTPUTS, *names):
            self.claim(name)
        self.path.mkdir(parents=True, exist_ok=True)
        if self.staging.is_symlink() or self.staging.is_file():
            raise ScenarioError("--out", f"{self.staging} is not emu's staging folder; remove it")
        shutil.rmtree(self.staging, ignore_errors=True)  # what a crashed run left
        self.staging.mkdir()
        return self.staging

    def commit(self) -> list[str]:
        """Move every staged file into place, remove what the previous run
        wrote and this one did not, rewrite the manifest; the names written."""
        written = sorted(entry.name for entry in self.staging.iterdir() if entry.is_file())
        for name in written:
            self.claim(name)  # a pcap of a node added later, checked before it moves
        # the manifest first names both runs' files: a crash in between loses no claim
        self._write_manifest(self.owned | set(written))
        for name in written:
            os.replace(self.staging / name, self.path / name)
        for name in sorted(self.owned - set(written)):
            (self.path / name).unlink(missing_ok=True)
        self._write_manifest(set(written))
        self.owned = set(written)
        shutil.rmtree(self.staging, ignore_errors=True)
        return written

    def adopt(self, name: str) -> None:
        """`name`, written after the run (emu run --report's report.html), is emu's too."""
        self.owned.add(name)
        self._write_manifest(self.owned)

    def discard(self) -> None:
        """Drop what this run staged (it failed): the folder stays as it was."""
        shutil.rmtree(self.staging, ignore_errors=True)

    def _write_manifest(self, names: set[str]) -> None:
        document = {"written_by": "emu", "files": sorted(names)}
        temporary = self.path / f"{MANIFEST}.tmp"
        temporary.write_text(json.dumps(document, indent=1) + "\n")
        os.replace(temporary, self.path / MANIFEST)

