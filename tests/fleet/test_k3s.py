"""deploy/k3s/rkserve.yaml: valid against the Kubernetes schemas (offline), and its settings
are settings rkserve accepts."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from rkserve.config import load_settings

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "k3s" / "rkserve.yaml"
KUBERNETES = "1.31.0"  # k3s's stable channel at the time of writing
pytestmark = pytest.mark.process  # kubernetes-validate
CI = os.environ.get("CI") == "true"


def validate(path: Path) -> subprocess.CompletedProcess:
    tool = Path(sys.executable).parent / "kubernetes-validate"
    if not tool.exists():
        if sys.version_info < (3, 11):
            pytest.skip("kubernetes-validate is a dev dependency of the 3.11 environment")
        if CI:
            pytest.fail("kubernetes-validate is missing in CI (the dev extra pins it)")
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate)")
    argv = [str(tool), "-k", KUBERNETES, "--strict", str(path)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=120)


def test_manifest_is_valid_kubernetes() -> None:
    done = validate(MANIFEST)
    assert done.returncode == 0, done.stdout + done.stderr
    for kind in ("namespace/rkserve", "configmap/rkserve-settings", "daemonset/rkserve"):
        assert f"passed for resource {kind}" in done.stdout + done.stderr


def test_the_validator_rejects_a_misspelt_field(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(MANIFEST.read_text().replace("hostNetwork:", "hostNetwrk:"))
    done = validate(bad)
    assert done.returncode != 0 and "hostNetwrk" in done.stdout + done.stderr


def test_settings_in_the_configmap_are_rkserve_settings(tmp_path: Path) -> None:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    config = next(d for d in docs if d["kind"] == "ConfigMap")
    path = tmp_path / "rkserve.yaml"
    path.write_text(config["data"]["rkserve.yaml"])
    settings = load_settings(path, environ={})
    assert settings.sysroot == "/host" and settings.metrics_port == 9464
    daemonset = next(d for d in docs if d["kind"] == "DaemonSet")
    mounts = daemonset["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
    # every board file the probes read under sysroot is mounted there
    for probed in ("usr/lib/librknnrt.so", "proc/device-tree", "dev/dri", "sys/kernel/debug"):
        assert any(m["mountPath"] == f"/host/{probed}" for m in mounts), probed
