"""Per-metric latency surrogates behind one interface: `fit(F, y)` / `predict(F)`.

- `Roofline`: time ~ a*bytes + b*flops + c*layers + d with non-negative coefficients,
  fitted for relative error.
- `MLPSurrogate`: a bootstrap ensemble of small torch MLPs on log features (baseline).
- `XGBoostSurrogate`: the roofline as a base, and a bootstrap ensemble of XGBoost
  regressors on the log residual log(t) - log(roofline). The ensemble spread, widened by the
  cross-validated under-prediction quantile, gives an upper bound.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import nnls

from .features import roofline_terms


class Roofline:
    kind = "roofline"

    def __init__(self, metric: str, coef: np.ndarray | None = None, scale: np.ndarray | None = None):
        self.metric, self.coef, self.scale = metric, coef, scale
        self.cv_under = 0.0  # relative upper-bound widening: the 90th percentile of cross-validated under-prediction

    def fit(self, f: pd.DataFrame, y: np.ndarray) -> Roofline:
        x = roofline_terms(f, self.metric)
        self.scale = np.maximum(np.abs(x).max(axis=0), 1e-12)
        xs = x / self.scale
        self.coef, _ = nnls(xs / y[:, None], np.ones(len(y)))  # minimise relative error
        return self

    def predict_all(self, f: pd.DataFrame) -> np.ndarray:
        return np.maximum((roofline_terms(f, self.metric) / self.scale) @ self.coef, 1e-6)

    def predict(self, f: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(median, upper bound)."""
        p = self.predict_all(f)
        return p, p * (1 + self.cv_under)

    def state(self) -> dict:
        return {"coef": self.coef.tolist(), "scale": self.scale.tolist(), "cv_under": self.cv_under}

    def save(self, folder: Path) -> dict:
        return self.state()

    @classmethod
    def load(cls, metric: str, state: dict, folder: Path) -> Roofline:
        r = cls(metric, np.array(state["coef"]), np.array(state["scale"]))
        r.cv_under = state["cv_under"]
        return r


