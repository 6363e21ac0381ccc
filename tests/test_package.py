"""The package as producers see it: cheap to import, typed, honest about its hot path, and
installable without a C compiler."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import dropr
import dropr._impl

HEAVY = ("aiohttp", "uvloop", "pycurl", "prometheus_client", "urllib3", "dropr.server", "dropr.relay", "dropr.cli")


def test_import_dropr_loads_no_server_or_relay_stack() -> None:
    code = "import sys, dropr; print('\\n'.join(sorted(sys.modules)))"
    loaded = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True).stdout.split()
    assert [name for name in loaded if name.startswith(HEAVY)] == []


def test_the_library_never_names_the_command_line() -> None:
    """One-way dependencies: the commands use the library, nothing below them runs a command."""
    package = Path(dropr.__file__).parent
    for path in package.rglob("*.py"):
        if "cli" not in path.relative_to(package).parts:
            text = path.read_text()
            assert "dropr.cli" not in text and "from ..cli" not in text and "from .cli" not in text, path


def test_public_names_are_few_and_present() -> None:
    assert sorted(dropr.__all__) == [
        "Client",
        "DroprError",
        "InvalidMessage",
        "RemoteStore",
        "SpoolError",
        "Store",
        "StoreError",
        "fastput",
        "fastput_many",
    ]
    for name in dropr.__all__:
        assert getattr(dropr, name) is not None


def test_package_is_typed() -> None:
    assert (Path(dropr.__file__).parent / "py.typed").is_file()


def test_implementation_names_the_modules_loaded() -> None:
    for name, compiled in dropr._impl.COMPILED.items():
        module = getattr(dropr._impl, name)
        assert module.__name__ == (f"dropr._{name}" if compiled else f"dropr._{name}_py")
    if os.environ.get("DROPR_REQUIRE_EXTENSIONS", "") not in ("", "0"):
        assert dropr._impl.IMPLEMENTATION == "compiled", dropr._impl.COMPILED
    if os.environ.get("DROPR_NO_EXTENSIONS", "") not in ("", "0"):
        assert dropr._impl.IMPLEMENTATION == "python", dropr._impl.COMPILED


def test_no_extensions_switch_loads_the_twins() -> None:
    code = "import dropr._impl as i; print(i.IMPLEMENTATION)"
    env = {**os.environ, "DROPR_NO_EXTENSIONS": "1"}
    env.pop("DROPR_REQUIRE_EXTENSIONS", None)
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, env=env).stdout
    assert out.strip() == "python"


# -- installing ------------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parents[1]
PEER = "http://127.0.0.1:8080/q"
LEFT_OUT = shutil.ignore_patterns(".*", "build", "dist", "*.egg-info", "__pycache__", "*.so", "*.c")
needs_twins_run = pytest.mark.skipif(
    os.environ.get("DROPR_REQUIRE_EXTENSIONS", "") not in ("", "0"),
    reason="installs without the compiled extensions; runs with the suite on the plain-Python twins",
)


def clean_env(**env: str) -> dict[str, str]:
    """This environment without dropr's switches, with ``env``."""
    return {k: v for k, v in os.environ.items() if not k.startswith("DROPR_")} | env


@pytest.fixture(scope="module")
def sdist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The source archive of (a copy of) the project, as ``python -m build --sdist`` makes it."""
    tmp = tmp_path_factory.mktemp("sdist")
    shutil.copytree(ROOT, tmp / "source", ignore=LEFT_OUT)
    command = [sys.executable, "-m", "build", "--sdist", "--outdir", str(tmp), str(tmp / "source")]
    subprocess.run(command, check=True, capture_output=True, env=clean_env())
    (archive,) = tmp.glob("dropr-*.tar.gz")
    return archive


def build_wheel(sdist: Path, out: Path, **env: str) -> tuple[subprocess.CompletedProcess[str], list[Path]]:
    """``pip wheel`` of the source archive with ``env``: the build's output and its wheels."""
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--verbose", "--wheel-dir", str(out), str(sdist)]
    done = subprocess.run(command, capture_output=True, text=True, env=clean_env(**env), check=False)
    return done, sorted(out.glob("*.whl")) if out.is_dir() else []


