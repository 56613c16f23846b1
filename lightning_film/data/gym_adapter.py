"""The ``gym`` world: record any Gymnasium environment that renders ``rgb_array``.

    lightning-film record --gym CartPole-v1 --episodes 64 --out data/cartpole

Needs the ``gym`` extra (``pip install 'lightning_film[gym]'``: gymnasium, and pygame-ce for
the classic-control renderers); this module imports Gymnasium only when such a world is built.
Rendering is headless: ``SDL_VIDEODRIVER`` defaults to ``dummy``.

Frames are the env's ``render()`` resized to ``frame_size x frame_size`` with PIL's box
(area) filter; a non-square render is stretched, not cropped, so nothing leaves the picture.
Only ``Discrete(n, start)`` action spaces are accepted: action ``i`` is ``start + i`` in the env.
Recordings have a fixed length, so an episode that terminates or is truncated is reset in
place (with the env's own random stream, so still a function of the episode seed): the frame
after a termination is the first frame of a fresh start.
"""

from __future__ import annotations

import difflib
import os
from types import ModuleType
from typing import Any

import numpy as np

from lightning_film.data.environments import World, register_world

__all__ = ["GYM_EXTRA_HINT", "GymWorld", "MissingExtra", "import_gymnasium", "resize_frame"]

GYM_EXTRA_HINT = "pip install 'lightning_film[gym]'"


class MissingExtra(ImportError, ValueError):
    """An optional dependency is not installed (also a ValueError: the CLI shows it as one line)."""


def import_gymnasium() -> ModuleType:
    """Gymnasium, set up to render without a display; a clear error naming the extra if it is missing."""
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("PYGAME_HIDE_SUPPORT_PROMPT", "1")
    try:
        import gymnasium
    except ImportError as err:
        raise MissingExtra(
            f"recording Gymnasium environments needs the gymnasium package, which is not installed: {GYM_EXTRA_HINT}"
        ) from err
    return gymnasium


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """An RGB(A) render (h, w, 3|4) as uint8 (size, size, 3), by area averaging (PIL's box filter)."""
    from PIL import Image

    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
        raise ValueError(f"a render must be an RGB image (h, w, 3), got shape {frame.shape}")
    frame = np.ascontiguousarray(frame[..., :3]).astype(np.uint8, copy=False)
    if frame.shape[:2] == (size, size):
        return frame
    return np.asarray(Image.fromarray(frame).resize((size, size), Image.Resampling.BOX))


@register_world("gym")
class GymWorld(World):
    """Any Gymnasium env rendering rgb_array with Discrete actions (option env_id; extra gym).

    Args:
        frame_size: renders are resized to ``frame_size x frame_size``.
        env_id: a registered Gymnasium id, e.g. ``"CartPole-v1"``.
        env_kwargs: keyword arguments of ``gymnasium.make``.
    """

    name = "gym"

    def __init__(self, frame_size: int = 32, env_id: str = "CartPole-v1", env_kwargs: dict[str, Any] | None = None):
        super().__init__(frame_size)
        gym = import_gymnasium()
        if not isinstance(env_id, str) or env_id not in gym.envs.registry:
            close = difflib.get_close_matches(str(env_id), list(gym.envs.registry), n=3)
            hint = f"; did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown Gymnasium environment {env_id!r}{hint} (python -c 'import gymnasium; "
                f"gymnasium.pprint_registry()' lists them)"
            )
        self.env_id, self.env_kwargs = env_id, dict(env_kwargs or {})
        try:
            env = gym.make(env_id, render_mode="rgb_array", **self.env_kwargs)
        except (gym.error.Error, TypeError, ValueError) as err:
            raise ValueError(
                f"cannot make Gymnasium environment {env_id!r} with render_mode='rgb_array': {err}"
            ) from err
        if "rgb_array" not in env.metadata.get("render_modes", []):
            env.close()
            raise ValueError(
                f"Gymnasium environment {env_id!r} does not render 'rgb_array' "
                f"(its render modes: {env.metadata.get('render_modes', [])}); only pixel-rendering envs can be recorded"
            )
        space = env.action_space
        if not isinstance(space, gym.spaces.Discrete):
            env.close()
            raise ValueError(
                f"Gymnasium environment {env_id!r} has action space {space}; only Discrete action spaces can be "
                f"recorded (the world model takes one action id per step)"
            )
        self.env = env
        self.num_actions, self._start = int(space.n), int(space.start)
        self.action_names = tuple(str(self._start + i) for i in range(self.num_actions))
        self.resets = 0  # terminations/truncations reset in place since the world was built

    def settings(self) -> dict[str, Any]:
        return {"frame_size": self.frame_size, "env_id": self.env_id, "env_kwargs": self.env_kwargs}

    def reset(self, seed: int) -> np.ndarray:
        self.env.reset(seed=int(seed))
        return self._frame()

    def step(self, action: int) -> np.ndarray:
        action = self.check_action(action)
        _, _, terminated, truncated, _ = self.env.step(self._start + action)
        if terminated or truncated:
            self.env.reset()  # no seed: the env's stream goes on, so the episode seed still fixes everything
            self.resets += 1
        return self._frame()

    def close(self) -> None:
        self.env.close()

    def _frame(self) -> np.ndarray:
        frame = self.env.render()
        if not isinstance(frame, np.ndarray):
            raise ValueError(f"Gymnasium environment {self.env_id!r} rendered {type(frame).__name__}, not an image")
        return resize_frame(frame, self.frame_size)
