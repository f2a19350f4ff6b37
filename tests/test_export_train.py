"""Joint training of every exit: losses fall, distillation runs, a frozen backbone stays put."""

import pytest
import torch

from edgeexit.examples import exit_accuracies, load_digits, train_multi_exit
from edgeexit.examples.models import digits_cnn, tiny_bert

torch.set_num_threads(1)


def small_digits(n=300):
    d = load_digits()
    return d.train.x[:n], d.train.y[:n], d.test.x[:200], d.test.y[:200]


def test_joint_training_learns_every_exit():
    x, y, xt, yt = small_digits()
    torch.manual_seed(0)
    model = digits_cnn(width=8)
    before = exit_accuracies(model, xt, yt)
    losses = train_multi_exit(model, x, y, epochs=4, lr=1e-2, exit_weights=(0.5, 1.0, 1.0))
    after = exit_accuracies(model, xt, yt)
    assert losses[-1] < losses[0]
    assert all(a > max(0.7, b) for a, b in zip(after, before)), (before, after)


def test_distillation_and_frozen_backbone():
    x, y, _, _ = small_digits(128)
    torch.manual_seed(0)
    model = digits_cnn(width=8)
    backbone = {k: v.clone() for k, v in model.segments.state_dict().items()}
    heads = {k: v.clone() for k, v in model.exits.state_dict().items()}
    losses = train_multi_exit(model, x, y, epochs=2, distill_weight=1.0, freeze_backbone=True)
    assert losses[-1] < losses[0]
    for k, v in model.segments.state_dict().items():
        torch.testing.assert_close(v, backbone[k])
    assert any(not torch.equal(v, heads[k]) for k, v in model.exits.state_dict().items())


def test_progress_is_told_after_every_step():
    x, y, _, _ = small_digits(100)
    steps, epochs = [], []
    train_multi_exit(digits_cnn(width=4), x, y, epochs=2, batch_size=32,
                     on_step=lambda done, total: steps.append((done, total)),
                     on_epoch=lambda done, loss: epochs.append(done))  # fmt: skip
    assert steps == [(k, 8) for k in range(1, 9)] and epochs == [1, 2]  # 4 batches of 100


def test_two_input_model_trains():
    from edgeexit.examples import make_token_task

    ids, mask, y = make_token_task(64)
    torch.manual_seed(0)
    losses = train_multi_exit(tiny_bert(layers=2), (ids, mask), y, epochs=2, batch_size=32)
    assert len(losses) == 2 and all(loss > 0 for loss in losses)


# Trains a model: left out of the fast subset (pytest -m "not slow").
pytestmark = pytest.mark.slow