class _Ensemble:
    """Median of the members' predictions; the upper bound is the members' 90th percentile,
    widened to at least median x (1 + cross-validated under-prediction quantile, cv_under)."""

    cv_under: float

    def _members(self, f: pd.DataFrame) -> np.ndarray:
        raise NotImplementedError

    def predict_all(self, f: pd.DataFrame) -> np.ndarray:
        return np.median(self._members(f), axis=0)

    def predict(self, f: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        m = self._members(f)
        median = np.median(m, axis=0)
        return median, np.maximum(np.quantile(m, 0.9, axis=0), median * (1 + self.cv_under))


class XGBoostSurrogate(_Ensemble):
    kind = "xgboost"
    PARAMS = {"n_estimators": 200, "max_depth": 4, "learning_rate": 0.08, "subsample": 0.8,
              "colsample_bytree": 0.9, "min_child_weight": 1.0, "reg_lambda": 1.0, "n_jobs": 1}

    def __init__(self, metric: str, members: int = 4, seed: int = 0):
        self.metric, self.members, self.seed = metric, members, seed
        self.base = Roofline(metric)
        self.boosters: list = []
        self.cv_under = 0.0

    def fit(self, f: pd.DataFrame, y: np.ndarray) -> XGBoostSurrogate:
        import xgboost as xgb

        self.base.fit(f, y)
        resid = np.log(y) - np.log(self.base.predict_all(f))
        rng = np.random.default_rng(self.seed)
        self.boosters = []
        for k in range(self.members):
            idx = rng.integers(0, len(y), len(y)) if k else np.arange(len(y))  # member 0 sees every row
            model = xgb.XGBRegressor(**self.PARAMS, random_state=self.seed + k)
            model.fit(f.to_numpy()[idx], resid[idx])
            self.boosters.append(model.get_booster())
        return self

    def _members(self, f: pd.DataFrame) -> np.ndarray:
        import xgboost as xgb

        data = xgb.DMatrix(f.to_numpy())
        base = self.base.predict_all(f)
        return np.stack([base * np.exp(b.predict(data)) for b in self.boosters])

    def save(self, folder: Path) -> dict:
        files = []
        for k, booster in enumerate(self.boosters):
            name = f"{self.metric}-{k}.ubj"
            booster.save_model(str(folder / name))
            files.append(name)
        return {"base": self.base.state(), "files": files, "cv_under": self.cv_under, "members": self.members}

    @classmethod
    def load(cls, metric: str, state: dict, folder: Path) -> XGBoostSurrogate:
        import xgboost as xgb

        s = cls(metric, state["members"])
        s.base = Roofline.load(metric, state["base"], folder)
        s.boosters = []
        for name in state["files"]:
            booster = xgb.Booster()
            booster.load_model(str(folder / name))
            s.boosters.append(booster)
        s.cv_under = state["cv_under"]
        return s


class MLPSurrogate(_Ensemble):
    """A small ensemble of torch MLPs on standardised log features predicting log latency
    (a learned baseline; each member sees a bootstrap sample)."""

    kind = "mlp"
    HIDDEN, EPOCHS, LR = 64, 600, 1e-2

    def __init__(self, metric: str, members: int = 4, seed: int = 0):
        self.metric, self.members, self.seed = metric, members, seed
        self.nets: list = []
        self.mean = self.std = None
        self.cv_under = 0.0

    def _net(self):
        from torch import nn

        return nn.Sequential(nn.Linear(self.mean.shape[0], self.HIDDEN), nn.SiLU(),
                             nn.Linear(self.HIDDEN, self.HIDDEN), nn.SiLU(), nn.Linear(self.HIDDEN, 1))

    def _x(self, f: pd.DataFrame):
        import torch

        x = np.log1p(np.maximum(f.to_numpy(np.float64), 0.0))
        return torch.tensor((x - self.mean) / self.std, dtype=torch.float32)

    def fit(self, f: pd.DataFrame, y: np.ndarray) -> MLPSurrogate:
        import torch

        logs = np.log1p(np.maximum(f.to_numpy(np.float64), 0.0))
        self.mean, self.std = logs.mean(0), logs.std(0) + 1e-9
        x, t = self._x(f), torch.tensor(np.log(y), dtype=torch.float32)[:, None]
        rng = np.random.default_rng(self.seed)
        self.nets = []
        for k in range(self.members):
            torch.manual_seed(self.seed + k)
            idx = torch.as_tensor(rng.integers(0, len(y), len(y)) if k else np.arange(len(y)))
            net = self._net()
            opt = torch.optim.Adam(net.parameters(), lr=self.LR, weight_decay=1e-4)
            for _ in range(self.EPOCHS):
                opt.zero_grad()
                loss = torch.nn.functional.mse_loss(net(x[idx]), t[idx])
                loss.backward()
                opt.step()
            self.nets.append(net.eval())
        return self

    def _members(self, f: pd.DataFrame) -> np.ndarray:
        import torch

        with torch.no_grad():
            x = self._x(f)
            return np.stack([np.exp(net(x)[:, 0].double().numpy()) for net in self.nets])

    def save(self, folder: Path) -> dict:
        from safetensors.torch import save_file

        files = []
        for k, net in enumerate(self.nets):
            name = f"{self.metric}-mlp-{k}.safetensors"
            save_file({n: p.contiguous() for n, p in net.state_dict().items()}, str(folder / name))
            files.append(name)
        return {"files": files, "mean": self.mean.tolist(), "std": self.std.tolist(), "cv_under": self.cv_under,
                "members": self.members}

    @classmethod
    def load(cls, metric: str, state: dict, folder: Path) -> MLPSurrogate:
        from safetensors.torch import load_file

        s = cls(metric, state["members"])
        s.mean, s.std, s.cv_under = np.array(state["mean"]), np.array(state["std"]), state["cv_under"]
        for name in state["files"]:
            net = s._net()
            net.load_state_dict(load_file(str(folder / name)))
            s.nets.append(net.eval())
        return s


SURROGATES = {"xgboost": XGBoostSurrogate, "roofline": Roofline, "mlp": MLPSurrogate}
