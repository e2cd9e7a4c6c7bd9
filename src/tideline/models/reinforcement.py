"""The reinforcement-learning family (``rl``): a policy that maps a bar's features to a position, learnt by trading.

The policy is a small actor-critic network trained with stable-baselines3's PPO on ``BarsEnv``, a gymnasium
environment made from the training rows' bars and the evaluation's cost model:

* an episode walks one symbol's rows in time order, at most ``episode_bars`` of them from a random start;
* the observation is the row's tabular features, robust-scaled with the training rows' median and MAD (clipped
  at +-5; a missing value is the median);
* the action is short, flat or long (``Discrete(3)``: position -1, 0, +1);
* the reward is the position times the next bar's return minus the row's unit cost times the turnover
  (``|position - previous position|``; an episode starts flat), in units of the training rows' return spread:
  exactly what ``tideline.evaluation`` charges one symbol's positions, scaled.

The features do not depend on the actions (the policy does not move the market), so a position's only effect on
later rewards is the turnover it saves or costs; ``gamma`` weighs that.

Training runs ``passes`` x rows environment steps (within ``min_timesteps`` .. ``max_timesteps``) over many
episodes at once (``BarsVecEnv``: ``BarsEnv``'s arithmetic vectorised in numpy), checking the policy
``n_checks`` times on the purged validation rows; the one whose positions earned the most there, net of costs,
is kept. ``warm_start(previous)`` starts from a previous version's weights (same inputs and network; checked on
the validation rows before any step, and kept unless training betters it), and then only ``warm_fraction`` of
the steps are run — unless the previous policy earns no more than ``warm_floor_bps`` (0) a row on the
validation rows, net of costs: then the market moved under it (after a flip it would have to unlearn what it
knew, slower than learning afresh), so it is a cold start with the whole budget, and ``fit_info["warm_start"]``
says why; ``fine_tune_on(X, market)`` adds experience rows (served
predictions with realized outcomes, ``tideline.monitoring.experience``) that, after the pre-training on history,
train the policy ``finetune_passes`` x their rows more steps, their episodes drawn by the market's weights.

Saved without pickle: the policy's weights as a state dict (``policy.pt``, loaded with ``weights_only=True``)
and its configuration (network, input scaler, reward scale) in ``model.json``; stable-baselines3's own zip
format, which unpickles, is never written or read. Prediction does not import stable-baselines3: the actor is
rebuilt in plain torch from the weights and the position is its most likely action.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from tideline.errors import ModelError
from tideline.models.base import Dim, Market, Model, StoredSpec
from tideline.models.sequence import _TorchSettings, load_state_dict

log = logging.getLogger(__name__)

ACTIONS = np.array([-1.0, 0.0, 1.0])
"""The position of each action."""
CLIP = 5.0
"""Scaled features are clipped at +-CLIP robust standard deviations."""


# --------------------------------------------------------------------------------------------- episodes


class Episodes:
    """Rows sorted by (symbol, time) with each row's segment end: what both environments walk."""

    def __init__(self, obs: np.ndarray, market: Market, reward_scale: float) -> None:
        sym = np.asarray(market.symbol).astype(str)
        ts = np.asarray(market.timestamp)
        order = np.lexsort((ts, sym))
        self.order = order
        self.obs = np.ascontiguousarray(obs[order], dtype=np.float32)
        self.ret = np.nan_to_num(np.asarray(market.next_return, dtype=np.float64)[order], nan=0.0,
                                 posinf=0.0, neginf=0.0)
        self.cost = np.nan_to_num(np.asarray(market.unit_cost, dtype=np.float64)[order], nan=0.0)
        s = sym[order]
        n = len(s)
        new = np.ones(n, dtype=bool)
        new[1:] = s[1:] != s[:-1]
        starts = np.flatnonzero(new)
        ends = np.r_[starts[1:], n]
        self.seg_end = np.repeat(ends, ends - starts)
        self.reward_scale = float(reward_scale)
        w = None
        if market.weight is not None:
            w = np.clip(np.nan_to_num(np.asarray(market.weight, dtype=np.float64)[order], nan=0.0), 0.0, None)
            w = w / w.sum() if w.sum() > 0 else None
        self.start_p = w

    def __len__(self) -> int:
        return len(self.obs)

    def reward(self, pos: np.ndarray, prev: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The scaled net reward of holding ``pos`` on ``rows`` after ``prev``."""
        return (pos * self.ret[rows] - self.cost[rows] * np.abs(pos - prev)) / self.reward_scale


def reward_scale(next_return: np.ndarray) -> float:
    """The spread the rewards are measured in: the standard deviation of the rows' next returns (1e-4 at least)."""
    r = np.asarray(next_return, dtype=np.float64)
    r = r[np.isfinite(r)]
    sd = float(r.std()) if len(r) > 1 else 0.0
    return max(sd, 1e-4)


def _spaces(n_features: int) -> tuple[Any, Any]:
    from gymnasium import spaces

    return (spaces.Box(-CLIP, CLIP, shape=(n_features,), dtype=np.float32), spaces.Discrete(len(ACTIONS)))


def bars_env(episodes: Episodes, episode_bars: int, seed: int = 0) -> Any:
    """``BarsEnv``: one episode at a time, a gymnasium ``Env`` (the reference for ``BarsVecEnv``)."""
    import gymnasium as gym

    class BarsEnv(gym.Env):  # type: ignore[misc]
        metadata: dict[str, Any] = {"render_modes": []}

        def __init__(self) -> None:
            self.observation_space, self.action_space = _spaces(episodes.obs.shape[1])
            self._rng = np.random.default_rng(seed)
            self.row = self.end = 0
            self.prev = 0.0

        def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
                  ) -> tuple[np.ndarray, dict[str, Any]]:
            super().reset(seed=seed)
            if seed is not None:
                self._rng = np.random.default_rng(seed)
            start = (options or {}).get("start")
            self.row = int(start) if start is not None else int(self._rng.choice(len(episodes), p=episodes.start_p))
            self.end = min(self.row + episode_bars, int(episodes.seg_end[self.row]))
            self.prev = 0.0
            return episodes.obs[self.row].copy(), {"row": self.row}

        def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
            pos = float(ACTIONS[int(action)])
            r = float(episodes.reward(np.array([pos]), np.array([self.prev]), np.array([self.row]))[0])
            self.prev = pos
            self.row += 1
            truncated = self.row >= self.end
            obs = episodes.obs[min(self.row, len(episodes) - 1)].copy()
            return obs, r, False, truncated, {}

    return BarsEnv()


