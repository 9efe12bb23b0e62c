"""Dependencies and images are pinned: constraints.txt pins every package the virtualenv installs,
exactly and within pyproject's bounds; pyproject's lower bounds stay above the releases with known
CVEs; docker-compose.yml's third-party images are exact patch releases, Redis one with the Lua
use-after-free fixes. docs/DEPLOY.md ("Dependencies and images") says where each CVE was found.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
CONSTRAINTS = ROOT / "constraints.txt"
PYPROJECT = ROOT / "pyproject.toml"
COMPOSE_FILE = ROOT / "docker-compose.yml"

# The lowest release free of the named advisories; pyproject's lower bound must not be below it.
CVE_FLOORS = {
    "aiohttp": ("3.14.4", "CVE-2024-30251 (3.9.4), CVE-2024-52304 (3.10.11) .. PYSEC-2026-4371"),
    "cryptography": ("50.0.0", "CVE-2026-69247"),
    "redis": ("4.5.4", "CVE-2023-28858, CVE-2023-28859"),
    "pydantic": ("2.4.0", "CVE-2024-3772"),
    "pyyaml": ("5.4", "CVE-2020-14343"),
    "pytest": ("9.0.3", "CVE-2025-71176"),
    "playwright": ("1.55.1", "CVE-2025-59288"),
    "setuptools": ("78.1.1", "CVE-2025-47273"),  # the build backend
}

# The Redis release of each line that fixed the Lua use-after-free CVE-2025-49844 (which came
# after CVE-2024-46981's fixes); lines released after it (8.4 on) have it from the start.
REDIS_LUA_FIXED = {(6, 2): 20, (7, 2): 11, (7, 4): 6, (8, 0): 4, (8, 2): 2}
REDIS_FIRST_LINE_WITH_FIX = (8, 4)

# How many numbers an exact release of an image has: PostgreSQL 10+ is MAJOR.MINOR (16.15 is a
# patch release, 16 is not); the other images are MAJOR.MINOR.PATCH.
RELEASE_PARTS = {"postgres": 2}

_PIN = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)==(?P<version>[0-9][A-Za-z0-9.+!-]*)")
_IMAGE = re.compile(r"(?P<repo>[^:@\s]+):(?P<tag>[^@\s]+)(?:@sha256:[0-9a-f]{64})?")
_RELEASE = re.compile(r"(?P<version>\d+(?:\.\d+)*)(?:-[A-Za-z0-9.-]+)?")


def constraint_lines(text: str) -> list[str]:
    """The requirement lines of a constraints file, comments and blank lines dropped."""
    lines = (line.split("#", 1)[0].strip() for line in text.splitlines())
    return [line for line in lines if line]


def pins(text: str) -> dict[str, Version]:
    found: dict[str, Version] = {}
    for line in constraint_lines(text):
        match = _PIN.fullmatch(line)
        assert match, f"constraints.txt: {line!r} is not an exact name==version pin"
        name = canonicalize_name(match["name"])
        assert name not in found, f"constraints.txt pins {name} twice"
        found[name] = Version(match["version"])
    return found


def requirements(project: dict[str, Any]) -> list[Requirement]:
    """Everything `pip install -e '.[dev,embedded,bench]'` asks for (every extra)."""
    listed = list(project["project"]["dependencies"])
    for extra in project["project"].get("optional-dependencies", {}).values():
        listed.extend(extra)
    return [Requirement(r) for r in listed]


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [
        Version(spec.version)
        for spec in requirement.specifier
        if spec.operator in (">=", "==", "~=", "===", ">") and "*" not in spec.version
    ]
    return max(bounds, default=None)


def release_problem(image: str) -> str | None:
    """Why an image reference is not an exact patch release (None when it is)."""
    match = _IMAGE.fullmatch(image)
    if match is None:
        return "no tag"
    release = _RELEASE.fullmatch(match["tag"])
    if release is None:
        return f"tag {match['tag']!r} is not a release number"
    parts = len(release["version"].split("."))
    wanted = RELEASE_PARTS.get(match["repo"].rsplit("/", 1)[-1], 3)
    if parts != wanted:
        return f"{release['version']} is not an exact release ({wanted} numbers)"
    return None


def redis_lua_problem(image: str) -> str | None:
    """Why a Redis image lacks the Lua use-after-free fixes (None when it has them)."""
    match = _IMAGE.fullmatch(image)
    release = _RELEASE.fullmatch(match["tag"]) if match else None
    if release is None:
        return "no release number"
    major, minor, patch, *_ = (int(n) for n in [*release["version"].split("."), 0, 0])
    if (major, minor) >= REDIS_FIRST_LINE_WITH_FIX:
        return None
    fixed = REDIS_LUA_FIXED.get((major, minor))
    if fixed is None:
        return f"the {major}.{minor} line got no CVE-2025-49844 fix"
    if patch < fixed:
        return f"{release['version']} predates {major}.{minor}.{fixed} (CVE-2025-49844)"
    return None


@pytest.fixture(scope="module")
def project() -> dict[str, Any]:
    return tomllib.loads(PYPROJECT.read_text())


@pytest.fixture(scope="module")
def pinned() -> dict[str, Version]:
    return pins(CONSTRAINTS.read_text())


@pytest.fixture(scope="module")
def third_party_images() -> dict[str, str]:
    services = yaml.safe_load(COMPOSE_FILE.read_text())["services"]
    return {name: svc["image"] for name, svc in services.items() if "build" not in svc}


def test_constraints_are_exact_pins_of_other_packages(
    pinned: dict[str, Version], project: dict[str, Any]
) -> None:
    # pins() refuses ranges, wildcards, markers, options and duplicates.
    assert pinned, "constraints.txt pins nothing"
    assert canonicalize_name(project["project"]["name"]) not in pinned, "the project pins itself"


def test_every_requirement_is_pinned_within_its_bounds(
    pinned: dict[str, Version], project: dict[str, Any]
) -> None:
    for requirement in requirements(project):
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{name} is required but not in constraints.txt (make lock)"
        assert requirement.specifier.contains(pinned[name], prereleases=True), (
            f"constraints.txt pins {name}=={pinned[name]}, outside pyproject's {requirement}"
        )


def test_lower_bounds_are_above_the_releases_with_known_cves(
    pinned: dict[str, Version], project: dict[str, Any]
) -> None:
    required = {
        canonicalize_name(r.name): r
        for r in [*requirements(project), *map(Requirement, project["build-system"]["requires"])]
    }
    for name, (floor, advisories) in CVE_FLOORS.items():
        assert name in required, f"{name} is no longer required: drop it from CVE_FLOORS"
        bound = lower_bound(required[name])
        assert bound is not None and bound >= Version(floor), (
            f"pyproject admits {required[name]}; {advisories} need {name}>={floor}"
        )
        if name in pinned:
            assert pinned[name] >= Version(floor), f"{name}=={pinned[name]}: {advisories}"


def test_third_party_images_are_exact_patch_releases(third_party_images: dict[str, str]) -> None:
    assert third_party_images
    for name, image in third_party_images.items():
        problem = release_problem(image)
        assert problem is None, f"{name}: {image}: {problem}"


def test_redis_has_the_lua_use_after_free_fixes(third_party_images: dict[str, str]) -> None:
    problem = redis_lua_problem(third_party_images["redis"])
    assert problem is None, f"redis: {third_party_images['redis']}: {problem}"


@pytest.mark.parametrize(
    ("image", "exact"),
    [
        ("redis:7.2.16-alpine", True),
        ("postgres:16.15", True),
        ("temporalio/admin-tools:1.29.7-tctl-1.18.4-cli-1.7.2", True),
        ("redis:7.2.16-alpine@sha256:" + "0" * 64, True),
        ("redis:latest", False),
        ("redis:7", False),
        ("redis:7.2-alpine", False),
        ("postgres:16", False),
        ("temporalio/ui", False),
    ],
)
def test_what_counts_as_an_exact_release(image: str, exact: bool) -> None:
    assert (release_problem(image) is None) is exact


@pytest.mark.parametrize(
    ("image", "fixed"),
    [
        ("redis:7.2.5-alpine", False),
        ("redis:7.2.10", False),
        ("redis:7.2.11", True),
        ("redis:7.4.5", False),
        ("redis:7.4.6", True),
        ("redis:8.2.1", False),
        ("redis:8.6.5", True),
        ("redis:7.0.15", False),
    ],
)
def test_which_redis_releases_have_the_lua_fixes(image: str, fixed: bool) -> None:
    assert (redis_lua_problem(image) is None) is fixed


def test_pins_refuses_what_is_not_an_exact_pin() -> None:
    assert pins("# header\nyarl==1.25.1\n    # via aiohttp\n") == {"yarl": Version("1.25.1")}
    for line in ("yarl>=1.25", "yarl==1.*", "yarl", "--index-url x", "-e .", "yarl==1 ; os_name"):
        with pytest.raises(AssertionError):
            pins(line)
