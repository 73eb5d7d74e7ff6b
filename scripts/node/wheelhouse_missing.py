"""Print the requirements a wheelhouse lacks for a given Python version, one per line.

pip download evaluates environment markers against the interpreter running it, not the target
(--python-version): a dependency only an older 3.11 needs (redis -> async-timeout below 3.11.3)
is left out. This reads every wheel's Requires-Dist, evaluates its marker for the target version
and names each requirement no wheel in the directory satisfies.
Usage: python wheelhouse_missing.py DIR PYTHON_VERSION
"""

from __future__ import annotations

import sys
import zipfile
from email.parser import Parser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename


def main(directory: str, version: str) -> None:
    environment = {"python_full_version": version, "python_version": ".".join(version.split(".")[:2])}
    wheels = {}
    for wheel in Path(directory).glob("*.whl"):
        name, wheel_version, _, _ = parse_wheel_filename(wheel.name)
        wheels[name] = (wheel, wheel_version)
    missing: dict[str, str] = {}
    for wheel, _ in wheels.values():
        with zipfile.ZipFile(wheel) as archive:
            metadata = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
            message = Parser().parsestr(archive.read(metadata).decode())
        for line in message.get_all("Requires-Dist") or []:
            requirement = Requirement(line)
            if requirement.marker is not None and not requirement.marker.evaluate(
                {**environment, "extra": ""}
            ):
                continue
            name = canonicalize_name(requirement.name)
            if name not in wheels:
                missing[name] = str(requirement).split(";")[0].strip()
    print("\n".join(missing.values()))


if __name__ == "__main__":
    main(*sys.argv[1:3])
