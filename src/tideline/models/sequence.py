"""A compact PyTorch sequence model: a PatchTST-style encoder over the last bars plus a tabular MLP.

The spec's sequence columns ``seq_{channel}_l{lag}`` are arranged as (rows, seq_len, channels), oldest bar
first. The time axis is cut into non-overlapping patches of ``patch_len`` bars (left-padded with zeros to a
whole number of patches); each patch (all channels) is linearly embedded, given a learned positional
embedding and passed through a small pre-norm TransformerEncoder. With seq_len 16 that is 4 tokens, so
attention costs almost nothing and the encoder is as fast on CPU as an N-HiTS-style MLP while still
sharing weights across time. The flattened tokens are concatenated with an MLP embedding of the tabular
features and a small head gives one output.

Inputs are standardised per column with train-only mean/std (NaN -> 0 after scaling, clipped to +-10);
the target is standardised with robust train stats, clipped at ``clip_sigma`` and fitted with a Huber
loss. Training uses AdamW on at most ``max_rows`` of the most recent rows (X is time-ordered), a few
epochs and early stopping on the validation set. Weights are saved as a state dict (model.pt) and read
back weights-only; the architecture and scaler stats live in model.json.
"""

from __future__ import annotations

import logging
import pickle  # only for its exception class; nothing is unpickled here
import time
from pathlib import Path
from typing import Any

import numpy as np

from tideline.errors import ModelError
from tideline.models.base import Dim, Model, StoredSpec

log = logging.getLogger(__name__)


def sequence_layout(spec: StoredSpec) -> list[str]:
    """Sequence column names ordered (time oldest->newest, channel) as the encoder reads them."""
    if not spec.sequence:
        return []
    if spec.seq_len < 1 or not spec.channels:
        raise ModelError("feature spec has sequence columns but no seq_len/channels")
    names = [f"seq_{ch}_l{lag}" for lag in range(spec.seq_len - 1, -1, -1) for ch in spec.channels]
    if set(names) != set(spec.sequence):
        missing = sorted(set(names) - set(spec.sequence))[:5]
        extra = sorted(set(spec.sequence) - set(names))[:5]
        raise ModelError("feature spec's sequence columns do not follow seq_{channel}_l{lag} for its "
                         f"channels and seq_len (missing {missing}, unexpected {extra})")
    return names