def bars_vec_env(episodes: Episodes, episode_bars: int, n_envs: int, seed: int) -> Any:
    """``BarsVecEnv``: ``n_envs`` episodes stepped at once (numpy, no Python loop per episode), a
    stable-baselines3 ``VecEnv``; an episode that ends is replaced by a new one at once (its last observation in
    ``terminal_observation``, marked truncated: the market goes on, so its value is bootstrapped)."""
    from stable_baselines3.common.vec_env import VecEnv

    class BarsVecEnv(VecEnv):  # type: ignore[misc]
        render_mode = None

        def __init__(self) -> None:
            self._rng = np.random.default_rng(seed)
            super().__init__(n_envs, *_spaces(episodes.obs.shape[1]))
            self._actions = np.zeros(n_envs, dtype=np.int64)
            self.row = np.zeros(n_envs, dtype=np.int64)
            self.end = np.zeros(n_envs, dtype=np.int64)
            self.prev = np.zeros(n_envs)

        def _draw(self, k: int) -> tuple[np.ndarray, np.ndarray]:
            rows = self._rng.choice(len(episodes), size=k, p=episodes.start_p)
            return rows, np.minimum(rows + episode_bars, episodes.seg_end[rows])

        def reset(self) -> np.ndarray:
            self.row, self.end = self._draw(self.num_envs)
            self.prev[:] = 0.0
            return episodes.obs[self.row].copy()

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = np.asarray(actions, dtype=np.int64).reshape(-1)

        def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
            pos = ACTIONS[self._actions]
            rew = episodes.reward(pos, self.prev, self.row).astype(np.float32)
            self.prev = pos
            self.row = self.row + 1
            done = self.row >= self.end
            obs = episodes.obs[np.minimum(self.row, len(episodes) - 1)].copy()
            infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
            ended = np.flatnonzero(done)
            for i in ended:
                infos[i] = {"terminal_observation": obs[i].copy(), "TimeLimit.truncated": True}
            if len(ended):
                self.row[ended], self.end[ended] = self._draw(len(ended))
                self.prev[ended] = 0.0
                obs[ended] = episodes.obs[self.row[ended]]
            return obs, rew, done, infos

        def close(self) -> None:
            return None

        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            return [getattr(self, attr_name)] * self.num_envs

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            setattr(self, attr_name, value)

        def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
            return [getattr(self, method_name)(*args, **kwargs)] * self.num_envs

        def env_is_wrapped(self, wrapper_class: Any, indices: Any = None) -> list[bool]:
            return [False] * self.num_envs

    return BarsVecEnv()


