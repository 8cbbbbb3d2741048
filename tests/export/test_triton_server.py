"""The bundled tritonserver process: a repository it cannot load fails the start loudly (the
model and the server's log), and the serving command refuses a folder that is no repository."""

from __future__ import annotations

import pytest

from rsd_deploy.export.triton_server import main, triton_server


def test_server_start_failure_is_loud(tmp_path):
    broken = tmp_path / "models" / "broken"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text('name: "broken"\nbackend: "python"\nmax_batch_size: 1\n'
                                          'input [{ name: "X" data_type: TYPE_FP32 dims: [1] }]\n'
                                          'output [{ name: "Y" data_type: TYPE_FP32 dims: [1] }]\n')
    (broken / "1" / "model.py").write_text("raise ImportError('this model cannot be imported')\n")
    with pytest.raises(RuntimeError, match="broken") as caught:
        with triton_server(tmp_path / "models", startup_timeout_s=60):
            pass
    assert "this model cannot be imported" in str(caught.value)  # the server's log says why


def test_serving_a_folder_without_models_is_one_line_exit_2(tmp_path, capsys):
    assert main([str(tmp_path)]) == 2
    error = capsys.readouterr().err.strip()
    assert "not a Triton model repository" in error and "\n" not in error
