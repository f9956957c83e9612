"""README's examples run as written: every Python block, in order, as one script, and every
shell block, in order, with bash (``-e -o pipefail``), all in one empty directory.

A block right after ``<!-- readme-test: not run (REASON) -->`` is not run; the only reasons
are installing packages and taking minutes, and the ``statebag`` commands of such a block
must still parse, so their options cannot rot. In the shell, ``statebag`` and ``python`` are
this interpreter with this statebag, and restic, borg, casync and bup are stubs that fail at
once: the README's bench examples then run in seconds whatever is installed (the bench
itself, with the real peers, is tested in test_bench.py).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from statebag.bench.peers import PEERS
from statebag.cli.parser import build_parser

from .clihelp import child_env

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(
    r"(?:<!-- readme-test: not run \((?P<why>[^)]*)\) -->\n)?```(?P<lang>[a-z]*)\n(?P<code>.*?)```",
    re.S,
)
REASONS = {"installs packages", "takes minutes"}


@dataclass(frozen=True)
class Block:
    lang: str
    code: str
    not_run: str | None
    line: int


def blocks() -> list[Block]:
    text = README.read_text(encoding="utf-8")
    return [
        Block(m["lang"], m["code"], m["why"], text.count("\n", 0, m.start()) + 1)
        for m in _BLOCK.finditer(text)
    ]


def env_for(bin_dir: Path) -> dict[str, str]:
    """The shell's environment: this statebag's command line and Python first on PATH, no
    repository named, stub peers."""
    bin_dir.mkdir()
    shims = {
        "statebag": f'exec {shlex.quote(sys.executable)} -m statebag.cli "$@"',
        "python": f'exec {shlex.quote(sys.executable)} "$@"',
        **{peer: f"echo '{peer} is a stub in the README test' >&2; exit 127" for peer in PEERS},
    }
    for name, body in shims.items():
        shim = bin_dir / name
        shim.write_text(f"#!/bin/sh\n{body}\n")
        shim.chmod(0o755)
    return child_env(PATH=os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")]))


def test_readme_has_the_blocks_this_test_runs() -> None:
    found = blocks()
    assert sum(b.lang == "python" and b.not_run is None for b in found) >= 5
    assert sum(b.lang == "sh" and b.not_run is None for b in found) >= 2
    assert all(b.lang in ("python", "sh") for b in found), [b.lang for b in found]
    assert {b.not_run for b in found if b.not_run is not None} <= REASONS
    # The first block (install and run the demo, then the tests) stays where it is.
    assert found[0].not_run == "installs packages"
    assert found[0].code.splitlines()[0] == "pip install . && statebag demo"


def test_readme_examples_run_as_written(tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    env = env_for(tmp_path / "bin")
    found = [b for b in blocks() if b.not_run is None]
    script = "\n".join(b.code for b in found if b.lang == "python")
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=work, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    for block in (b for b in found if b.lang == "sh"):
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", block.code],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            stdin=subprocess.DEVNULL,
        )
        assert done.returncode == 0, (f"README.md line {block.line}", done.stderr[-3000:])


@pytest.mark.parametrize(
    "block", [b for b in blocks() if b.not_run is not None], ids=lambda b: f"line{b.line}"
)
def test_commands_of_blocks_not_run_parse(block: Block) -> None:
    parser = build_parser()
    for line in block.code.splitlines():
        words = shlex.split(line, comments=True)
        if words[:1] == ["statebag"]:
            parser.parse_args(words[1:])