def _build_network(n_tab: int, seq_len: int, n_channels: int, p: dict[str, Any]) -> Any:
    """The torch module (built lazily so importing this file does not import torch)."""
    import torch
    from torch import nn

    d_model = int(p["d_model"])
    patch_len = max(1, min(int(p["patch_len"]), seq_len)) if seq_len else 1
    n_patches = -(-seq_len // patch_len) if seq_len else 0
    pad = n_patches * patch_len - seq_len
    dropout = float(p["dropout"])

    class PatchEncoderNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.has_seq = seq_len > 0 and n_channels > 0
            self.has_tab = n_tab > 0
            width = 0
            if self.has_seq:
                self.patch_embed = nn.Linear(patch_len * n_channels, d_model)
                self.pos = nn.Parameter(torch.zeros(1, n_patches, d_model))
                nn.init.normal_(self.pos, std=0.02)
                layer = nn.TransformerEncoderLayer(d_model, int(p["n_heads"]), int(p["ff_dim"]), dropout,
                                                   activation="gelu", batch_first=True, norm_first=True)
                self.encoder = nn.TransformerEncoder(layer, int(p["n_layers"]), enable_nested_tensor=False)
                self.seq_norm = nn.LayerNorm(d_model)
                self.seq_proj = nn.Linear(n_patches * d_model, d_model)
                width += d_model
            if self.has_tab:
                hidden = int(p["tab_hidden"])
                self.tab = nn.Sequential(nn.Linear(n_tab, hidden), nn.GELU(), nn.Dropout(dropout),
                                         nn.Linear(hidden, d_model), nn.GELU())
                width += d_model
            self.head = nn.Sequential(nn.Linear(width, d_model), nn.GELU(), nn.Dropout(dropout),
                                      nn.Linear(d_model, 1))

        def forward(self, tab: torch.Tensor, seq: torch.Tensor) -> torch.Tensor:
            parts = []
            if self.has_seq:
                x = seq.view(seq.shape[0], seq_len, n_channels)
                if pad:
                    x = nn.functional.pad(x, (0, 0, pad, 0))
                x = x.reshape(x.shape[0], n_patches, patch_len * n_channels)
                z = self.encoder(self.patch_embed(x) + self.pos)
                parts.append(self.seq_proj(self.seq_norm(z).flatten(1)))
            if self.has_tab:
                parts.append(self.tab(tab))
            return self.head(torch.cat(parts, dim=1)).squeeze(1)

    return PatchEncoderNet()


def load_state_dict(path: Path) -> dict[str, Any]:
    """A torch state dict saved by ``torch.save``, loaded with ``weights_only=True``: ``ModelError`` when the file
    holds anything else (a pickled object is refused, never unpickled)."""
    import torch

    try:
        state = torch.load(path, weights_only=True, map_location="cpu")
    except pickle.UnpicklingError:
        raise ModelError(f"{path} is refused: it is not a plain weights-only state dict "
                         "(tideline never loads pickled objects)") from None
    if not isinstance(state, dict):
        raise ModelError(f"{path} does not hold a state dict")
    return state


class _TorchSettings:
    """Seeds, threads and deterministic algorithms for the duration of a fit/predict; restored after."""

    def __init__(self, n_threads: int, deterministic: bool) -> None:
        self.n_threads = n_threads
        self.deterministic = deterministic

    def __enter__(self) -> None:
        import torch

        self._threads = torch.get_num_threads()
        self._det = torch.are_deterministic_algorithms_enabled()
        if self.n_threads:
            torch.set_num_threads(self.n_threads)
        if self.deterministic:
            torch.use_deterministic_algorithms(True)

    def __exit__(self, *exc: object) -> None:
        import torch

        torch.set_num_threads(self._threads)
        torch.use_deterministic_algorithms(self._det)


class SequenceModel(Model):
    """PatchTST-style encoder over the sequence block + tabular MLP (PyTorch, CPU)."""

    family = "torch"
    artifact_files = ("model.pt",)
    libraries = ("torch",)

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Defaults of the torch family: encoder shape, optimiser, epochs and early stopping, row caps,
        Huber loss and target clipping (``clip_sigma``). Unknown overrides are refused with ``ModelError``.
        """
        return {
            "patch_len": 4,
            "d_model": 32,
            "n_heads": 4,
            "n_layers": 1,
            "ff_dim": 64,
            "tab_hidden": 64,
            "dropout": 0.1,
            "lr": 2e-3,
            "weight_decay": 1e-2,
            "batch_size": 2048,
            "max_epochs": 3,
            "patience": 1,
            "max_rows": 100_000,
            "max_valid_rows": 50_000,
            "huber_delta": 1.0,
            "clip_sigma": 5.0,
            "grad_clip": 1.0,
        }

    @classmethod
    def search_space(cls) -> dict[str, Dim]:
        """Optimiser (learning rate, weight decay), dropout and the width of the tabular MLP."""
        return {
            "lr": Dim.real(3e-4, 1e-2, log=True),
            "weight_decay": Dim.real(1e-4, 1e-1, log=True),
            "dropout": Dim.real(0.0, 0.3),
            "tab_hidden": Dim.choice(32, 64, 128),
        }

    def __init__(self, *, seed: int = 0, params: dict[str, Any] | None = None, n_threads: int = 0) -> None:
        super().__init__(seed=seed, params=params, n_threads=n_threads)
        self._n_tab = 0
        self._seq_len = 0
        self._n_channels = 0
        self._mean = np.zeros(0, dtype=np.float32)
        self._std = np.ones(0, dtype=np.float32)
        self._net: Any = None

    def _input_columns(self, spec: StoredSpec) -> list[str]:
        seq = sequence_layout(spec)
        self._n_tab = len(spec.tabular)
        self._seq_len = spec.seq_len if seq else 0
        self._n_channels = len(spec.channels) if seq else 0
        return [*spec.tabular, *seq]

    # -- data ---------------------------------------------------------------------------------
    def _standardize(self, X: np.ndarray) -> np.ndarray:
        Z = (X - self._mean) / self._std
        np.nan_to_num(Z, copy=False, nan=0.0, posinf=10.0, neginf=-10.0)
        np.clip(Z, -10.0, 10.0, out=Z)
        return Z.astype(np.float32, copy=False)

    def _split(self, Z: np.ndarray) -> tuple[Any, Any]:
        import torch

        t = torch.from_numpy(np.ascontiguousarray(Z))
        return t[:, : self._n_tab], t[:, self._n_tab :]

    # -- fit / predict ------------------------------------------------------------------------
    def _fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None) -> None:
        import torch

        p = self.params
        if int(p["max_epochs"]) < 1 or int(p["batch_size"]) < 1:
            raise ModelError("torch params max_epochs and batch_size must be at least 1")
        max_rows = int(p["max_rows"] or 0)
        if max_rows and len(X) > max_rows:  # X is time-ordered: keep the most recent rows
            X, y = X[-max_rows:], y[-max_rows:]
        max_valid = int(p["max_valid_rows"] or 0)
        if X_valid is not None and y_valid is not None and max_valid and len(X_valid) > max_valid:
            X_valid, y_valid = X_valid[-max_valid:], y_valid[-max_valid:]
        with np.errstate(all="ignore"):
            mean = np.nanmean(X, axis=0, dtype=np.float64)
            std = np.nanstd(X, axis=0, dtype=np.float64)
        mean = np.where(np.isfinite(mean), mean, 0.0)
        std = np.where(np.isfinite(std) & (std > 1e-12), std, 1.0)
        self._mean, self._std = mean.astype(np.float32), std.astype(np.float32)

        with _TorchSettings(self.n_threads, deterministic=True):
            torch.manual_seed(self.seed)
            gen = torch.Generator().manual_seed(self.seed)
            net = _build_network(self._n_tab, self._seq_len, self._n_channels, p)
            tab, seq = self._split(self._standardize(X))
            yt = torch.from_numpy(y.astype(np.float32))
            valid = None
            if X_valid is not None and y_valid is not None:
                vt, vs = self._split(self._standardize(X_valid))
                valid = (vt, vs, torch.from_numpy(y_valid.astype(np.float32)))
            opt = torch.optim.AdamW(net.parameters(), lr=float(p["lr"]), weight_decay=float(p["weight_decay"]))
            loss_fn = torch.nn.HuberLoss(delta=float(p["huber_delta"]))
            bs = int(p["batch_size"])
            n = len(yt)
            best_loss, best_state, best_epoch, bad = float("inf"), None, 0, 0
            t0 = time.perf_counter()
            for epoch in range(1, int(p["max_epochs"]) + 1):
                net.train()
                order = torch.randperm(n, generator=gen)
                total = 0.0
                for start in range(0, n, bs):
                    idx = order[start : start + bs]
                    opt.zero_grad(set_to_none=True)
                    loss = loss_fn(net(tab[idx], seq[idx]), yt[idx])
                    loss.backward()
                    if p["grad_clip"]:
                        torch.nn.utils.clip_grad_norm_(net.parameters(), float(p["grad_clip"]))
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                train_loss = total / n
                if valid is None:
                    log.debug("torch epoch %d train %.4f (%.1fs)", epoch, train_loss, time.perf_counter() - t0)
                    best_epoch = epoch
                    continue
                v_loss = float(loss_fn(self._forward(net, valid[0], valid[1]), valid[2]))
                log.debug("torch epoch %d train %.4f valid %.4f (%.1fs)", epoch, train_loss, v_loss,
                          time.perf_counter() - t0)
                if v_loss < best_loss - 1e-6:
                    best_loss, best_epoch, bad = v_loss, epoch, 0
                    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                else:
                    bad += 1
                    if bad > int(p["patience"]):
                        break
            if best_state is not None:
                net.load_state_dict(best_state)
            net.eval()
        self._net = net
        self.fit_info.update({"epochs_run": epoch, "best_epoch": best_epoch, "rows_used": int(n)})
        if valid is not None:
            self.fit_info["valid_loss"] = round(best_loss, 6)

    def _forward(self, net: Any, tab: Any, seq: Any) -> Any:
        import torch

        net.eval()
        bs = max(int(self.params["batch_size"]), 4096)
        out = []
        with torch.inference_mode():
            for start in range(0, tab.shape[0], bs):
                out.append(net(tab[start : start + bs], seq[start : start + bs]))
        return torch.cat(out) if out else torch.zeros(0)

    def _predict(self, X: np.ndarray) -> np.ndarray:
        tab, seq = self._split(self._standardize(X))
        with _TorchSettings(self.n_threads, deterministic=True):
            return self._forward(self._net, tab, seq).numpy().astype(np.float64)

    # -- persistence --------------------------------------------------------------------------
    def _save_artifacts(self, directory: Path) -> dict[str, Any]:
        import torch

        torch.save(self._net.state_dict(), directory / "model.pt")
        return {
            "architecture": {"n_tab": self._n_tab, "seq_len": self._seq_len, "n_channels": self._n_channels},
            "input_scaler": {"mean": self._mean.tolist(), "std": self._std.tolist()},
        }

    def _load_artifacts(self, directory: Path, extra: dict[str, Any]) -> None:

        arch = extra["architecture"]
        self._n_tab, self._seq_len, self._n_channels = (int(arch["n_tab"]), int(arch["seq_len"]),
                                                        int(arch["n_channels"]))
        mean = np.asarray(extra["input_scaler"]["mean"], dtype=np.float32)
        std = np.asarray(extra["input_scaler"]["std"], dtype=np.float32)
        width = self._n_tab + self._seq_len * self._n_channels
        if mean.shape != (len(self.columns),) or std.shape != mean.shape or width != len(self.columns):
            raise ModelError(f"{directory / 'model.json'}: scaler/architecture do not match its "
                             f"{len(self.columns)} columns")
        self._mean, self._std = mean, std
        state = load_state_dict(directory / "model.pt")
        net = _build_network(self._n_tab, self._seq_len, self._n_channels, self.params)
        net.load_state_dict(state, strict=True)
        net.eval()
        self._net = net