def net_mean_reward(positions: np.ndarray, episodes: Episodes) -> float:
    """Mean net return per row of holding ``positions`` (in ``episodes``' order) through each whole segment."""
    prev = np.empty_like(positions)
    prev[0] = 0.0
    prev[1:] = positions[:-1]
    first = np.ones(len(positions), dtype=bool)
    first[1:] = episodes.seg_end[1:] != episodes.seg_end[:-1]
    prev[first] = 0.0
    return float(np.mean(episodes.reward(positions, prev, np.arange(len(positions))))) * episodes.reward_scale


# ------------------------------------------------------------------------------------------------ actor


def _actor(n_in: int, width: int, depth: int) -> Any:
    """The policy's actor in plain torch: ``depth`` x (Linear, Tanh), then the action logits (as in
    stable-baselines3's ``MlpPolicy`` with ``net_arch=[width] * depth``)."""
    import torch

    layers: list[Any] = []
    k = n_in
    for _ in range(depth):
        layers += [torch.nn.Linear(k, width), torch.nn.Tanh()]
        k = width
    layers.append(torch.nn.Linear(k, len(ACTIONS)))
    return torch.nn.Sequential(*layers)


def _actor_state(policy_state: dict[str, Any], depth: int) -> dict[str, Any]:
    """The actor's weights out of the whole policy's state dict (its ``mlp_extractor.policy_net`` and
    ``action_net``); ``ModelError`` naming what is missing."""
    out: dict[str, Any] = {}
    try:
        for i in range(depth):
            for p in ("weight", "bias"):
                out[f"{2 * i}.{p}"] = policy_state[f"mlp_extractor.policy_net.{2 * i}.{p}"]
        for p in ("weight", "bias"):
            out[f"{2 * depth}.{p}"] = policy_state[f"action_net.{p}"]
    except KeyError as e:
        raise ModelError(f"the policy's weights lack {e.args[0]}") from None
    return out


# ------------------------------------------------------------------------------------------------ model


