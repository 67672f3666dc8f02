"""The main job end to end on the real default model, with one configuration to stay quick."""

import json

import pytest

from pocketml.cli import main
from pocketml.optimize import _is_attention, _is_value_projection, _quantize, markdown, optimize, preset_configs


def test_optimize_writes_a_complete_report(tmp_path, monkeypatch):
    report = optimize(configs=["int8", "int4-g32"], out_dir=tmp_path, repeats=1, progress=False)
    assert [r.name for r in report.results] == ["int8", "int4-g32"]
    int8, int4 = report.results
    assert int8.quantized_layers == int4.quantized_layers == 37
    assert int4.weight_mib < int8.weight_mib < report.fp32_model_mib
    assert 4.0 < int4.bits_per_weight < 5.0 and 8.0 <= int8.bits_per_weight < 8.2
    assert int8.cosine_min > 0.999 > int4.cosine_min > 0.97  # calibrated MSE: 0.9718 (RTN alone: 0.9635)
    assert report.calibration_sentences == 24
    assert report.chosen == "int8"  # the only one above the default 0.99 threshold
    assert report.coreml_weights_identical
    assert (tmp_path / "model.mlpackage" / "Manifest.json").exists()
    assert (tmp_path / "golden" / "manifest.json").exists()
    if report.swift_validation.startswith("passed"):  # Swift present: the layers pass, Core ML only on Apple
        assert "passed: 3 checks" in report.swift_validation or "passed: 4 checks" in report.swift_validation
        assert "coreml_predict" in report.swift_validation
    else:
        assert report.swift_validation.startswith("skipped"), report.swift_validation
    assert (tmp_path / "accuracy_vs_size.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    data = json.loads((tmp_path / "report.json").read_text())
    assert data["chosen"] == "int8" and len(data["results"][0]["layer_speed"]) == 6
    assert data["min_cosine"] == 0.99 and data["chosen_meets_min_cosine"]
    assert "| int8 **(chosen)** |" in (tmp_path / "report.md").read_text()
    # No config reaching the threshold: the most accurate is exported and the report says so.
    report.chosen_meets_min_cosine, report.min_cosine = False, 0.9999
    assert "NO config reached cosine >= 0.9999" in markdown(report)
    # A second run stopped after replacing the package (here in the Swift check) leaves no report
    # of the first run describing the new files.
    import pocketml.optimize

    def interrupted(bundle):
        raise KeyboardInterrupt
    monkeypatch.setattr(pocketml.optimize, "_validate_in_swift", interrupted)
    with pytest.raises(KeyboardInterrupt):
        optimize(configs=["int4-g64"], out_dir=tmp_path, repeats=1, progress=False)
    assert not any((tmp_path / name).exists() for name in ("report.json", "report.md", "accuracy_vs_size.png"))


def test_presets_selecting_layers_by_name_find_them_or_fail():
    import torch

    assert all(_is_value_projection(name) for name in
               ("encoder.layer.0.attention.self.value", "transformer.layer.0.attention.v_lin", "layers.3.self_attn.v_proj"))
    assert all(_is_attention(name) for name in
               ("encoder.layer.0.attention.self.query", "layers.0.self_attn.q_proj", "h.0.attn.c_attn"))
    assert not _is_attention("encoder.layer.0.intermediate.dense")
    model = torch.nn.Sequential(torch.nn.Linear(64, 64))  # no value projection: the preset would be plain int4
    with pytest.raises(ValueError, match="preset 'int4-g32-v6' selects layers by name, and none"):
        _quantize(model, "int4-g32-v6", [torch.randn(4, 64)])


def test_cli_errors_are_clear(tmp_path, capsys):
    assert main(["optimize", str(tmp_path / "missing")]) == 2
    assert "argument 'model': expected a Hugging Face model directory" in capsys.readouterr().err
    (tmp_path / "file").write_text("")  # refused before any quantizing, not minutes later
    assert main(["optimize", "--out", str(tmp_path / "file")]) == 2
    assert "argument '--out': expected a directory, got the file" in capsys.readouterr().err
    assert main(["optimize", "--min-cosine", "nan", "--out", str(tmp_path / "o")]) == 2
    assert "argument '--min-cosine': expected a cosine from 0 to 1, got nan" in capsys.readouterr().err
    assert main(["optimize", "--configs", "int8,int7", "--out", str(tmp_path)]) == 2
    assert "argument '--configs': expected names from" in capsys.readouterr().err
    assert main(["optimize", "--configs", ",", "--out", str(tmp_path / "out")]) == 2
    assert "argument '--configs': expected at least one preset name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    # What --out would replace must be an earlier run's: golden/ held a user's bundles and notes, deleted.
    (tmp_path / "proj" / "golden").mkdir(parents=True)
    (tmp_path / "proj" / "golden" / "notes.txt").write_text("mine")
    assert main(["optimize", "--configs", "int8", "--out", str(tmp_path / "proj")]) == 2
    assert "argument '--out': " in capsys.readouterr().err and (tmp_path / "proj" / "golden" / "notes.txt").exists()
    (tmp_path / "proj2" / "model.mlpackage").mkdir(parents=True)
    assert main(["optimize", "--configs", "int8", "--out", str(tmp_path / "proj2")]) == 2
    assert "model.mlpackage' exists and is not a Core ML package" in capsys.readouterr().err
    with pytest.raises(TypeError, match="argument 'configs': expected a list of preset names, got the string 'int8'"):
        optimize(None, "int8", tmp_path / "o3")
    for command in (["optimize", "--repeats", "0"], ["selftest", "--repeats", "0"]):
        with pytest.raises(SystemExit):
            main(command)
        assert "expected an integer >= 1, got 0" in capsys.readouterr().err
    with pytest.raises(ValueError, match="argument 'configs'"):
        preset_configs("fp8")
