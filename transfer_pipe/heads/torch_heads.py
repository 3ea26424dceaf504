"""Small torch classifiers on fixed feature vectors, behind the scikit-learn estimator contract.

Two heads share one training loop: :class:`TorchLinearClassifier` (one linear layer, i.e.
softmax regression) and :class:`TorchMLPClassifier` (Linear → ReLU → Dropout → Linear).
Fitted heads rebuild from :meth:`_TorchHead.head_tensors` (``heads.persist`` stores them as
safetensors, no pickle).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.model_selection import train_test_split
from sklearn.utils import check_random_state
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_is_fitted, validate_data
from torch import nn

from transfer_pipe.cluster import resolve_device

_EVAL_BATCH = 8192  # rows per forward pass at evaluation time; bounds memory, not results


@contextlib.contextmanager
def _seeded_rng(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's global RNGs (init, dropout) for a block, then restore the caller's state."""
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        # Not torch.manual_seed: it would also reseed every CUDA device, outside the fork.
        torch.random.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def _tensor(a: np.ndarray) -> torch.Tensor:
    """``a`` as a tensor sharing its memory; read-only arrays (memmaps) are copied, because
    torch cannot represent them and warns."""
    return torch.from_numpy(a if a.flags.writeable else a.copy())


def _logits(module: nn.Module, X: torch.Tensor) -> torch.Tensor:
    """Logits of ``module`` in eval mode for all rows of ``X``, in bounded batches."""
    module.eval()
    with torch.inference_mode():
        return torch.cat([module(X[i : i + _EVAL_BATCH]) for i in range(0, len(X), _EVAL_BATCH)])


