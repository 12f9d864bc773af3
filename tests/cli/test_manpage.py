"""The generated manual pages: every directive of the parser's registry is documented with
its options (and the defaults the model holds), the committed pages are what the generator
writes now, they render with ``man`` without a warning, and pip installs them."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from ntpy.cli import manpage
from ntpy.cli.main import build_parser
from ntpy.config.directives import DIRECTIVES, access, misc, nts, sources, system
from ntpy.config.state import Directive

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "man"


def test_every_directive_is_documented() -> None:
    assert manpage.missing_docs(DIRECTIVES.items()) == []


def test_a_directive_without_docs_is_caught() -> None:
    bare = dict(DIRECTIVES)
    bare["frobnicate"] = Directive(misc.handle_logconfig, "frobnicate X")
    assert manpage.missing_docs(bare.items()) == ["frobnicate"]


def _documented(name: str) -> str:
    d = DIRECTIVES[name]
    return " ".join(option for option, _ in d.options)


@pytest.mark.parametrize(
    ("directive", "options"),
    [
        ("server", sources.SERVER_FLAGS | set(sources.SERVER_INT_OPTIONS) - {"maxsources"}),
        ("server", sources.SERVER_FLOAT_OPTIONS | sources.SERVER_TEXT_OPTIONS),
        ("pool", {"maxsources"}),
        ("tos", set(system.TOS_OPTIONS)),
        ("tinker", set(system.TINKER_OPTIONS)),
        ("discard", set(system.DISCARD_OPTIONS)),
        ("ratelimit", set(system.RATELIMIT_OPTIONS)),
        ("mru", set(system.MRU_OPTIONS)),
        ("enable", set(system.SYSTEM_FLAG_NAMES)),
        ("restrict", {f.split("_")[0] for f in access.RESTRICT_FLAGS} | {"mask", "ippeerlimit"}),
        ("nts", set(nts._SUBCOMMANDS)),
    ],
)
def test_every_option_of_the_parser_is_documented(directive: str, options: set[str]) -> None:
    words = set(_documented(directive).replace(",", " ").replace("|", " ").split())
    words |= {w.split("..")[0] for w in words}
    missing = sorted(o for o in options if o not in words)
    assert missing == [], f"{directive}: undocumented options {missing}"


def test_defaults_come_from_the_model() -> None:
    """The manual states the model's defaults: change one, and the page follows."""
    tos = dict(DIRECTIVES["tos"].options)
    assert tos["maxdist VALUE"].endswith(f"(default {system.TosSpec().maxdist})")
    changed = dataclasses.replace(system.TosSpec(), maxdist=2.5)
    assert system._defaults(changed, {"maxdist": "x"}) == (("maxdist VALUE", "x (default 2.5)"),)


def test_committed_pages_are_current() -> None:
    for name, build in manpage.PAGES.items():
        committed = (MAN / name).read_text()
        assert committed == build(), (
            f"man/{name} is stale: run 'PYTHONPATH=src python -m ntpy.cli.manpage man/' and "
            "commit the result"
        )


def test_pages_name_every_directive_and_command() -> None:
    conf = (MAN / "ntpy.conf.5").read_text()
    for name in DIRECTIVES:
        assert f"\\fB{manpage.esc(name)}\\fR" in conf or manpage.esc(name) in conf, name
    page = (MAN / "ntpy.8").read_text()
    for name, _help, _sub in manpage._subcommands(build_parser()):
        assert f".SS ntpy {manpage.esc(name)}" in page


@pytest.mark.skipif(shutil.which("man") is None, reason="needs man")
@pytest.mark.parametrize("name", sorted(manpage.PAGES))
def test_man_renders_without_warnings(name: str) -> None:
    proc = subprocess.run(
        ["man", "--warnings", "-l", str(MAN / name)],
        capture_output=True,
        text=True,
        env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "", proc.stderr
    assert "ntpy" in proc.stdout


def test_pip_installs_the_pages_and_units() -> None:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    data = meta["tool"]["setuptools"]["data-files"]
    assert data["share/man/man8"] == ["man/ntpy.8"]
    assert data["share/man/man5"] == ["man/ntpy.conf.5"]
    for path in (*data["share/man/man8"], *data["share/man/man5"], *data["lib/systemd/system"]):
        assert (ROOT / path).is_file(), path
    package = meta["tool"]["setuptools"]["package-data"]["ntpy"]
    assert "data/systemd/*" in package  # importlib.resources finds the units too


def test_generator_writes_both_pages(tmp_path: Path) -> None:
    assert manpage.main([str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(manpage.PAGES)
    assert manpage.main([]) == 2
