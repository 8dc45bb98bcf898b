#!/usr/bin/env python3
"""Prints the Debian archive this machine's apt uses, for debootstrap (scripts/cross/setup.sh).

Reads the sources apt itself reads, where apt-config says they are: the one-line format of
sources.list and sources.list.d/*.list, and the deb822 format of sources.list.d/*.sources. The
answer is the first enabled `deb` entry, in apt's order, with the `main` component and a Debian
release as its suite (a codename such as bookworm, or an alias such as stable): the Debian archive
itself, not its security archive, a backports-only entry or another vendor's repository. A site's
mirror or caching proxy written there is therefore what the build roots use too.

Output: `URI FILE:LINE` (where the entry is). Exit status 1, with the entries seen and why none
fits, when there is none (e.g. on Ubuntu): then set KBASE_DEBIAN_MIRROR.

Usage: debian_mirror.py [SOURCES_LIST SOURCES_PARTS_DIR [OS_RELEASE]]   (tests name the files)
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

# Debian's release names and the archive's aliases for them; the host's own codename (from
# os-release, on Debian) is added, so a release newer than this list still counts.
DEBIAN_SUITES = {
    "buster", "bullseye", "bookworm", "trixie", "forky", "duke", "sid",
    "oldoldstable", "oldstable", "stable", "testing", "unstable",
}
# What debootstrap can fetch from (not apt's mirror+, tor+ or cdrom methods).
SCHEMES = ("http://", "https://", "ftp://", "file:/")


@dataclass
class Entry:
    types: list
    uris: list
    suites: list
    components: list
    enabled: bool
    where: str


def one_line_entries(path: Path) -> Iterator[Entry]:
    """`deb [options] URI SUITE COMPONENT...` lines (sources.list, *.list)."""
    for n, raw in enumerate(path.read_text(errors="replace").splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        words = line.split()
        kind, rest = words[0], words[1:]
        if rest and rest[0].startswith("["):  # options, possibly with spaces inside the brackets
            while rest and not rest[0].endswith("]"):
                rest = rest[1:]
            rest = rest[1:]
        if len(rest) < 2:
            continue
        yield Entry([kind], [rest[0]], [rest[1]], rest[2:], True, f"{path}:{n}")


def deb822_entries(path: Path) -> Iterator[Entry]:
    """Stanzas of `Types:`, `URIs:`, `Suites:`, `Components:`, `Enabled:` (*.sources)."""
    fields: dict = {}
    start = key = None

    def entry() -> Optional[Entry]:
        if not fields:
            return None
        return Entry(fields.get("types", "").split(), fields.get("uris", "").split(),
                     fields.get("suites", "").split(), fields.get("components", "").split(),
                     fields.get("enabled", "yes").strip().lower() != "no", f"{path}:{start}")

    for n, line in enumerate(path.read_text(errors="replace").splitlines() + [""], 1):
        if line.startswith("#"):
            continue
        if not line.strip():
            e = entry()
            if e:
                yield e
            fields, start, key = {}, None, None
        elif line[0] in " \t" and key:  # a continuation line
            fields[key] += " " + line.strip()
        elif ":" in line:
            key, _, value = line.partition(":")
            key = key.strip().lower()
            fields[key] = value.strip()
            start = start or n


def entries(sources_list: Path, parts: Path) -> Iterator[Entry]:
    """Every entry in apt's order: the main list, then the parts directory's files by name."""
    if sources_list.is_file():
        yield from one_line_entries(sources_list)
    if parts.is_dir():
        for f in sorted(parts.iterdir()):
            if f.name.endswith(".list"):
                yield from one_line_entries(f)
            elif f.name.endswith(".sources"):
                yield from deb822_entries(f)


def host_codename(os_release: Path) -> Optional[str]:
    try:
        info = dict(line.split("=", 1) for line in os_release.read_text().splitlines() if "=" in line)
    except OSError:
        return None
    if info.get("ID", "").strip('"') != "debian":
        return None
    return info.get("VERSION_CODENAME", "").strip('"') or None


def rejection(e: Entry, suites: set) -> Optional[str]:
    """Why an entry is not the Debian archive, or None when it is."""
    if not e.enabled:
        return "disabled (Enabled: no)"
    if "deb" not in e.types:
        return f"type {' '.join(e.types) or '?'}, not deb"
    if not any(s.rstrip("/") in suites and not s.endswith("/") for s in e.suites):
        return f"suite {' '.join(e.suites) or '?'} is not a Debian release (one of {', '.join(sorted(suites))})"
    if "main" not in e.components:
        return "no main component"
    if not any(u.startswith(SCHEMES) for u in e.uris):
        return f"URI {' '.join(e.uris)} is not one debootstrap can fetch from (http, https, ftp, file)"
    return None


def find(sources_list: Path, parts: Path, os_release: Path) -> tuple:
    """(uri, where) of the Debian archive, or (None, report of every entry seen)."""
    suites = set(DEBIAN_SUITES)
    codename = host_codename(os_release)
    if codename:
        suites.add(codename)
    seen = []
    for e in entries(sources_list, parts):
        why = rejection(e, suites)
        if why is None:
            uri = next(u for u in e.uris if u.startswith(SCHEMES))
            return uri.rstrip("/"), e.where
        seen.append(f"{e.where}: {' '.join(e.uris)} {' '.join(e.suites)}: {why}")
    return None, seen


def apt_paths() -> tuple:
    """apt's own sources.list and sources.list.d (Dir::Etc::sourcelist, Dir::Etc::sourceparts)."""
    try:
        out = subprocess.run(["apt-config", "shell", "LIST", "Dir::Etc::sourcelist/f",
                              "PARTS", "Dir::Etc::sourceparts/d"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as e:
        sys.exit(f"cannot ask apt where its sources are (apt-config: {e}): not a Debian-based "
                 "system? Set KBASE_DEBIAN_MIRROR to a Debian mirror")
    values = dict(w.split("=", 1) for w in shlex.split(out) if "=" in w)
    return Path(values.get("LIST", "/etc/apt/sources.list")), Path(values.get("PARTS", "/etc/apt/sources.list.d"))


def main(argv: list) -> int:
    if len(argv) in (2, 3):
        sources_list, parts = Path(argv[0]), Path(argv[1])
        os_release = Path(argv[2]) if len(argv) == 3 else Path("/etc/os-release")
    elif not argv:
        (sources_list, parts), os_release = apt_paths(), Path("/etc/os-release")
    else:
        sys.exit(__doc__.rsplit("Usage: ", 1)[1])
    uri, where = find(sources_list, parts, os_release)
    if uri is None:
        print(f"no Debian archive among apt's sources ({sources_list}, {parts}/*.list, *.sources):", file=sys.stderr)
        for line in where or ["(no entries at all)"]:
            print(f"  {line}", file=sys.stderr)
        print("Set KBASE_DEBIAN_MIRROR to a Debian mirror (one that carries trixie and bullseye).",
              file=sys.stderr)
        return 1
    print(uri, where)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
