"""deploy/prometheus.yml, the Grafana dashboard and docs/METRICS.md hold to the daemon's /metrics."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Set

import pytest
import yaml

from rkserve.errors import BadImage
from tests.boards import AFTER_UPDATE, make_board
from tests.daemon.test_metrics import Scrape, board_daemon, jpeg, settle, synthetic_model

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
DASHBOARD = DEPLOY / "grafana-dashboard.json"
METRIC_NAME = re.compile(
    r"\b(?:rkserve|process|python)_[a-z0-9_]*[a-z0-9]\b(?!\*)"
)  # not "python_gc_*"


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Scrape:
    """Everything a board daemon exposes once it has answered and refused a request."""
    tmp = tmp_path_factory.mktemp("deploy")
    board = make_board(tmp, soc="rk3568", **AFTER_UPDATE, load="NPU load:  37%\n", freq=600_000_000)
    synthetic_model(tmp / "models" / "shapes", toolkit="2.3.0", target="rk3566")
    frigate = ("--frigate", f"ipc://{tmp}/frigate.sock")  # its metrics too
    d = board_daemon(tmp, board, tmp / "models", *frigate, soc="rk3568").start()
    try:
        with d.client() as client:
            client.classify("shapes", jpeg(0))
            with pytest.raises(BadImage):
                client.classify("shapes", b"not an image")
        return settle(d)
    finally:
        assert d.stop() == 0, d.log()


def exposed(scrape: Scrape) -> Set[str]:
    """Sample names (rkserve_requests_total, ..._bucket) and family names alike."""
    return set(scrape.samples) | set(scrape.types)


def dashboard() -> Dict[str, Any]:
    data: Dict[str, Any] = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    return data


def queries(board: Dict[str, Any]) -> List[str]:
    found = [t["expr"] for p in board["panels"] for t in p.get("targets", [])]
    found += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    return found


@pytest.mark.process
def test_every_metric_the_dashboard_queries_is_exposed(scraped: Scrape) -> None:
    names = {name for query in queries(dashboard()) for name in METRIC_NAME.findall(query)}
    assert len(names) >= 10
    missing = sorted(names - exposed(scraped))
    assert not missing, f"the dashboard queries metrics the daemon does not expose: {missing}"


def test_dashboard_is_an_importable_grafana_dashboard() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 36 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert {"board", "model"} <= set(variables)
    assert variables["board"]["allValue"] == ".+"  # "All" must not match other jobs' series
    ids, titles = set(), []
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}
        assert panel["id"] not in ids and panel["targets"]
        ids.add(panel["id"])
        titles.append(panel["title"])
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${DS_PROMETHEUS}" and target["refId"]
            if "rkserve_" in target["expr"]:
                assert "$board" in target["expr"]
    for wanted in (
        "code",
        "stage",
        "per model",
        "Queue",
        "In-flight",
        "ready",
        "NPU load",
        "NPU freq",
        "RSS",
    ):
        assert any(wanted.lower() in t.lower() for t in titles), (wanted, titles)
    overlaps = [
        (a["title"], b["title"])
        for i, a in enumerate(board["panels"])
        for b in board["panels"][i + 1 :]
        if _overlap(a["gridPos"], b["gridPos"])
    ]
    assert not overlaps


def _overlap(a: Dict[str, int], b: Dict[str, int]) -> bool:
    return (
        a["x"] < b["x"] + b["w"]
        and b["x"] < a["x"] + a["w"]
        and a["y"] < b["y"] + b["h"]
        and b["y"] < a["y"] + a["h"]
    )


def _prometheus_config() -> Dict[str, Any]:
    data: Dict[str, Any] = yaml.safe_load((DEPLOY / "prometheus.yml").read_text(encoding="utf-8"))
    return data


def test_prometheus_config_scrapes_boards_and_labels_them() -> None:
    config = _prometheus_config()
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "rkserve"]
    assert config["global"]["scrape_interval"] == job["scrape_interval"] == "15s"
    targets = [t for group in job["static_configs"] for t in group["targets"]]
    assert len(targets) >= 3 and all(t.endswith(":9464") for t in targets)
    assert job["file_sd_configs"][0]["files"]
    examples = yaml.safe_load((DEPLOY / "prometheus-boards.yml").read_text(encoding="utf-8"))
    assert all(group["targets"] for group in examples)
    (rule,) = [r for r in job["relabel_configs"] if r.get("target_label") == "board"]
    assert rule["source_labels"] == ["board", "__address__"]

    def board_label(board: str, address: str) -> str:
        # Prometheus anchors relabel regexes at both ends; no match keeps the label as it was
        joined = rule["separator"].join([board, address])
        match = re.fullmatch(rule["regex"], joined)
        return match.expand(rule["replacement"].replace("$1", r"\1")) if match else board

    assert board_label("", "rk3568-a.lan:9464") == "rk3568-a.lan"
    assert board_label("", "192.168.1.43:9464") == "192.168.1.43"
    assert board_label("", "[fe80::1]:9464") == "[fe80::1]"
    assert board_label("", "board-7") == "board-7"
    assert board_label("line-2-camera", "10.0.0.17:9464") == "line-2-camera"


@pytest.mark.process
@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool (Prometheus) not installed")
def test_promtool_accepts_the_config() -> None:
    result = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.process
def test_metrics_doc_names_exactly_what_the_daemon_exposes(scraped: Scrape) -> None:
    text = (ROOT / "docs" / "METRICS.md").read_text(encoding="utf-8")
    documented = set(METRIC_NAME.findall(text))
    unknown = sorted(documented - exposed(scraped))
    assert not unknown, f"docs/METRICS.md names metrics the daemon does not expose: {unknown}"
    families = {name for name in scraped.types if name.startswith("rkserve_")}
    undocumented = sorted(
        name for name in families if not re.search(rf"`{name}(_total)?[`{{]", text)
    )
    assert not undocumented, f"metrics missing from docs/METRICS.md: {undocumented}"
