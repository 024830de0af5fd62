"""Params are validated before any work: typos and bad values are one-sentence errors."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.core.errors import ParamsError
from stages.core.params import SplitSection, load_params, parse_params, parse_section
from tests.conftest import REPO_ROOT


def test_repository_params_file_is_valid() -> None:
    params = load_params(REPO_ROOT / "params.yaml")
    assert params.data.task == "classify"
    assert params.paths.reports == Path("reports")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({"data": {"source": "x"}, "train": {"epoch": 3}}, ["'train.epoch'", "epochs", "allowed keys"]),
        ({"data": {"source": "x", "format": "cocox"}}, ["'data.format'", "'voc'", "'folder'"]),
        ({"datas": {"source": "x"}}, ["unknown key 'datas'", "data"]),
        ({"data": {"source": "x"}, "train": {"lr": -1}}, ["'train.lr'", "greater than 0"]),
        ({"data": {"source": "x"}, "split": {"fractions": {"train": 0.5}}}, ["add up to 1"]),
        (
            {"data": {"source": "x"}, "augment": {"transforms": [{"name": "A", "parms": {}}]}},
            ["'augment.transforms.0.parms'", "name, params"],
        ),
        ({"data": {}}, ["missing required key 'data.source'"]),
    ],
)
def test_bad_params_name_the_key_and_what_is_allowed(raw: dict, expected: list[str]) -> None:
    with pytest.raises(ParamsError) as caught:
        parse_params(raw)
    message = str(caught.value)
    assert "\n" not in message
    for fragment in expected:
        assert fragment in message


def test_stages_accept_the_pipeline_sections_and_leave_them_to_their_pipelines() -> None:
    """gate: and tune: belong to pipelines/; a stage loads a file with them (even a wrong one)."""
    raw = {"data": {"source": "x"}, "gate": {"tolernce": 1}, "tune": {"trails": 3}}
    params = parse_params(raw)
    assert params.gate == {"tolernce": 1} and params.tune == {"trails": 3}
    assert parse_params({"data": {"source": "x"}}).tune == {}
    with pytest.raises(ParamsError, match=r"'tune' = 3 is invalid"):  # still a mapping
        parse_params({"data": {"source": "x"}, "tune": 3})


def test_a_pipeline_section_is_worded_like_a_stage_section() -> None:
    """``parse_section`` names the key dotted from the top and lists the allowed keys there."""
    with pytest.raises(ParamsError) as caught:
        parse_section({"fractions": {"tran": 0.5}}, "split", SplitSection, source="p.yaml")
    message = str(caught.value)
    assert message.startswith("p.yaml: unknown key 'split.fractions.tran'; allowed keys here are: train")
    assert parse_section(None, "split", SplitSection) == SplitSection()


def test_core_reads_ultralytics_arguments_without_importing_it() -> None:
    """stages/core may not import ultralytics (AGPL boundary): the arguments come from its YAML file."""
    code = (
        "import sys\n"
        "from stages.core.params import parse_params, ultralytics_cfg_keys\n"
        "parse_params({'data': {'source': 'x'}, 'train': {'detector': {'ultralytics': {'mosaic': 0.5}}}})\n"
        "assert {'mosaic', 'hsv_h', 'close_mosaic'} <= ultralytics_cfg_keys()\n"
        "heavy = ('ultralytics', 'torch', 'albumentations', 'great_expectations')\n"
        "assert not [m for m in heavy if m in sys.modules], sys.modules.keys() & set(heavy)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr


def test_invalid_yaml_names_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("data:\n  source: [unclosed\n", encoding="utf-8")
    with pytest.raises(ParamsError, match=r"p\.yaml: invalid YAML at line \d+"):
        load_params(bad)


def test_missing_params_file(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")


def test_stage_cli_with_typo_exits_nonzero_with_one_line(tmp_path: Path) -> None:
    params = yaml.safe_load((REPO_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["train"]["learning_rate"] = params["train"].pop("lr")
    file = tmp_path / "typo.yaml"
    file.write_text(yaml.safe_dump(params), encoding="utf-8")
    result = subprocess.run(
        [sys.executable, "-m", "stages.split", "--params", str(file)],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "'train.learning_rate'" in lines[0] and "Traceback" not in result.stderr
