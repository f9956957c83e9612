"""The backend switch, the fallback warning, the README's commands and the shipped files."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "STATEBAG_NO_EXTENSIONS"}
    full_env.update(env)
    return subprocess.run(
        [sys.executable, "-W", "default", "-c", code],
        capture_output=True,
        text=True,
        env=full_env,
        check=True,
    )


def test_forcing_the_twin_selects_python_without_a_warning() -> None:
    out = _run("import statebag; print(statebag.backend)", STATEBAG_NO_EXTENSIONS="1")
    assert out.stdout.strip() == "python"
    assert "Warning" not in out.stderr


@pytest.mark.parametrize(
    ("value", "forced"),
    [
        *[("1", True), (" Yes ", True), ("on", True), ("TRUE", True)],
        *[("0", False), ("off", False), ("no", False), ("False", False), ("", False)],
    ],
)
def test_the_switch_takes_the_documented_values(value: str, forced: bool) -> None:
    built = importlib.util.find_spec("statebag._cdc") is not None
    out = _run("import statebag; print(statebag.backend)", STATEBAG_NO_EXTENSIONS=value)
    assert out.stdout.strip() == ("cython" if built and not forced else "python")


@pytest.mark.parametrize("value", ["maybe", "2", "yes please"])
def test_any_other_value_of_the_switch_fails_naming_it(value: str) -> None:
    env = {k: v for k, v in os.environ.items() if k != "STATEBAG_NO_EXTENSIONS"}
    failed = subprocess.run(
        [sys.executable, "-c", "import statebag"],
        capture_output=True,
        text=True,
        env={**env, "STATEBAG_NO_EXTENSIONS": value},
        check=False,
    )
    assert failed.returncode != 0
    assert f"ConfigError: STATEBAG_NO_EXTENSIONS={value!r} is not a boolean" in failed.stderr


def test_a_missing_extension_falls_back_with_exactly_one_warning() -> None:
    # Block the compiled module as if it had failed to build.
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'statebag._cdc':\n"
        "            raise ImportError('blocked for the test')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import statebag, statebag.chunking, importlib\n"
        "print(statebag.backend)\n"
        "print(statebag.Chunker().cut(bytes(range(256)) * 100)[-1])\n"
    )
    out = _run(code)
    assert out.stdout.split() == ["python", "25600"]
    assert out.stderr.count("RuntimeWarning") == 1
    assert "pure-Python twin" in out.stderr


def test_readme_starts_with_the_two_commands_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```sh\n(.*?)```", readme, re.S)
    assert block is not None and readme.index("```sh") < readme.index("\n## ")
    commands = [line for line in block.group(1).splitlines() if line.strip()]
    assert len(commands) == 2
    assert "statebag demo" in commands[0]
    assert "[test]" in commands[1] and "pytest" in commands[1]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "run_pytest\n" in ci  # the README's bare `python -m pytest`, through the exit-5 guard


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a source checkout")
def test_sdist_ships_the_cython_sources(tmp_path: Path) -> None:
    pytest.importorskip("build", reason="python -m build is not installed")
    subprocess.run(
        [sys.executable, "-m", "build", "--sdist", "--no-isolation", "-o", str(tmp_path)],
        cwd=ROOT,
        check=True,
        capture_output=True,
    )
    (sdist,) = tmp_path.glob("statebag-*.tar.gz")
    with tarfile.open(sdist) as archive:
        names = archive.getnames()
    assert any(n.endswith("ext/statebag/_cdc.pyx") for n in names)
    assert any(n.endswith("ext/statebag/_walk.pyx") for n in names)
    assert any(n.endswith("src/statebag/meta/sqlite.py") for n in names)
    assert any(n.endswith("src/statebag/objects/local.py") for n in names)
    assert any(n.endswith("ext/statebag/__init__.pxd") for n in names)
    assert any(n.endswith("src/statebag/_cdc.pyi") for n in names)
    assert not any(n.endswith(".c") or n.endswith(".so") for n in names)


@pytest.mark.parametrize("require", ["1", ""])
def test_a_failed_compile_is_fatal_only_when_required(tmp_path: Path, require: str) -> None:
    pytest.importorskip("Cython", reason="building needs Cython")
    env = {k: v for k, v in os.environ.items() if not k.startswith("STATEBAG_")}
    env.update(CC="false", LDSHARED="false", STATEBAG_REQUIRE_EXTENSIONS=require)
    result = subprocess.run(
        [
            sys.executable,
            "setup.py",
            "-q",
            "build_ext",
            "--build-lib",
            str(tmp_path / "lib"),
            "--build-temp",
            str(tmp_path / "tmp"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    built = list((tmp_path / "lib").rglob("_cdc*.so"))
    if require:
        assert result.returncode != 0, result.stdout + result.stderr
    else:
        assert result.returncode == 0, result.stdout + result.stderr
        assert "statebag._cdc" in result.stdout + result.stderr  # setuptools says it skipped it
    assert built == []
