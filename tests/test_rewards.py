"""Built-in rewards, user rewards and the checks on what a reward returns."""

import numpy as np
import pytest
import torch

from flowsteer.data import load_digits
from flowsteer.rewards import RewardError, build_reward, score
from flowsteer.rewards.classifier import digit_probabilities


def test_digit_classifier_matches_sklearn_and_is_cached(tmp_path, monkeypatch):
    from sklearn.datasets import load_digits as skl
    from sklearn.linear_model import LogisticRegression

    d = skl()
    x = d.images.reshape(-1, 64) / 8.0 - 1.0
    ref = LogisticRegression(max_iter=5000).fit(x, d.target).predict_proba(x)
    np.testing.assert_allclose(digit_probabilities(torch.tensor(x, dtype=torch.float32)).numpy(), ref, atol=1e-5)


def test_even_digits_reward_on_real_digits():
    data = load_digits()
    r = score(build_reward("even-digits"), data.x)
    even = (data.labels % 2 == 0)
    assert r[even].mean() > 0.95 and r[~even].mean() < 0.05
    assert build_reward("digits:0,2,4,6,8").name == build_reward("even-digits").name
    assert torch.all((r >= 0) & (r <= 1))


def test_jpeg_rewards_follow_the_ddpo_definition():
    from PIL import Image
    import io

    flat = torch.zeros(2, 3, 16, 16)
    noisy = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 2 - 1
    comp = build_reward("jpeg-compressibility")
    r_flat, r_noisy = score(comp, flat), score(comp, noisy)
    assert (r_flat > r_noisy).all()  # flat images compress better
    img = ((noisy[0] + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="JPEG", quality=95)
    assert r_noisy[0].item() == pytest.approx(-buf.tell() / 1000.0)
    torch.testing.assert_close(score(build_reward("jpeg-incompressibility"), noisy), -r_noisy)


def test_target_reward_inline_and_file(tmp_path):
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    torch.testing.assert_close(score(build_reward("target:1,0"), x), torch.tensor([0.0, -1.0]))
    np.save(tmp_path / "a.npy", np.array([0.0, 2.0]))
    torch.testing.assert_close(score(build_reward(f"target:{tmp_path / 'a.npy'}"), x), torch.tensor([-5.0, -4.0]))


def test_python_rewards_module_and_file(tmp_path, monkeypatch):
    (tmp_path / "myrew.py").write_text("import numpy as np\ndef f(x):\n    return np.asarray(x[:, 0]).tolist()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    x = torch.tensor([[1.0, 5.0], [2.0, 6.0]])
    torch.testing.assert_close(score(build_reward("python:myrew:f"), x), torch.tensor([1.0, 2.0]))
    torch.testing.assert_close(score(build_reward(f"python:{tmp_path / 'myrew.py'}:f"), x), torch.tensor([1.0, 2.0]))


def test_weighted_sum():
    x = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    r = score(build_reward("0.5*target:1,0+2*target:0,0"), x)
    torch.testing.assert_close(r, torch.tensor([0.5 * 0 + 2 * -1.0, 0.5 * -1 + 0.0]))


def test_reward_errors(tmp_path):
    with pytest.raises(RewardError, match="unknown reward 'aesthetic'"):
        build_reward("aesthetic")
    with pytest.raises(RewardError, match="clip: empty prompt"):
        build_reward("clip:")
    with pytest.raises(RewardError, match="does not exist"):
        build_reward(f"python:{tmp_path / 'none.py'}:f")
    (tmp_path / "r.py").write_text("def short(x):\n    return [0.0] * (len(x) - 1)\ndef boom(x):\n    raise ValueError('bad pixel')\n")
    with pytest.raises(RewardError, match="has no function 'nope'"):
        build_reward(f"python:{tmp_path / 'r.py'}:nope")
    x = torch.zeros(4, 2)
    with pytest.raises(RewardError, match=r"shape \(3,\) for 4 samples"):
        score(build_reward(f"python:{tmp_path / 'r.py'}:short"), x)
    with pytest.raises(RewardError, match="raised ValueError: bad pixel"):
        score(build_reward(f"python:{tmp_path / 'r.py'}:boom"), x)
    with pytest.raises(RewardError, match="needs 8x8"):
        score(build_reward("even-digits"), x)


def test_gaussian_modes_reward_is_a_unit_bump_on_the_rewarded_modes_only():
    """gaussian-modes:0,3,5 (issue 20's 8-Gaussian task): 1 at a rewarded centre, exp(-d^2 / (2 w^2)) elsewhere with
    d the distance to the nearest rewarded centre, in [0, 1]; shares and held modes by nearest centre."""
    import math

    import numpy as np

    from flowsteer.data import make_toy
    from flowsteer.rewards.modes import BUMP_WIDTH, ModeReward, mode_centres, mode_shares

    reward = build_reward("gaussian-modes:5,0,3")
    assert isinstance(reward, ModeReward) and reward.modes == (0, 3, 5) and reward.name == "gaussian-modes:0,3,5"
    c = mode_centres()
    r = score(reward, c)
    torch.testing.assert_close(r[[0, 3, 5]].float(), torch.ones(3))
    d_neighbour = 2 * 2.0 * math.sin(math.pi / 8)  # chord between neighbouring modes
    torch.testing.assert_close(float(r[1]), math.exp(-d_neighbour**2 / (2 * BUMP_WIDTH**2)), rtol=1e-5, atol=1e-7)
    far = torch.tensor([[0.0, 0.0], [10.0, 10.0]])
    assert float(score(reward, far).max()) < 1e-3 and float(score(reward, far).min()) >= 0
    # the toy's samples land on their own modes: about 1/8 each, all three rewarded modes held
    x = torch.as_tensor(make_toy("8gaussians", 8000, seed=1))
    shares = mode_shares(x)
    assert float(shares.sum()) == pytest.approx(1.0) and np.allclose(shares.numpy(), 1 / 8, atol=0.02)
    assert reward.held(x) == 3
    only_two = torch.cat([c[[0]].repeat(50, 1), c[[3]].repeat(45, 1), c[[5]].repeat(5, 1)])  # mode 5 holds 5 %
    assert reward.held(only_two) == 2
    with pytest.raises(RewardError, match="gaussian-modes:0,3,5"):
        build_reward("gaussian-modes:9")
