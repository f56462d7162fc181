from __future__ import annotations

import re
from pathlib import Path

import pytest

from rkserve.config import describe_settings, load_settings
from rkserve.errors import ConfigError

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def test_precedence_file_then_env_then_flags(tmp_path):
    path = tmp_path / "rkserve.yaml"
    path.write_text("queue_size: 3\ndeadline_ms: 100\nstrict: true\nendpoint: tcp://*:6000\n")
    env = {"RKSERVE_DEADLINE_MS": "200", "RKSERVE_STRICT": "no", "RKSERVE_WORKERS": "3"}
    settings = load_settings(path, environ=env, overrides={"workers": 5, "queue_size": None})
    assert (settings.queue_size, settings.deadline_ms, settings.strict, settings.workers) == (
        3,
        200,
        False,
        5,
    )
    assert settings.endpoints == ["tcp://*:6000"]
    assert load_settings(environ={}).models_dir == "models"


@pytest.mark.parametrize(
    "content,env,words",
    [
        ("queue_sise: 3\n", {}, "unknown settings \\['queue_sise'\\]"),
        ("queue_size: many\n", {}, "queue_size: expected int"),
        ("- a list\n", {}, "expected a mapping"),
        ("", {"RKSERVE_STRICT": "maybe"}, "RKSERVE_STRICT: strict: expected bool"),
        ("backend: tpu\n", {}, "backend must be one of"),
        ("queue_size: 0\n", {}, "queue_size must be at least 1"),
        # before: a traceback; every request too_large; every image too_large
        ("workers: -1\n", {}, "workers must be 0 \\(one per core\\) or more"),
        ("max_message_mb: 0\n", {}, "max_message_mb must be positive"),
        ("max_pixels: 0\n", {}, "max_pixels must be at least 64"),
    ],
)
def test_errors_say_where_and_what(tmp_path, content, env, words):
    path = tmp_path / "rkserve.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=words):
        load_settings(path, environ=env)


def test_config_doc_is_generated_from_the_settings():
    assert describe_settings() in DOC.read_text(), (
        "regenerate docs/CONFIG.md from describe_settings()"
    )
    assert len(re.findall(r"^\| `", describe_settings(), re.M)) >= 15


def test_the_frigate_section_holds_the_frigate_settings(tmp_path):
    path = tmp_path / "rkserve.yaml"
    path.write_text(
        "frigate:\n  endpoint: ipc:///run/rkserve/frigate.sock, tcp://*:5556\n"
        "  uploads: true\n  input_dtype: float_denorm\n"
    )
    settings = load_settings(path, environ={"RKSERVE_FRIGATE_DEADLINE_MS": "150"})
    assert settings.frigate_endpoints == ["ipc:///run/rkserve/frigate.sock", "tcp://*:5556"]
    assert settings.frigate_uploads and settings.frigate_input_dtype == "float_denorm"
    assert settings.frigate_deadline_ms == 150 and settings.frigate_pixel_format == "rgb"
    assert load_settings(environ={}).frigate_endpoints == []
    for text, words in [
        ("frigate: [a]\n", "frigate: expected a mapping"),
        ("frigate: {endpoints: x}\n", "unknown settings \\['frigate_endpoints'\\]"),
        ("frigate: {input_dtype: int}\n", "frigate_input_dtype must be one of float, float_denorm"),
        ("frigate: {pixel_format: yuv}\n", "frigate_pixel_format must be one of rgb, bgr"),
    ]:
        path.write_text(text)
        with pytest.raises(ConfigError, match=words):
            load_settings(path, environ={})
