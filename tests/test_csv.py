"""CSV data in and samples out: `pretrain --data x.csv` (with or without a header, with a label column)
and `sample --out x.csv`, checked against the numbers written."""

import numpy as np
import pytest

from conftest import cli
from flowsteer.csv_io import read_csv, write_csv
from flowsteer.data import load_data
from flowsteer.errors import DataError


def moons_like(n=400, seed=0):
    rng = np.random.default_rng(seed)
    t = rng.uniform(0, np.pi, n)
    side = rng.integers(0, 2, n)
    x = np.stack([np.cos(t) + side, np.sin(t) * (1 - 2 * side) + 0.5 * side], 1) + 0.05 * rng.standard_normal((n, 2))
    return x, side


def test_pretrain_from_csv_then_sample_to_csv_round_trip(tmp_path):
    x, y = moons_like()
    lines = ["a,b,label"] + [f"{float(a)!r},{float(b)!r},{int(c)}" for (a, b), c in zip(x, y)]
    (tmp_path / "points.csv").write_text("\n".join(lines) + "\n")
    data = load_data(str(tmp_path / "points.csv"), normalize="none")
    rows = np.concatenate([data.train.x.numpy(), data.heldout.x.numpy()])
    labels = np.concatenate([data.train.labels.numpy(), data.heldout.labels.numpy()])
    got = sorted(zip(map(tuple, rows.tolist()), labels.tolist()))
    assert got == sorted(zip(map(tuple, x.astype(np.float32).tolist()), y.tolist()))  # every row, with its label
    assert data.train.num_classes == 2

    proc = cli("pretrain", "--data", str(tmp_path / "points.csv"), "--steps", "200", "--batch-size", "64",
               "--conditional", "--out", str(tmp_path / "run"), "--quiet")
    assert proc.returncode == 0, proc.stderr
    proc = cli("sample", "--model", str(tmp_path / "run"), "--n", "300", "--label", "1", "--out",
               str(tmp_path / "samples.csv"))
    assert proc.returncode == 0, proc.stderr
    text = (tmp_path / "samples.csv").read_text().splitlines()
    assert text[0] == "x0,x1" and len(text) == 301
    back, labels = read_csv(tmp_path / "samples.csv")
    assert labels is None and back.shape == (300, 2) and np.isfinite(back).all()
    # the same samples as .npy: the CSV holds them exactly (float32 repr)
    cli("sample", "--model", str(tmp_path / "run"), "--n", "300", "--label", "1", "--out", str(tmp_path / "s.npy"))
    np.testing.assert_array_equal(back.astype(np.float32), np.load(tmp_path / "s.npy"))


def test_a_csv_without_header_has_no_labels_and_every_column_is_a_feature(tmp_path):
    (tmp_path / "plain.csv").write_text("1,2,3\n4,5,6\n\n7,8,9\n")
    x, labels = read_csv(tmp_path / "plain.csv")
    assert labels is None and x.tolist() == [[1, 2, 3], [4, 5, 6], [7, 8, 9]]


def test_write_then_read_gives_the_same_float32_numbers(tmp_path):
    x = np.random.default_rng(1).standard_normal((50, 3)).astype(np.float32) * 1e-3
    write_csv(x, tmp_path / "x.csv")
    back, _ = read_csv(tmp_path / "x.csv")
    np.testing.assert_array_equal(back.astype(np.float32), x)


@pytest.mark.parametrize("text, message", [
    ("a,b\n1,2\n3,oops\n", "row 3, column 2 ('b') is 'oops', not a number"),
    ("1,2\n3\n", "row 2 has 1 field(s), the first row 2"),
    ("a,y\n1,0.5\n2,1\n", "must hold whole class numbers"),
    ("y\n1\n2\n", "no feature columns"),
    ("", "empty"),
])
def test_bad_csv_files_get_one_line_naming_the_row(tmp_path, text, message):
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_csv(tmp_path / "bad.csv")


def test_csv_samples_of_images_are_refused_before_sampling(tmp_path):
    with pytest.raises(Exception, match="holds vectors"):
        write_csv(np.zeros((2, 1, 8, 8)), tmp_path / "x.csv")


def test_a_blank_field_in_a_headerless_first_row_is_named_not_taken_for_a_header(tmp_path):
    (tmp_path / "gap.csv").write_text("1.5,\n2,3\n4,5\n6,7\n")
    with pytest.raises(DataError, match=r"row 1, column 2 is '', not a number"):
        read_csv(tmp_path / "gap.csv")
