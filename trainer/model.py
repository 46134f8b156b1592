"""Stage 4: the torch MLP, trained with AdamW, mini-batches and early stopping on the
validation loss.

:class:`ServingModel` is what gets exported: normalized features in, the bundle's output out
(binary: P(label = 1) [n, 1]; multiclass: probabilities [n, k]; regression: the prediction
[n, 1], de-standardized inside the model). Training is deterministic on CPU for a given seed.
Not thread-safe (seeds torch's global generator).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from mlserve.trainer.config import TrainConfig
from torch import nn


class ServingModel(nn.Module):
    """MLP body + task head; ``forward`` returns what serving returns, ``logits`` the raw
    scores the loss is computed on."""

    if TYPE_CHECKING:  # buffers (register_buffer); not class annotations TorchScript reads
        y_mean: torch.Tensor
        y_std: torch.Tensor

    def __init__(self, f_in: int, n_out: int, task: str, config: TrainConfig,
                 y_mean: float = 0.0, y_std: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = f_in
        for hidden in config.hidden:
            layers += [nn.Linear(width, hidden), nn.ReLU(), nn.Dropout(config.dropout)]
            width = hidden
        layers.append(nn.Linear(width, n_out))
        self.net = nn.Sequential(*layers)
        self.task = task
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.net(x)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z: torch.Tensor = self.net(x)
        if self.task == "binary":
            return torch.sigmoid(z)
        if self.task == "multiclass":
            return torch.softmax(z, dim=1)
        return z * self.y_std + self.y_mean


@dataclass
class TrainedModel:
    """The best model (by validation loss) and the per-epoch history."""

    model: ServingModel
    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0


EpochCallback = Callable[[dict[str, float]], None]


def _loss_fn(task: str) -> nn.Module:
    if task == "binary":
        return nn.BCEWithLogitsLoss()
    if task == "multiclass":
        return nn.CrossEntropyLoss()
    return nn.MSELoss()


def _tensor(values: np.ndarray, dtype: np.dtype[Any] | type) -> torch.Tensor:
    """A tensor owning a writable copy (pandas/plan arrays may be read-only)."""
    return torch.from_numpy(np.array(values, dtype=dtype, copy=True))


def _targets(y: np.ndarray, task: str, y_mean: float, y_std: float) -> torch.Tensor:
    if task == "binary":
        return _tensor(y, np.float32).reshape(-1, 1)
    if task == "multiclass":
        return _tensor(y, np.int64)
    return _tensor((y - y_mean) / y_std, np.float32).reshape(-1, 1)


def predict(model: nn.Module, x: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """Serving outputs of the model for normalized features, float32 [n, k]."""
    model.eval()
    outs = []
    with torch.no_grad():
        for start in range(0, max(1, len(x)), batch_size):
            outs.append(model(_tensor(x[start : start + batch_size], np.float32)).numpy())
    return np.concatenate(outs).astype(np.float32)


def train_model(x_train: np.ndarray, y_train: np.ndarray, x_valid: np.ndarray,
                y_valid: np.ndarray, *, task: str, n_classes: int, config: TrainConfig,
                on_epoch: EpochCallback | None = None,
                valid_metric: Callable[[np.ndarray], dict[str, float]] | None = None,
                ) -> TrainedModel:
    """Fit a :class:`ServingModel`; labels are 0/1 (binary), class ids (multiclass) or values.

    Stops after ``config.patience`` epochs without a lower validation loss and returns the
    weights of the best epoch. ``valid_metric(valid_outputs)`` adds metrics to each epoch's
    history row; ``on_epoch(row)`` is called after each epoch (progress, logging).
    """
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    y_mean = float(np.mean(y_train)) if task == "regression" else 0.0
    y_std = float(np.std(y_train)) if task == "regression" else 1.0
    y_std = y_std if y_std > 0 else 1.0
    n_out = n_classes if task == "multiclass" else 1
    model = ServingModel(x_train.shape[1], n_out, task, config, y_mean, y_std)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    loss_fn = _loss_fn(task)
    xt, yt = _tensor(x_train, np.float32), _targets(y_train, task, y_mean, y_std)
    xv, yv = _tensor(x_valid, np.float32), _targets(y_valid, task, y_mean, y_std)

    best_loss, best_state, best_epoch, stale = math.inf, copy.deepcopy(model.state_dict()), 0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        total = 0.0
        for start in range(0, len(xt), config.batch_size):
            idx = order[start : start + config.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model.logits(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        model.eval()
        with torch.no_grad():
            valid_loss = float(loss_fn(model.logits(xv), yv))
            valid_out = model(xv).numpy()
        row: dict[str, Any] = {"epoch": epoch, "train_loss": total / len(xt),
                               "valid_loss": valid_loss}
        if valid_metric is not None:
            row.update({f"valid_{k}": v for k, v in valid_metric(valid_out).items()})
        history.append(row)
        if on_epoch is not None:
            on_epoch(row)
        if valid_loss < best_loss - 1e-7:
            best_loss, best_epoch, stale = valid_loss, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= config.patience:
                break
    model.load_state_dict(best_state)
    model.eval()
    return TrainedModel(model=model, history=history, best_epoch=best_epoch)