@pytest.fixture(scope="module")
def no_compiler_build(
    sdist: Path, tmp_path_factory: pytest.TempPathFactory
) -> tuple[subprocess.CompletedProcess[str], Path]:
    """dropr built where the C compiler fails (``CC=false``): the build's output and its wheel."""
    done, wheels = build_wheel(sdist, tmp_path_factory.mktemp("wheels"), CC="false")
    assert done.returncode == 0, done.stdout + done.stderr
    (wheel,) = wheels
    return done, wheel


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory: pytest.TempPathFactory, no_compiler_build: tuple[object, Path]) -> Path:
    """A new virtual environment holding that wheel and no extras: its ``bin/``."""
    venv = tmp_path_factory.mktemp("venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    install = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet"]
    subprocess.run([*install, str(no_compiler_build[1])], check=True, capture_output=True)
    return venv / "bin"


@pytest.mark.slow
@needs_twins_run
def test_a_build_without_a_c_compiler_falls_back_to_the_twins_in_one_warning(
    no_compiler_build: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    done, wheel = no_compiler_build
    output = done.stdout + done.stderr
    warnings = [line.strip() for line in output.splitlines() if "dropr:" in line and "warning" in line]
    assert warnings == [
        "warning: dropr: cannot compile the extensions (false exited with status 1); installing the plain-Python twins"
    ]
    assert output.count("plain-Python") == 1 and "eprecat" not in output
    assert wheel.name.endswith("-py3-none-any.whl")


@pytest.mark.slow
@needs_twins_run
def test_the_twins_installed_without_a_compiler_work(fresh_venv: Path, tmp_path: Path) -> None:
    code = "import sys, dropr, dropr._impl as i; print(i.IMPLEMENTATION, dropr.fastput(b'x', PEER, spool=sys.argv[1]))"
    done = subprocess.run(
        [fresh_venv / "python", "-c", f"PEER = {PEER!r}; {code}", tmp_path], capture_output=True, text=True, check=True
    )
    implementation, msg_id = done.stdout.split()
    assert implementation == "python"
    assert [path.name[1:31] for path in (tmp_path / "queue").glob("*/*")] == [msg_id]


@pytest.mark.slow
@needs_twins_run
def test_a_build_without_a_c_compiler_fails_when_the_extensions_are_required(sdist: Path, tmp_path: Path) -> None:
    done, wheels = build_wheel(sdist, tmp_path, CC="false", DROPR_REQUIRE_EXTENSIONS="1")
    assert done.returncode != 0 and wheels == []
    assert "dropr: cannot compile the extensions (false exited with status 1)" in done.stdout + done.stderr


@pytest.mark.slow
@needs_twins_run
@pytest.mark.parametrize(
    ("program", "args", "missing", "extra"),
    [
        ("dropr-relay", ["--spool", "{tmp}/spool"], "pycurl", "relay"),
        ("dropr-relay", ["--spool", "{tmp}/spool", "--once"], "pycurl", "relay"),
        ("dropr-server", ["--store", "{tmp}/store", "--listen", "127.0.0.1:0"], "aiohttp", "server"),
    ],
)
def test_without_extras_a_command_names_the_extra_in_one_line(
    fresh_venv: Path, tmp_path: Path, program: str, args: list[str], missing: str, extra: str
) -> None:
    """As ``pip install .`` leaves it; the relay has a message for an HTTP peer waiting."""
    put = "import sys, dropr; dropr.fastput(b'x', sys.argv[2], spool=sys.argv[1])"
    subprocess.run([fresh_venv / "python", "-c", put, tmp_path / "spool", PEER], check=True)
    command = [fresh_venv / program, *(arg.format(tmp=tmp_path) for arg in args)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == f"{program}: {missing} is not installed: pip install 'dropr[{extra}]'\n"
    for query in ("--version", "--help"):
        assert subprocess.run([fresh_venv / program, query], capture_output=True, check=False).returncode == 0
