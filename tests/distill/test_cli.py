"""``rsd-distill``: bad options, configs and folders are one line and exit status 2, before training."""

from __future__ import annotations

import json

import pytest

from rsd_deploy.distill import cli


def test_cli_reports_bad_config_in_one_line(tmp_path, capsys):
    assert cli.main(["student", "--base", "demo", "--method", "tsdsr", "--print-config"]) == 0
    assert json.loads(capsys.readouterr().out)["objective"]["method"] == "tsdsr"
    assert cli.main(["student", "--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: no such config file" in capsys.readouterr().err
    assert cli.main(["student", "--out", str(tmp_path)]) == 2  # no teacher given
    assert "model.teacher" in capsys.readouterr().err


@pytest.mark.parametrize("steps", ["0", "-5"])
def test_steps_below_one_are_refused(tmp_path, capsys, steps):
    """(It used to export the untrained starting point labelled as trained.)"""
    assert cli.main(["teacher", "--steps", steps, "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == f"rsd-distill: --steps must be at least 1, got {steps}\n"
    assert not (tmp_path / "run").exists()


def test_cli_names_a_missing_image_folder(tmp_path, capsys):
    config = tmp_path / "c.json"
    config.write_text(json.dumps({"data": {"hr_dirs": [str(tmp_path / "nowhere")]}}))
    assert cli.main(["teacher", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "nowhere: no such image folder" in capsys.readouterr().err


def test_a_real_size_unet_on_demo_crops_stops_before_any_model_is_built(tmp_path, capsys, monkeypatch):
    """The issue's case: the official UNet's sizes given as a partial override of the demo base."""
    import rsd_deploy.distill.trainer as trainer

    monkeypatch.setattr(trainer, "Trainer", None)  # reaching it would raise TypeError, not exit 2
    config = tmp_path / "c.yaml"
    config.write_text("model:\n  unet:\n    model_channels: 160\n    channel_mult: [1, 2, 2, 4]\n    num_res_blocks: [2, 2, 2, 2]\n")
    assert cli.main(["teacher", "--config", str(config), "--out", str(tmp_path / "run")]) == 2
    assert "config.data.crop: 64 gives a 16 px latent" in capsys.readouterr().err