class _TorchHead(ClassifierMixin, BaseEstimator):
    """Shared fit/predict for torch heads; subclasses only say how to build the module.

    Early stopping watches the validation cross-entropy (smoother than accuracy on small
    validation sets): training stops after ``patience`` epochs without a new minimum and the
    weights of the best epoch are restored.
    """

    def __init__(
        self,
        *,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        max_epochs: int = 100,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        patience: int = 5,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = 0,
    ) -> None:
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.device = device
        self.random_state = random_state

    def _build_module(self, n_features: int, n_classes: int) -> nn.Sequential:
        """A fresh, randomly initialised module mapping features to class logits."""
        raise NotImplementedError

    def fit(self, X: Any, y: Any, X_val: Any | None = None, y_val: Any | None = None) -> _TorchHead:
        """Train on ``X, y``; early-stop on ``X_val, y_val`` (or a held-out split). Returns self."""
        X, y = validate_data(self, X, y, dtype=np.float32)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(
                f"{type(self).__name__} needs samples of at least 2 classes, but the data "
                f"contains only one class: {self.classes_[0]!r}. Check the labels of this split."
            )
        rng = check_random_state(self.random_state)
        seed = int(rng.randint(np.iinfo(np.int32).max))
        val: tuple[np.ndarray, np.ndarray] | None = None
        if (X_val is None) != (y_val is None):
            raise ValueError("Pass both X_val and y_val, or neither.")
        if X_val is not None:
            val = (validate_data(self, X_val, reset=False, dtype=np.float32), self._encode(y_val))
        elif self.early_stopping:
            X, X_v, y_enc, y_v = self._holdout(X, y_enc, seed)
            val = (X_v, y_v)
        device = resolve_device(self.device)
        with _seeded_rng(seed, device):
            module = self._build_module(X.shape[1], len(self.classes_)).to(device)
            self._train(module, X, y_enc, val, seed, device)
        self.module_ = module.cpu().eval()
        return self

    def _encode(self, y: Any) -> np.ndarray:
        """Indices into ``classes_`` of the labels ``y``; unknown labels raise ValueError."""
        y = np.asarray(y).ravel()
        idx = np.searchsorted(self.classes_, y).clip(0, len(self.classes_) - 1)
        unknown = self.classes_[idx] != y
        if unknown.any():
            raise ValueError(f"y_val has labels not seen in y: {np.unique(y[unknown])[:5]}.")
        return idx

    def _holdout(self, X: np.ndarray, y: np.ndarray, seed: int) -> list[np.ndarray]:
        """Split off ``validation_fraction`` of the rows, stratified when every class allows."""
        n_val = max(1, math.ceil(self.validation_fraction * len(y)))
        counts = np.bincount(y)
        n_classes = len(counts)
        can_stratify = counts.min() >= 2 and n_classes <= n_val <= len(y) - n_classes
        return train_test_split(
            X, y, test_size=n_val, random_state=seed, stratify=y if can_stratify else None
        )

    def _train(
        self,
        module: nn.Module,
        X: np.ndarray,
        y: np.ndarray,
        val: tuple[np.ndarray, np.ndarray] | None,
        seed: int,
        device: torch.device,
    ) -> None:
        """Mini-batch AdamW; fills ``history_``, ``n_epochs_`` and ``best_epoch_``."""
        Xt, yt = _tensor(X).to(device), _tensor(y).long().to(device)
        if val is not None:
            Xv, yv = _tensor(val[0]).to(device), _tensor(val[1]).long().to(device)
        opt = torch.optim.AdamW(module.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        shuffler = torch.Generator().manual_seed(seed)
        self.history_: list[dict[str, float]] = []
        best_loss, self.best_epoch_, best_state = math.inf, 0, None
        for epoch in range(1, self.max_epochs + 1):
            module.train()
            total = torch.zeros((), device=device)  # summed on device: no sync per batch
            for idx in (
                torch.randperm(len(yt), generator=shuffler).to(device).split(self.batch_size)
            ):
                loss = F.cross_entropy(module(Xt[idx]), yt[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += loss.detach() * len(idx)
            record = {"train_loss": total.item() / len(yt)}
            if val is not None:
                logits = _logits(module, Xv)
                record["val_loss"] = F.cross_entropy(logits, yv).item()
                record["val_accuracy"] = (logits.argmax(1) == yv).float().mean().item()
            self.history_.append(record)
            if not self.early_stopping:
                continue
            if record["val_loss"] < best_loss:
                best_loss, self.best_epoch_ = record["val_loss"], epoch
                best_state = {k: v.detach().clone() for k, v in module.state_dict().items()}
            elif epoch - self.best_epoch_ >= self.patience:
                break
        self.n_epochs_ = len(self.history_)
        if best_state is None:
            self.best_epoch_ = self.n_epochs_
        else:
            module.load_state_dict(best_state)

    def decision_function(self, X: Any) -> np.ndarray:
        """Logits, shape (n, n_classes); for two classes the margin of class 1, shape (n,)."""
        logits = self._predict_logits(X)
        return logits[:, 1] - logits[:, 0] if logits.shape[1] == 2 else logits

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, shape (n, n_classes), columns ordered like ``classes_``."""
        return torch.softmax(torch.from_numpy(self._predict_logits(X)), dim=1).numpy()

    def predict(self, X: Any) -> np.ndarray:
        """The most probable label of each row, taken from ``classes_``."""
        best = self._predict_logits(X).argmax(axis=1)  # first: it raises NotFittedError
        return self.classes_[best]

    def _predict_logits(self, X: Any) -> np.ndarray:
        # On CPU where module_ lives: predictions do not depend on the machine that trained.
        check_is_fitted(self, "module_")
        X = validate_data(self, X, reset=False, dtype=np.float32)
        return _logits(self.module_, _tensor(X)).numpy()

    def head_tensors(self) -> dict[str, torch.Tensor]:
        """The fitted module's weights (CPU, contiguous), keyed like its ``state_dict``."""
        check_is_fitted(self, "module_")
        return {k: v.detach().cpu().contiguous() for k, v in self.module_.state_dict().items()}

    @classmethod
    def from_tensors(
        cls, tensors: dict[str, torch.Tensor], params: dict[str, Any], classes: list[Any]
    ) -> _TorchHead:
        """A fitted head rebuilt from :meth:`head_tensors`, ``get_params()`` and ``classes_``."""
        head = cls(**params)
        head.classes_ = np.asarray(classes)
        head.n_features_in_ = int(tensors["0.weight"].shape[1])  # the first layer is a Linear
        head.module_ = head._build_module(head.n_features_in_, len(classes)).eval()
        head.module_.load_state_dict(tensors)
        return head


class TorchLinearClassifier(_TorchHead):
    """Softmax regression: one ``nn.Linear`` trained with cross-entropy and AdamW."""

    def _build_module(self, n_features: int, n_classes: int) -> nn.Sequential:
        return nn.Sequential(nn.Linear(n_features, n_classes))


class TorchMLPClassifier(_TorchHead):
    """One hidden layer: Linear → ReLU → Dropout → Linear, trained with cross-entropy and AdamW."""

    def __init__(
        self,
        *,
        hidden: int = 512,
        dropout: float = 0.2,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 256,
        max_epochs: int = 100,
        early_stopping: bool = True,
        validation_fraction: float = 0.1,
        patience: int = 5,
        device: str = "auto",
        random_state: int | np.random.RandomState | None = 0,
    ) -> None:
        super().__init__(
            lr=lr,
            weight_decay=weight_decay,
            batch_size=batch_size,
            max_epochs=max_epochs,
            early_stopping=early_stopping,
            validation_fraction=validation_fraction,
            patience=patience,
            device=device,
            random_state=random_state,
        )
        self.hidden = hidden
        self.dropout = dropout

    def _build_module(self, n_features: int, n_classes: int) -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(n_features, self.hidden),
            nn.ReLU(),
            nn.Dropout(self.dropout),
            nn.Linear(self.hidden, n_classes),
        )
