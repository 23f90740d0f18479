"""`kdzoo bench` runs end to end on tiny settings and reports what it promises."""
import json

from kdzoo.cli import main


def test_bench_command_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    argv = ["bench", "--teacher", "resnet8", "--student", "resnet8", "--images", "96",
            "--test-images", "32", "--batch-size", "16", "--steps", "1", "--rounds", "1",
            "--warmup", "1", "--cases", "st,st-cached", "--epoch", "--json", str(out),
            "--workdir", str(tmp_path)]
    assert main(argv) == 0, capsys.readouterr().err
    results = json.loads(out.read_text())
    assert results["machine"]["torch"] and results["matmul_peak_gflops"] > 0
    for case in ("st", "st-cached"):
        sides = results["cases"][case]["sides"]
        assert set(sides) == {"conventional", "kdzoo"}
        assert sides["kdzoo"]["images_per_second_median"] > 0
        assert sides["kdzoo"]["ratio_median"] > 0
        assert results["cases"][case]["epoch"]["seconds"]["kdzoo"] > 0
    assert results["cases"]["st-cached"]["gflop_per_image"] < results["cases"]["st"][
        "gflop_per_image"]  # no teacher forward with a filled cache
    assert "[st]" in capsys.readouterr().out


def test_bench_refuses_unknown_cases_and_existing_json(tmp_path, capsys):
    assert main(["bench", "--cases", "stt"]) == 2
    assert "did you mean 'st'" in capsys.readouterr().err
    existing = tmp_path / "x.json"
    existing.write_text("{}")
    assert main(["bench", "--json", str(existing)]) == 2
    assert existing.read_text() == "{}"
