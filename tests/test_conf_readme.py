"""What conf/README.md promises about environments, --env with --params, and lists on the command line,
checked against Kedro's own option parsing and config loader (no run).

The old conf/README.md was Kedro's template; the first test failed on it (no environment described).
"""

from __future__ import annotations

from pathlib import Path

import click
import pytest
from kedro.config import OmegaConfigLoader
from kedro.framework.cli.project import run
from omegaconf.resolvers import oc

from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "conf" / "README.md").read_text()


def test_every_environment_folder_is_described_with_its_data_root() -> None:
    for env in sorted(p.name for p in (REPO_ROOT / "conf").iterdir() if p.is_dir()):
        assert f"| `{env}/` |" in README, env
    assert "| `neu_seg/` |" in README and "`data/neu_seg`" in README and "`kedro run --env neu_seg`" in README


def _loader(env: str, runtime_params: dict | None = None) -> OmegaConfigLoader:
    return OmegaConfigLoader(str(REPO_ROOT / "conf"), base_env="base", default_run_env="local", env=env,
                             custom_resolvers={"oc.env": oc.env}, merge_strategy={"parameters": "soft"},
                             runtime_params=runtime_params or {})


def test_params_win_over_the_environment_which_wins_over_base_key_by_key() -> None:
    assert "data.check.chunksize=8" in README
    base = _loader("local")["parameters"]["data"]["check"]
    neu = _loader("neu_seg")["parameters"]["data"]["check"]
    given = _loader("neu_seg", {"data": {"check": {"chunksize": 8}}})["parameters"]["data"]["check"]
    assert neu["chunksize"] == 32 != base["chunksize"]           # the environment names it
    assert neu["min_image_size"] == base["min_image_size"]         # ... and only it
    assert given["chunksize"] == 8 and given["min_image_size"] == base["min_image_size"]


def _parsed(args: list[str]) -> dict:
    return run.make_context("run", args).params["params"]


def test_a_list_of_several_items_cannot_be_given_with_params() -> None:
    with pytest.raises(click.UsageError, match="must contain a key and a value"):
        _parsed(["--params", "inference.tta=[hflip,vflip]"])


def test_a_one_item_list_can() -> None:
    assert _parsed(["--params", "inference.tta=[hflip]"]) == {"inference": {"tta": ["hflip"]}}


def test_a_run_file_carries_longer_lists_and_the_command_line_wins(tmp_path: Path) -> None:
    block = README.split("# run_tta.yml\n", 1)[1].split("```", 1)[0]
    run_file = tmp_path / "run_tta.yml"
    run_file.write_text("\n".join(line[2:] for line in block.splitlines()))  # the README's file, unindented
    context = run.make_context("run", ["--config", str(run_file)])
    assert context.params["params"] == {"inference": {"input_dir": "/path/to/images", "tta": ["hflip", "vflip"]}}
    assert context.params["pipeline"] == "inference"
    overridden = run.make_context("run", ["--config", str(run_file), "--params", "inference.tta=[vflip]"])
    assert overridden.params["params"] == {"inference": {"tta": ["vflip"]}}