class PolicyModel(Model):
    """A PPO policy over the tabular features whose prediction is the position it takes (-1, 0 or +1)."""

    family = "rl"
    artifact_files = ("policy.pt",)
    libraries = ("torch", "stable_baselines3", "gymnasium")
    output = "position"

    def __init__(self, *, seed: int = 0, params: dict[str, Any] | None = None, n_threads: int = 0) -> None:
        super().__init__(seed=seed, params=params, n_threads=n_threads)
        self._actor: Any = None
        self._policy_state: dict[str, Any] | None = None
        self._center = np.zeros(0, dtype=np.float32)
        self._scale = np.ones(0, dtype=np.float32)
        self._reward_scale = 1.0
        self._warm: tuple[dict[str, Any], str] | None = None
        self._warm_columns: list[str] = []
        self._warm_scaler = (self._center, self._scale)
        self._experience: tuple[Any, Market] | None = None

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Network (``width`` x ``depth``, tanh), PPO settings, the step budget (``passes`` over the rows,
        within ``min_timesteps`` .. ``max_timesteps``), episodes, validation checks, warm start (``warm_floor_bps``:
        what the previous policy must earn on the validation rows, bps a row net, to be started from) and
        fine-tuning."""
        return {
            "width": 64, "depth": 2, "learning_rate": 3e-4, "n_envs": 64, "n_steps": 64, "batch_size": 1024,
            "n_epochs": 4, "gamma": 0.5, "gae_lambda": 0.95, "clip_range": 0.2, "ent_coef": 0.001,
            "passes": 8.0, "min_timesteps": 50_000, "max_timesteps": 2_000_000, "episode_bars": 128,
            "n_checks": 6, "warm_fraction": 0.5, "warm_floor_bps": 0.0, "finetune_passes": 4.0,
        }

    @classmethod
    def search_space(cls) -> dict[str, Dim]:
        """What tuning may change: the learning rate, the discount, the entropy bonus and the network width."""
        return {"learning_rate": Dim.real(1e-4, 1e-3, log=True), "gamma": Dim.real(0.5, 0.99),
                "ent_coef": Dim.real(1e-3, 5e-2, log=True), "width": Dim.choice(32, 64, 128)}

    def _input_columns(self, spec: StoredSpec) -> list[str]:
        return list(spec.tabular)

    # -- warm start and experience -----------------------------------------------------------------
    def warm_start(self, previous: Model, version: str = "") -> str | None:
        """Start the next ``fit`` from ``previous``'s weights; None when it can, else why not (a cold start)."""
        if not isinstance(previous, PolicyModel) or previous._policy_state is None:
            return f"{version or 'the previous version'} is not an rl policy with its weights"
        for key in ("width", "depth"):
            if int(previous.params[key]) != int(self.params[key]):
                return f"{version or 'the previous version'} has network {key} {previous.params[key]}"
        self._warm = ({k: v.clone() for k, v in previous._policy_state.items()}, version)
        self._warm_columns = list(previous.columns)
        self._warm_scaler = (previous._center.copy(), previous._scale.copy())
        return None

    def fine_tune_on(self, X: Any, market: Market) -> None:
        """After pre-training, train on these experience rows too (see the module doc); ``X`` a DataFrame with
        the model's columns (known at ``fit``)."""
        self._experience = (X, market)

    # -- training -----------------------------------------------------------------------------------
    def _scale_obs(self, X: np.ndarray, scaler: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
        center, scale = scaler if scaler is not None else (self._center, self._scale)
        z = (X - center) / scale
        return np.clip(np.nan_to_num(z, nan=0.0, posinf=CLIP, neginf=-CLIP), -CLIP, CLIP).astype(np.float32)

    def _warm_earns(self, X_valid: np.ndarray) -> float:
        """What the previous version's policy earns on the validation rows (mean net return a row), as it would
        have traded them: its own weights and input scaling."""
        import torch

        assert self._warm is not None and self._valid_market is not None
        depth = int(self.params["depth"])
        actor = _actor(len(self.columns), int(self.params["width"]), depth)
        actor.load_state_dict(_actor_state(self._warm[0], depth), strict=True)
        valid = Episodes(self._scale_obs(X_valid, self._warm_scaler), self._valid_market, 1.0)
        with _TorchSettings(self.n_threads, deterministic=True), torch.inference_mode():
            pos = ACTIONS[actor(torch.from_numpy(valid.obs)).argmax(dim=1).numpy()]
        return net_mean_reward(pos, valid)

    def _fit(self, X: np.ndarray, y: np.ndarray, X_valid: np.ndarray | None, y_valid: np.ndarray | None) -> None:
        import torch
        from stable_baselines3 import PPO

        assert self._market is not None
        p = self.params
        warm_reason = None
        if self._warm is not None and self._warm_columns != self.columns:
            warm_reason = f"{self._warm[1] or 'the previous version'} reads other columns"
            self._warm = None
        if self._warm is not None and X_valid is not None and self._valid_market is not None:
            earned = self._warm_earns(X_valid) * 1e4
            if earned <= float(p["warm_floor_bps"]):  # no head start to keep: it would first have to unlearn
                warm_reason = (f"{self._warm[1] or 'the previous version'} earns {earned:.2f} bps a row on the "
                               f"validation rows, net of costs (floor {float(p['warm_floor_bps']):g}): the market "
                               "moved under it")
                self._warm = None
        if self._warm is not None:  # the previous version's scaling: its weights were learnt on it
            self._center, self._scale = self._warm_scaler
        else:
            med = np.nanmedian(X, axis=0)
            mad = 1.4826 * np.nanmedian(np.abs(X - med), axis=0)
            self._center = np.nan_to_num(med, nan=0.0).astype(np.float32)
            self._scale = np.where(np.isfinite(mad) & (mad > 1e-12), mad, 1.0).astype(np.float32)
        self._reward_scale = reward_scale(self._market.next_return)
        train = Episodes(self._scale_obs(X), self._market, self._reward_scale)
        valid = None
        if X_valid is not None and self._valid_market is not None:
            valid = Episodes(self._scale_obs(X_valid), self._valid_market, self._reward_scale)
        steps = int(np.clip(float(p["passes"]) * len(train), int(p["min_timesteps"]), int(p["max_timesteps"])))
        if self._warm is not None:
            steps = max(int(steps * float(p["warm_fraction"])), 1)
        phases: list[tuple[str, Episodes, int]] = [("history", train, steps)]
        if self._experience is not None:
            Xe, me = self._experience
            xe = self._scale_obs(np.asarray(Xe[self.columns].to_numpy(dtype=np.float32, na_value=np.nan)))
            exp = Episodes(xe, me, self._reward_scale)
            if len(exp):
                phases.append(("experience", exp, int(max(float(p["finetune_passes"]) * len(exp),
                                                          int(p["n_envs"]) * int(p["n_steps"])))))
        t0 = time.perf_counter()
        with _TorchSettings(self.n_threads, deterministic=True):
            torch.manual_seed(self.seed)
            env = bars_vec_env(train, int(p["episode_bars"]), int(p["n_envs"]), self.seed)
            ppo = PPO("MlpPolicy", env, learning_rate=float(p["learning_rate"]), n_steps=int(p["n_steps"]),
                      batch_size=int(p["batch_size"]), n_epochs=int(p["n_epochs"]), gamma=float(p["gamma"]),
                      gae_lambda=float(p["gae_lambda"]), clip_range=float(p["clip_range"]),
                      ent_coef=float(p["ent_coef"]), seed=self.seed, device="cpu", verbose=0,
                      policy_kwargs={"net_arch": [int(p["width"])] * int(p["depth"])})
            best: tuple[float, dict[str, Any]] | None = None
            checks: list[dict[str, Any]] = []
            if self._warm is not None:
                ppo.policy.load_state_dict(self._warm[0], strict=True)
                if valid is not None:  # where the previous version starts on these rows: kept unless bettered
                    score = net_mean_reward(self._positions(ppo.policy, valid.obs), valid)
                    checks.append({"phase": "warm start", "steps": 0, "valid_net_bps": round(score * 1e4, 4)})
                    best = (score, {k: v.detach().clone() for k, v in ppo.policy.state_dict().items()})
            done = 0
            for phase, episodes, n in phases:
                if episodes is not train:
                    ppo.set_env(bars_vec_env(episodes, int(p["episode_bars"]), int(p["n_envs"]), self.seed + 1))
                chunk = max(n // max(int(p["n_checks"]), 1), 1)
                left = n
                while left > 0:
                    take = min(chunk, left)
                    ppo.learn(total_timesteps=take, reset_num_timesteps=False)
                    left -= take
                    done = int(ppo.num_timesteps)
                    if valid is None:
                        continue
                    score = net_mean_reward(self._positions(ppo.policy, valid.obs), valid)
                    checks.append({"phase": phase, "steps": done, "valid_net_bps": round(score * 1e4, 4)})
                    if best is None or score > best[0]:
                        best = (score, {k: v.detach().clone() for k, v in ppo.policy.state_dict().items()})
            state = best[1] if best is not None else {k: v.detach().clone() for k, v in ppo.policy.state_dict().items()}
        self._set_policy(state)
        self.fit_info.update({
            "timesteps": done, "learn_seconds": round(time.perf_counter() - t0, 3),
            "reward_scale": self._reward_scale, "checks": checks,
            "warm_start": {"from": self._warm[1]} if self._warm is not None else
                          ({"from": None, "why_not": warm_reason} if warm_reason else None),
            "experience_rows": int(len(phases[1][1])) if len(phases) > 1 else 0,
        })
        if valid is not None and best is not None:
            self.fit_info["valid_net_bps"] = round(best[0] * 1e4, 4)
        self._warm = None
        self._experience = None

    @staticmethod
    def _positions(policy: Any, obs: np.ndarray) -> np.ndarray:
        import torch

        with torch.inference_mode():
            dist = policy.get_distribution(torch.as_tensor(obs))
            return ACTIONS[dist.distribution.probs.argmax(dim=1).numpy()]

    def _set_policy(self, state: dict[str, Any]) -> None:
        depth, width = int(self.params["depth"]), int(self.params["width"])
        actor = _actor(len(self.columns), width, depth)
        try:
            actor.load_state_dict(_actor_state(state, depth), strict=True)
        except RuntimeError as e:
            raise ModelError(f"the policy's weights do not fit its network: {str(e).splitlines()[0]}") from None
        actor.eval()
        self._actor = actor
        self._policy_state = state

    def _predict(self, X: np.ndarray) -> np.ndarray:
        import torch

        obs = self._scale_obs(X)
        with _TorchSettings(self.n_threads, deterministic=True), torch.inference_mode():
            logits = self._actor(torch.from_numpy(obs))
        return ACTIONS[logits.argmax(dim=1).numpy()]

    # -- persistence --------------------------------------------------------------------------------
    def _save_artifacts(self, directory: Path) -> dict[str, Any]:
        import torch

        assert self._policy_state is not None
        torch.save(self._policy_state, directory / "policy.pt")
        return {"input_scaler": {"center": self._center.tolist(), "scale": self._scale.tolist()},
                "reward_scale": self._reward_scale, "actions": ACTIONS.tolist(),
                "network": {"width": int(self.params["width"]), "depth": int(self.params["depth"]),
                            "activation": "tanh", "library": "stable_baselines3.PPO MlpPolicy"}}

    def _load_artifacts(self, directory: Path, extra: dict[str, Any]) -> None:

        center = np.asarray(extra["input_scaler"]["center"], dtype=np.float32)
        scale = np.asarray(extra["input_scaler"]["scale"], dtype=np.float32)
        if center.shape != (len(self.columns),) or scale.shape != center.shape or not (scale > 0).all():
            raise ModelError(f"{directory / 'model.json'}: its input scaler does not match its "
                             f"{len(self.columns)} columns")
        if list(extra.get("actions") or []) != ACTIONS.tolist():
            raise ModelError(f"{directory / 'model.json'}: its actions are not {ACTIONS.tolist()}")
        self._center, self._scale = center, scale
        self._reward_scale = float(extra.get("reward_scale", 1.0))
        self._set_policy(load_state_dict(directory / "policy.pt"))
