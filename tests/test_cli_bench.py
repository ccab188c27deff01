import json

from igd_fast.cli import main


def test_bench_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    rc = main(["bench", "--config", "local", "--shape", "2", "1", "32", "32", "--repeats", "1",
               "--backends", "torch", "--json", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    ops = {(r["entry"], r["op"]) for r in data["results"]}
    assert ops == {("torch", "forward"), ("torch", "forward+backward"), ("torch", "map")}
    assert all(r["median_s"] > 0 for r in data["results"])
    assert "median" in capsys.readouterr().out


def test_help_lists_every_command(capsys):
    try:
        main(["--help"])
    except SystemExit as e:
        assert e.code == 0
    text = capsys.readouterr().out
    for cmd in ("train", "score", "eval", "bench", "demo"):
        assert cmd in text
