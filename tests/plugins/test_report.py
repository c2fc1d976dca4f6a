"""The printed report's metric lines, in the order of the run's task: its hooks called with a run
object and records written by hand (nothing trains)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from jaxyard.core.metrics import label
from jaxyard.plugins import report

REGRESSION = {"loss": "min", "mse": "min", "r2": "max"}


def fake_run(**extra):
    lines: list[str] = []
    return SimpleNamespace(echo=lines.append, epochs=3, started=0.0, directory="runs/x", lines=lines, **extra), lines


def end_lines(run, test) -> list[str]:
    """What the run's end prints before the other plugins (stage 6)."""
    result = SimpleNamespace(stop_reason=None, history=[{}], timings={"train_s": 1.0}, test=test)
    wrapper = report.jaxyard_on_run_end(run, result)
    next(wrapper)  # up to the other plugins
    return [line for line in run.lines if line.startswith("  Test ")]


def test_classification_lines_are_those_of_02():
    """A run object without metrics (and the classification task's): exactly the lines printed before tasks."""
    record = {"epoch": 2, "train_loss": 0.5, "train_acc": 0.75, "val_loss": 0.6, "val_acc": 0.7, "val_loss_ema": 0.55,
              "val_acc_ema": 0.72, "lr": 1e-3, "train_time": 0.1, "val_time": 0.01}
    for extra in ({}, {"metrics": {"loss": "min", "acc": "max"}}):
        run, lines = fake_run(**extra)
        report.jaxyard_on_epoch_end(run, record)
        assert lines == ["Epoch 2/3", "  Train - Loss: 0.5000, Acc: 0.7500", "  Val   - Loss: 0.6000, Acc: 0.7000",
                         "  EMA   - Loss: 0.5500, Acc: 0.7200"]
        test = {"test_loss": 0.40521, "test_acc": 0.885, "test_loss_ema": 0.41, "test_acc_ema": 0.88}
        assert end_lines(fake_run(**extra)[0], test) == [
            "  Test Loss: 0.4052", "  Test Accuracy: 0.8850",
            "  Test Loss (averaged weights): 0.4100", "  Test Accuracy (averaged weights): 0.8800",
        ]


def test_other_tasks_print_each_of_their_metrics_in_order():
    run, lines = fake_run(metrics=REGRESSION)
    record = {"epoch": 1, "train_loss": 0.2, "train_mse": 0.2, "train_r2": 0.8, "val_loss": 0.3, "val_mse": 0.3, "val_r2": 0.7}
    report.jaxyard_on_epoch_end(run, record)
    assert lines == ["Epoch 1/3", "  Train - Loss: 0.2000, MSE: 0.2000, R²: 0.8000", "  Val   - Loss: 0.3000, MSE: 0.3000, R²: 0.7000"]
    test = {"test_r2": 0.9, "test_loss": 0.1, "test_mse": 0.1}
    assert end_lines(fake_run(metrics=REGRESSION)[0], test) == ["  Test Loss: 0.1000", "  Test MSE: 0.1000", "  Test R²: 0.9000"]
    tokens = {"loss": "min", "perplexity": "min", "token_acc": "max"}
    assert end_lines(fake_run(metrics=tokens)[0], {"test_loss": 2.0, "test_perplexity": 7.389, "test_token_acc": 0.5}) == [
        "  Test Loss: 2.0000", "  Test Perplexity: 7.3890", "  Test Token Accuracy: 0.5000"]


def test_a_task_with_only_a_loss():
    run, lines = fake_run(metrics={"loss": "min"})
    report.jaxyard_on_epoch_end(run, {"epoch": 3, "train_loss": 1.0, "val_loss": 2.0})
    assert lines == ["Epoch 3/3", "  Train - Loss: 1.0000", "  Val   - Loss: 2.0000"]


@pytest.mark.parametrize("name, short, long", [
    ("loss", "Loss", "Loss"), ("acc", "Acc", "Accuracy"), ("top5_acc", "Top-5 Acc", "Top-5 Accuracy"), ("mse", "MSE", "MSE"),
    ("token_acc", "Token Acc", "Token Accuracy"), ("recon", "Recon", "Recon"), ("neg_elbo", "Neg Elbo", "Neg Elbo"),
])
def test_labels(name, short, long):
    assert (label(name, short=True), label(name)) == (short, long)
