"""What ships for operators: systemd units and an example relay configuration that work."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dropr.relay import config

ROOT = Path(__file__).resolve().parent.parent
UNITS = ROOT / "scripts" / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed")
def test_the_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified as installed: ExecStart pointing at this installation's commands."""
    names = {"dropr-relay@.service": "dropr-relay@orders.service", "dropr-server.service": "dropr-server.service"}
    for source, target in names.items():
        text = (UNITS / source).read_text()
        for command in ("dropr-relay", "dropr-server"):
            installed = Path(sys.executable).parent / command
            assert installed.exists(), f"{command} is not installed beside {sys.executable}"
            text = text.replace(f"/usr/local/bin/{command}", str(installed.absolute()))
        (tmp_path / target).write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / target) for target in names.values())],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0 and not done.stderr.strip(), done.stderr


def test_the_relay_unit_runs_one_relay_per_spool() -> None:
    text = (UNITS / "dropr-relay@.service").read_text()
    assert "--spool /var/spool/dropr/%i" in text and "RestartPreventExitStatus=2 3" in text


def test_the_example_configuration_is_what_the_relay_takes(tmp_path: Path) -> None:
    settings = config.read_file(str(ROOT / "scripts" / "relay.toml"))
    built = config.build(str(tmp_path / "spool"), settings, {})
    assert built == config.RelayConfig(spool=str(tmp_path / "spool"))  # it shows the defaults


def test_the_readme_configuration_works_when_copied(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```toml\n(.*?)```", readme, re.S)
    assert blocks
    for block in blocks:
        path = tmp_path / "relay.toml"
        path.write_text(block)
        config.build(str(tmp_path / "spool"), config.read_file(str(path)), {})
