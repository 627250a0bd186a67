"""Membership detectors over scan features, scikit-learn style (fit / predict_proba / save / load).

- "fimmia": the FiMMIA detector. An MLP sees one neighbor at a time: its dL (neighbor loss minus
  original loss), its kind (one-hot, when the run has several) and its projected embedding
  difference, each standardised by the training mean and true standard deviation; a sample's
  score is the mean member probability over its neighbors.
- "tabular": a model over per-sample aggregates (classic scores plus mean/std/min/max of dL and
  embedding distances over all neighbors), so it sees the whole neighborhood at once. Its form
  (an MLP, a logistic regression, or one classic score) is chosen in scanner.detector.select;
  `inputs` restricts it to some aggregates, `hidden=()` makes it a logistic regression.

Training: an MLP is seeded and stopped early on the validation samples' AUC; a logistic
regression (no hidden layer) is fitted to convergence by scikit-learn (L2) and its coefficients
become the net's one layer. Then a decision threshold at `target_fpr` calibrated on held-out
non-members. Saved as safetensors (weights and normalisation) + JSON (everything else): loading
never unpickles anything.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import torch

from scanner.detector.data import aggregates, neighbor_kinds, neighbor_rows
from scanner.detector.folder import KINDS, DetectorFolder
from scanner.metrics import roc_auc


def _net(n_in: int, hidden: list[int]) -> torch.nn.Sequential:
    layers, width = [], n_in
    for h in hidden:
        layers += [torch.nn.Linear(width, h), torch.nn.ReLU()]
        width = h
    layers.append(torch.nn.Linear(width, 1))
    return torch.nn.Sequential(*layers)


class MLPDetector:
    def __init__(self, kind: str = "fimmia", hidden: tuple[int, ...] = (64, 32), lr: float = 1e-3,
                 weight_decay: float = 1e-4, max_epochs: int = 300, patience: int = 20, batch_size: int = 512,
                 seed: int = 0, target_fpr: float = 0.01, inputs: list[str] | None = None):
        if kind not in KINDS:
            raise ValueError(f"unknown detector kind {kind!r}; known: {KINDS}")
        self.kind, self.hidden, self.lr, self.weight_decay = kind, list(hidden), lr, weight_decay
        self.max_epochs, self.patience, self.batch_size, self.seed = max_epochs, patience, batch_size, seed
        self.target_fpr = target_fpr
        if inputs is not None and kind != "tabular":
            raise ValueError("only the tabular detector takes a subset of inputs")
        self.inputs = list(inputs) if inputs is not None else None
        self.threshold: float | None = None
        self.info: dict = {}
        self.neighbor_kinds: list[str] | None = None  # fimmia: the kinds one-hot encoded, fixed by fit

    # ------------------------------------------------------------ inputs

    def _inputs(self, df: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(rows, sample index of each row)."""
        if self.kind == "fimmia":
            return neighbor_rows(df, self.neighbor_kinds)
        X, names = aggregates(df)
        if getattr(self, "feature_names", None) is not None and names != self.feature_names:
            lacking, extra = [c for c in self.feature_names if c not in names], [c for c in names if c not in self.feature_names]
            raise ValueError("features differ from training: " + "; ".join(
                [f"these rows lack {', '.join(lacking)}"] * bool(lacking) + [f"the detector never saw {', '.join(extra)}"] * bool(extra)
                or [f"other order: {names} vs {self.feature_names}"]))
        self.feature_names = names
        if self.inputs is not None:
            X = X[:, [names.index(c) for c in self.inputs]]
        return X, np.arange(df.height)

    def _scores(self, X: np.ndarray, group: np.ndarray, n: int) -> np.ndarray:
        with torch.no_grad():
            z = torch.as_tensor((X - self.mean) / self.std, dtype=torch.float32)
            p = torch.sigmoid(self.net(z)).squeeze(-1).double().numpy()
        return np.bincount(group, weights=p, minlength=n) / np.bincount(group, minlength=n)

    # ------------------------------------------------------------ estimator API

    def fit(self, train: pl.DataFrame, val: pl.DataFrame) -> "MLPDetector":
        if self.kind == "fimmia":
            kinds = neighbor_kinds(train)
            self.neighbor_kinds = kinds if len(kinds) > 1 else None
        X, group = self._inputs(train)
        y = train["label"].to_numpy().astype(np.float32)[group]
        Xv, gv = self._inputs(val)
        yv = val["label"].to_numpy()
        self.mean = X.mean(0)
        self.std = np.where(X.std(0) > 0, X.std(0), 1.0)  # the true std, not the variance
        torch.manual_seed(self.seed)
        self.net = _net(X.shape[1], self.hidden)
        if not self.hidden:
            return self._fit_linear(X, y, Xv, gv, yv, train.height, val.height)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        Xt = torch.as_tensor((X - self.mean) / self.std, dtype=torch.float32)
        yt = torch.as_tensor(y)
        rng = np.random.default_rng(self.seed)
        best, best_state, stale, epoch = -1.0, None, 0, 0
        for epoch in range(1, self.max_epochs + 1):
            self.net.train()
            for idx in np.array_split(rng.permutation(len(Xt)), max(1, len(Xt) // self.batch_size)):
                loss = torch.nn.functional.binary_cross_entropy_with_logits(self.net(Xt[idx]).squeeze(-1), yt[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
            self.net.eval()
            auc = roc_auc(yv, self._scores(Xv, gv, val.height))
            if auc > best + 1e-4:
                best, stale = auc, 0
                best_state = {k: v.clone() for k, v in self.net.state_dict().items()}
            else:
                stale += 1
                if stale >= self.patience:
                    break
        self.net.load_state_dict(best_state)
        self.info = {"epochs": epoch, "best_val_auc": best, "n_train": train.height, "n_val": val.height,
                     "n_inputs": int(X.shape[1])}
        return self

    def _fit_linear(self, X, y, Xv, gv, yv, n_train: int, n_val: int) -> "MLPDetector":
        from sklearn.linear_model import LogisticRegression

        lr = LogisticRegression(C=1.0, max_iter=5000).fit((X - self.mean) / self.std, y)
        with torch.no_grad():
            self.net[0].weight.copy_(torch.as_tensor(lr.coef_, dtype=torch.float32))
            self.net[0].bias.copy_(torch.as_tensor(lr.intercept_, dtype=torch.float32))
        self.net.eval()
        self.info = {"epochs": 0, "best_val_auc": roc_auc(yv, self._scores(Xv, gv, n_val)), "n_train": n_train,
                     "n_val": n_val, "n_inputs": int(X.shape[1])}
        return self

    def predict_proba(self, df: pl.DataFrame) -> np.ndarray:
        """P(member) per sample (rows of df), shape (n,)."""
        X, group = self._inputs(df)
        return self._scores(X, group, df.height)

    def calibrate(self, calib: pl.DataFrame) -> float:
        """Threshold flagging at most target_fpr of the held-out non-members (score > threshold)."""
        neg = np.sort(self.predict_proba(calib)[calib["label"].to_numpy() == 0])
        if len(neg) == 0:
            raise ValueError("calibration needs non-members")
        allowed = int(np.floor(self.target_fpr * len(neg)))  # false positives we may keep
        self.threshold = float(neg[len(neg) - 1 - allowed])
        self.info["calibration_nonmembers"] = int(len(neg))
        return self.threshold

    def flag(self, df: pl.DataFrame) -> np.ndarray:
        return self.predict_proba(df) > self.threshold

    # ------------------------------------------------------------ artifacts

    def state(self) -> tuple[dict, dict]:
        """(tensors for safetensors, everything else for JSON): see DetectorFolder."""
        tensors = {f"net.{k}": v.contiguous() for k, v in self.net.state_dict().items()}
        tensors["norm.mean"] = torch.as_tensor(self.mean, dtype=torch.float64)
        tensors["norm.std"] = torch.as_tensor(self.std, dtype=torch.float64)
        meta = {"kind": self.kind, "hidden": self.hidden, "seed": self.seed, "target_fpr": self.target_fpr,
                "threshold": self.threshold, "feature_names": getattr(self, "feature_names", None), "info": self.info,
                "n_inputs": int(len(self.mean)), "inputs": self.inputs,
                "neighbor_kinds": self.neighbor_kinds}
        return tensors, meta

    @classmethod
    def from_state(cls, tensors: dict, meta: dict) -> "MLPDetector":
        tensors = dict(tensors)
        det = cls(kind=meta["kind"], hidden=tuple(meta["hidden"]), seed=meta["seed"], target_fpr=meta["target_fpr"],
                  inputs=meta.get("inputs"))
        det.threshold, det.info, det.feature_names = meta["threshold"], meta["info"], meta["feature_names"]
        det.neighbor_kinds = meta.get("neighbor_kinds")  # none in detectors saved before kinds were an input
        det.mean, det.std = tensors.pop("norm.mean").numpy(), tensors.pop("norm.std").numpy()
        det.net = _net(meta["n_inputs"], det.hidden)
        det.net.load_state_dict({k.removeprefix("net."): v for k, v in tensors.items()})
        det.net.eval()
        return det

    def save(self, folder) -> None:
        DetectorFolder(folder).save_detector(self.kind, *self.state())

    @classmethod
    def load(cls, folder, kind: str) -> "MLPDetector":
        return cls.from_state(*DetectorFolder(folder, create=False).detector_state(kind))
