"""`evaluate` writes what `report` reads, `report` takes a folder of runs, and `sample` says what a grid shows."""

import json
import shutil

from conftest import cli


def test_evaluate_writes_into_the_run_and_report_reads_a_folder_of_runs(tmp_path, moons_run):
    runs = tmp_path / "runs"
    shutil.copytree(moons_run, runs / "moons")
    proc = cli("evaluate", "--model", str(runs / "moons"), "--target", "moons", "--n", "200", "--nfe", "4,20")
    assert proc.returncode == 0, proc.stderr
    written = runs / "moons" / "evaluation.json"
    assert json.loads(written.read_text())["n_heldout"] > 0
    assert f"wrote {written} (flowsteer report reads it from there)" in proc.stdout
    assert "Frechet distance" in proc.stdout and "evaluated" in proc.stdout.splitlines()[0]

    (runs / "notes").mkdir()  # not a run: skipped, like an earlier report folder
    proc = cli("report", str(runs))
    assert proc.returncode == 0, proc.stderr
    page = (runs / "report" / "index.html").read_text()
    assert "1 run(s): 1 pretrain (pretrain on moons)" in page
    assert "From flowsteer evaluate (evaluation.json): each run&#x27;s figures at 20 NFE" in page
    assert "<th>held-out target samples</th>" in page and "Adapting" not in page
    # a second report over the same folder skips the first report's folder
    proc = cli("report", str(runs), "--out", str(tmp_path / "again"))
    assert proc.returncode == 0 and "1 run(s)" in (tmp_path / "again" / "index.html").read_text()


def test_evaluate_json_to_stdout_is_the_json_alone(moons_run):
    proc = cli("evaluate", "--model", str(moons_run), "--n", "50", "--nfe", "2", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n"] == 50


def test_an_empty_folder_is_neither_a_run_nor_holds_one(tmp_path):
    proc = cli("report", str(tmp_path))
    assert proc.returncode == 2 and "neither a run folder" in proc.stderr and "holds none" in proc.stderr
    assert not (tmp_path / "report").exists()
