"""The declared ranges and the environments that check them agree: requirements-oldest.txt (`make test-oldest`) pins
every install_requires of setup.cfg to its lower bound, and the pinned dev stack lies inside the ranges."""

import configparser
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]


def install_requires() -> list[Requirement]:
    config = configparser.ConfigParser()
    config.read(REPO / "setup.cfg")
    return [Requirement(line) for line in config["options"]["install_requires"].split("\n") if line.strip()]


def pins(name: str) -> dict[str, str]:
    """name -> version of each `name==version` line of a requirements file."""
    found = {}
    for line in (REPO / name).read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            requirement = Requirement(line)
            (specifier,) = requirement.specifier
            assert specifier.operator == "==", f"{name}: {line} is not a pin"
            found[canonicalize_name(requirement.name)] = specifier.version
    return found


def lower_bound(requirement: Requirement) -> str:
    bounds = [spec.version for spec in requirement.specifier if spec.operator == ">="]
    assert len(bounds) == 1, f"setup.cfg: {requirement} needs one lower bound (>=)"
    return bounds[0]


def test_oldest_pins_are_the_lower_bounds_of_setup_cfg():
    oldest = pins("requirements-oldest.txt")
    declared = {canonicalize_name(r.name): lower_bound(r) for r in install_requires()}
    assert {name: oldest.get(name) for name in declared} == declared


def test_the_pinned_dev_stack_lies_inside_the_declared_ranges():
    dev = pins("requirements-dev.txt")
    outside = [f"{r.name}=={dev[canonicalize_name(r.name)]} (declared {r.specifier})" for r in install_requires()
               if canonicalize_name(r.name) in dev and dev[canonicalize_name(r.name)] not in r.specifier]  # fmt: skip
    assert outside == []
