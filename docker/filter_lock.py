"""Print a pip lock file without what an NVIDIA PyTorch image already provides.

    python docker/filter_lock.py LOCK [CONSTRAINTS]

Dropped: the torch family and CUDA wheels (torch, torchvision, torchaudio, triton, nvidia-*), which
the image builds for its own CUDA, and every package the image's pip constraint file pins (its
version wins; the file may be missing). Every kept line is an exact `name==version` pin.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

IMAGE_OWNS = re.compile(r"^(torch|torchvision|torchaudio|triton|pytorch-triton|nvidia-.*)$")


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned_names(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    names = set()
    for line in path.read_text().splitlines():
        match = re.match(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line.split("#", 1)[0])
        if match:
            names.add(canonical(match.group(1)))
    return names


def filter_lock(lock: str, constrained: set[str]) -> list[str]:
    kept = []
    for line in lock.splitlines():
        spec = line.split("#", 1)[0].strip()
        if not spec:
            continue
        name, sep, version = spec.partition("==")
        if not sep or not version or any(c in version for c in "<>=!~*,"):
            raise SystemExit(f"{spec!r}: expected an exact name==version pin in the lock")
        name = canonical(name.split("[", 1)[0])
        if IMAGE_OWNS.match(name) or name in constrained:
            continue
        kept.append(spec)
    return kept


if __name__ == "__main__":
    constraints = pinned_names(Path(sys.argv[2])) if len(sys.argv) > 2 else set()
    print("\n".join(filter_lock(Path(sys.argv[1]).read_text(), constraints)))
