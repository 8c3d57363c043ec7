"""Data loading, splits, normalisation and the errors users meet."""

import numpy as np
import pytest
import torch
from PIL import Image

from flowsteer.data import TOYS, Normalizer, load_data, parse_classes
from flowsteer.errors import DataError


@pytest.mark.parametrize("name", TOYS)
def test_toys_are_2d_with_independent_heldout(name):
    split = load_data(name)
    assert split.train.shape == (2,) and split.heldout.shape == (2,)
    assert len(split.train) == 20_000 and len(split.heldout) == 5_000
    assert torch.isfinite(split.train.x).all()
    assert not torch.equal(split.train.x[:10], split.heldout.x[:10])
    z = split.normalizer.encode(split.train.x)
    assert z.mean(0).abs().max() < 1e-4 and (z.std(0) - 1).abs().max() < 1e-3
    torch.testing.assert_close(split.normalizer.decode(z), split.train.x, atol=1e-5, rtol=1e-5)


def test_moons_has_known_geometry():
    x = load_data("moons").heldout.x
    assert -1.3 < x[:, 0].min() < -0.8 and 1.8 < x[:, 0].max() < 2.3
    assert -0.8 < x[:, 1].min() < -0.3 and 0.8 < x[:, 1].max() < 1.3


def test_digits_scaled_labelled_and_filterable():
    split = load_data("digits")
    assert split.train.shape == (1, 8, 8)
    assert len(split.train) + len(split.heldout) == 1797
    assert split.train.x.min() >= -1 and split.train.x.max() <= 1
    assert split.normalizer == Normalizer()  # images stay in [-1, 1]
    even = load_data("digits:0,2,4,6,8")
    assert set(torch.cat([even.train.labels, even.heldout.labels]).tolist()) == {0, 2, 4, 6, 8}
    assert parse_classes("5-9") == (5, 6, 7, 8, 9)
    with pytest.raises(DataError, match="0..9"):
        parse_classes("3,12")


def test_split_is_fixed_and_disjoint():
    a, b = load_data("digits"), load_data("digits")
    assert torch.equal(a.heldout.x, b.heldout.x)
    rows = {tuple(r.flatten().tolist()) for r in a.train.x}
    overlap = sum(tuple(r.flatten().tolist()) in rows for r in a.heldout.x)
    assert overlap <= 5  # sklearn digits has a handful of duplicate images, nothing more


def test_npy_npz_and_image_folder(tmp_path):
    x = np.random.default_rng(0).normal(size=(50, 3)).astype(np.float32)
    np.save(tmp_path / "v.npy", x)
    split = load_data(str(tmp_path / "v.npy"))
    assert split.train.shape == (3,) and len(split.train) + len(split.heldout) == 50
    np.savez(tmp_path / "l.npz", x=x, y=np.arange(50) % 4)
    lab = load_data(str(tmp_path / "l.npz"))
    assert lab.train.num_classes == 4
    imgs = np.random.default_rng(1).integers(0, 255, size=(20, 6, 6), dtype=np.uint8)
    np.save(tmp_path / "img.npy", imgs)
    im = load_data(str(tmp_path / "img.npy"))
    assert im.train.shape == (1, 6, 6) and im.train.x.min() >= -1 and im.train.x.max() <= 1
    folder = tmp_path / "pngs"
    folder.mkdir()
    for i in range(12):
        Image.fromarray(imgs[i]).save(folder / f"{i}.png")
    fimg = load_data(str(folder))
    assert fimg.train.shape == (1, 6, 6)
    # pixel values round-trip through the [-1, 1] scaling
    all_x = torch.cat([fimg.train.x, fimg.heldout.x])
    assert torch.allclose(((all_x + 1) * 127.5).round().sort(0).values,
                          torch.tensor(imgs[:12], dtype=torch.float32)[:, None].sort(0).values)


def test_bad_data_errors(tmp_path):
    with pytest.raises(DataError, match="unknown data set 'nope'"):
        load_data("nope")
    with pytest.raises(DataError, match="does not exist"):
        load_data(str(tmp_path / "missing.npy"))
    np.save(tmp_path / "flat.npy", np.zeros(10))
    with pytest.raises(DataError, match="1 dimension"):
        load_data(str(tmp_path / "flat.npy"))
    bad = np.zeros((10, 2))
    bad[3, 1] = np.nan
    np.save(tmp_path / "nan.npy", bad)
    with pytest.raises(DataError, match="1 sample"):
        load_data(str(tmp_path / "nan.npy"))
    folder = tmp_path / "mixed"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "a.png")
    Image.new("L", (9, 8)).save(folder / "b.png")
    with pytest.raises(DataError, match="different sizes"):
        load_data(str(folder))
    (tmp_path / "junk.npy").write_bytes(b"not numpy")
    with pytest.raises(DataError, match="cannot read"):
        load_data(str(tmp_path / "junk.npy"))
