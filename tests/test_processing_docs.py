"""The "Edge processing" page (docs/processing.md) tells the truth: its pump example is the shipped
config and validates, its state snippet validates, it names every processing key."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from agent.app.config import load_config
from agent.core.processing.config import (
    AlarmSpec,
    BearingSpec,
    CounterSpec,
    DeviceProcessing,
    ModelSpec,
    PredictSpec,
    StateRule,
    StateSpec,
    WaveformSpec,
    WindowSpec,
    ZoneSpec,
)
from agent.core.processing.features import fault_frequencies
from agent.south.registry import load_drivers

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "processing.md"


def _blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", DOC.read_text(encoding="utf-8"), re.S)


def test_the_pump_example_is_config_pump_pdm_and_validates(tmp_path: Path) -> None:
    example = _blocks()[1]
    shipped = (ROOT / "config" / "pump-pdm.yaml").read_text()
    assert example in shipped  # the doc shows the shipped file's device, word for word
    config = load_config(ROOT / "config" / "pump-pdm.yaml", load_drivers())
    pump = config.devices[0]
    assert pump.state is not None
    vibration = next(t for t in pump.tags if t.name == "vibration")
    assert vibration.waveform is not None and vibration.waveform.bearing is not None
    # the worked example's BPFO: 74.9 Hz at 1480 rpm
    assert round(fault_frequencies(vibration.waveform, 1480)["bpfo"], 1) == 74.9


def test_the_state_snippet_and_the_demo_config_validate(tmp_path: Path) -> None:
    snippet = _blocks()[0]
    path = tmp_path / "state.yaml"
    path.write_text(
        "agent: {id: doc}\ndevices:\n  - name: m\n    driver: modbus\n"
        "    connection: {host: h}\n" + snippet + "    tags:\n"
        "      - {name: alarm_code, table: holding, address: 0, type: uint16}\n"
        "      - {name: spindle_speed, table: holding, address: 1, type: uint16}\n"
        "      - {name: door_open, table: holding, address: 2, type: bool, bit: 0}\n"
    )
    load_config(path, load_drivers())
    load_config(ROOT / "config" / "pdm-demo.yaml", load_drivers())


def _keys(model: type[BaseModel]) -> set[str]:
    return {info.alias or name for name, info in model.model_fields.items()}


def test_every_prediction_key_is_documented() -> None:
    """docs/prediction.md names every key of predict: and model:."""
    text = (ROOT / "docs" / "prediction.md").read_text(encoding="utf-8")
    keys = _keys(PredictSpec) | _keys(ModelSpec) | {"within", "predicted"}
    assert sorted(k for k in keys if f"`{k}`" not in text) == []


def test_every_processing_key_is_documented() -> None:
    text = DOC.read_text(encoding="utf-8")
    models: list[type[Any]] = [
        WindowSpec,
        DeviceProcessing,
        WaveformSpec,
        BearingSpec,
        ZoneSpec,
        CounterSpec,
        AlarmSpec,
        StateRule,
        StateSpec,
    ]
    keys = set().union(*(_keys(m) for m in models)) | {"max_silence", "deadband_percent"}
    missing = sorted(k for k in keys if f"`{k}`" not in text)
    assert missing == []
