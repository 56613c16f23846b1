"""Worlds: seeded environments that render RGB frames, for recording world-model episodes.

A world is a :class:`World`: ``reset(seed)`` and ``step(action)`` return a frame, uint8
``(H, W, 3)`` with ``H == W == frame_size``; ``num_actions`` discrete actions ``0 ..
num_actions - 1``. Worlds are registered by name (``lightning-film list worlds``) and built
with :func:`build_world` from a name or ``{"name": ..., **options}``; every factory takes
``frame_size`` and returns a :class:`World` whose :meth:`World.settings` rebuild it.

Built-in worlds:

- ``bounce_room``: a walled room seen from above. A white square (the agent) moves by one of
  5 actions (0 noop, 1 up, 2 down, 3 left, 4 right), 4/32 of the room per step (4 pixels at 32
  x 32), and walls stop it. Balls fly in straight lines and bounce off the walls
  (deterministic: the future of a ball is fixed by its position and velocity). Items spawn at
  random: each step, with probability ``spawn_prob``, one appears at a uniform place in a
  random colour, and it vanishes after ``item_lifetime`` steps or when the agent touches it.
  So one step shows what the action did, and the future is partly random.
- ``gym``: any Gymnasium environment that renders ``rgb_array``
  (:mod:`lightning_film.data.gym_adapter`, extra ``gym``).

A world may know where its agent is: :meth:`World.locate_agent` finds it in rendered frames
(``bounce_room``: the only near-white object) and :attr:`World.agent_tolerance` says how close a
found agent must be to count as the same place (:func:`agent_matches`); evaluation uses them to
tell whether a model's frame follows its action. A world without a locator (``gym``) leaves
``agent_tolerance`` at ``None``.

Dynamics live in room units (the room is 32 units wide whatever ``frame_size``), so the same
seed and actions give the same trajectory at 32 x 32 and at 64 x 64, rendered finer.

:class:`StickyRandomPolicy` picks the actions of a recording: uniform at random, but the
previous action is repeated with probability ``stickiness``, so trajectories look purposeful.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from lightning_film.errors import check_int
from lightning_film.registry import Registry

__all__ = [
    "WORLDS",
    "BounceRoom",
    "StickyRandomPolicy",
    "World",
    "agent_matches",
    "build_world",
    "check_frame_size",
    "list_worlds",
    "register_world",
]

WORLDS = Registry("world", group="lightning_film.worlds")

MIN_FRAME_SIZE = 16
MAX_FRAME_SIZE = 1024


def register_world(
    name: str | None = None, *, override: bool = False
) -> Callable[[Callable[..., World]], Callable[..., World]]:
    """Register a world factory ``f(frame_size, **options) -> World``."""
    return WORLDS.register(name, override=override)


def build_world(spec: Any, frame_size: int = 32, **kwargs: Any) -> World:
    """Build the world a spec names (a registered name or ``{"name": ..., **options}``)."""
    world = WORLDS.build(spec, frame_size=frame_size, **kwargs)
    if not isinstance(world, World):
        raise TypeError(f"world {spec!r} built a {type(world).__name__}, not a lightning_film World")
    return world


def list_worlds() -> list[str]:
    return WORLDS.names()


def check_frame_size(frame_size: object) -> int:
    """``frame_size`` if it is an integer in [16, 1024], else a ValueError naming it. The upper bound
    keeps a typo (100000) from asking for hundreds of GiB before anything is checked."""
    if (
        isinstance(frame_size, bool)
        or not isinstance(frame_size, (int, np.integer))
        or not MIN_FRAME_SIZE <= frame_size <= MAX_FRAME_SIZE
    ):
        raise ValueError(
            f"frame_size must be an integer >= {MIN_FRAME_SIZE} and <= {MAX_FRAME_SIZE} (frames are frame_size x "
            f"frame_size, e.g. 32 or 64), got {frame_size!r}"
        )
    return int(frame_size)


class World:
    """A seeded environment rendering uint8 frames ``(frame_size, frame_size, 3)``.

    Subclasses set :attr:`num_actions` and :attr:`action_names` and implement :meth:`reset`,
    :meth:`step` and :meth:`settings`.
    """

    #: the registered name, recorded in manifests
    name: str = ""
    num_actions: int = 0
    action_names: tuple[str, ...] = ()
    channels: int = 3

    def __init__(self, frame_size: int) -> None:
        self.frame_size = check_frame_size(frame_size)

    def reset(self, seed: int) -> np.ndarray:
        """Start an episode; everything random in it follows from ``seed``. Returns frame (H, W, 3) uint8."""
        raise NotImplementedError

    def step(self, action: int) -> np.ndarray:
        """Apply ``action`` (0 .. num_actions - 1). Returns the next frame (H, W, 3) uint8."""
        raise NotImplementedError

    def settings(self) -> dict[str, Any]:
        """JSON-able options that, with :attr:`name`, rebuild this world (``frame_size`` included)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what the world holds (a Gymnasium env, say)."""

    #: pixels within which a located agent counts as in the same place; None: no locator
    agent_tolerance: float | None = None

    def locate_agent(self, frames: Any) -> np.ndarray:
        """Frames, uint8 (B, H, W, 3) array or (B, 3, H, W) tensor -> (B, 2) float (row, col) of
        the agent's centre in pixels (pixel i's centre is i), NaN where no agent is found.
        Worlds with a locator override this and set :attr:`agent_tolerance`."""
        raise NotImplementedError(f"world {self.name!r} has no agent locator")

    def check_action(self, action: object) -> int:
        if isinstance(action, bool) or not isinstance(action, (int, np.integer)) or not 0 <= action < self.num_actions:
            raise ValueError(
                f"world {self.name!r}: action must be an integer in [0, {self.num_actions}) "
                f"({', '.join(f'{i} {n}' for i, n in enumerate(self.action_names))}), got {action!r}"
            )
        return int(action)


# -- bounce_room --------------------------------------------------------------------------------------
ROOM = 32.0  # room side, in room units (a pixel is ROOM / frame_size units)
WALL = 2.0
AGENT_HALF = 3.0
AGENT_SPEED = 4.0
BALL_RADIUS = 2.5
ITEM_HALF = 2.0
MOVES = np.array([[0, 0], [0, -1], [0, 1], [-1, 0], [1, 0]], dtype=np.float64) * AGENT_SPEED  # (x, y) per action

AGENT_WHITE = 200  # min channel above which a pixel is the agent's
AGENT_TOLERANCE = 1.5  # pixels at 32 x 32, scaled with frame_size

FLOOR = (16, 18, 32)
WALL_COLOUR = (112, 112, 124)
AGENT_COLOUR = (250, 250, 250)
BALL_COLOURS = np.array([(230, 60, 50), (60, 200, 80), (70, 110, 240), (200, 90, 220)], dtype=np.uint8)
ITEM_COLOURS = np.array([(240, 210, 50), (50, 220, 220), (250, 140, 40), (240, 120, 170)], dtype=np.uint8)


@register_world("bounce_room")
class BounceRoom(World):
    """Top-down room: an agent (5 actions), bouncing balls and items that spawn at random.

    Args:
        frame_size: frames are ``frame_size x frame_size`` RGB, >= 16.
        num_balls: balls bouncing off the walls (deterministic motion), 0 to 4.
        spawn_prob: chance per step that an item appears at a random place (the random part).
        item_lifetime: steps an item lives unless the agent touches it first.
        max_items: items present at once; no spawn while there are this many.
    """

    name = "bounce_room"
    num_actions = 5
    action_names = ("noop", "up", "down", "left", "right")

    def __init__(
        self,
        frame_size: int = 32,
        num_balls: int = 3,
        spawn_prob: float = 0.15,
        item_lifetime: int = 24,
        max_items: int = 4,
    ) -> None:
        super().__init__(frame_size)
        if isinstance(num_balls, bool) or not isinstance(num_balls, int) or not 0 <= num_balls <= len(BALL_COLOURS):
            raise ValueError(
                f"bounce_room: num_balls must be an integer in [0, {len(BALL_COLOURS)}], got {num_balls!r}"
            )
        if not isinstance(spawn_prob, (int, float)) or not 0.0 <= spawn_prob <= 1.0:
            raise ValueError(f"bounce_room: spawn_prob must be a probability in [0, 1], got {spawn_prob!r}")
        for label, value in (("item_lifetime", item_lifetime), ("max_items", max_items)):
            check_int(label, value, 1, who="bounce_room")
        self.num_balls, self.spawn_prob = num_balls, float(spawn_prob)
        self.item_lifetime, self.max_items = item_lifetime, max_items
        centres = (np.arange(self.frame_size) + 0.5) * (ROOM / self.frame_size)  # pixel centres, room units
        self._cx, self._cy = centres[None, None, :], centres[None, :, None]  # (1, 1, W), (1, H, 1)
        inside = (centres >= WALL) & (centres < ROOM - WALL)
        self._background = np.where((inside[:, None] & inside[None, :])[..., None], FLOOR, WALL_COLOUR).astype(np.uint8)
        self.rng = np.random.default_rng(0)
        self.reset(0)

    def settings(self) -> dict[str, Any]:
        return {
            "frame_size": self.frame_size,
            "num_balls": self.num_balls,
            "spawn_prob": self.spawn_prob,
            "item_lifetime": self.item_lifetime,
            "max_items": self.max_items,
        }

    def reset(self, seed: int) -> np.ndarray:
        self.rng = rng = np.random.default_rng(seed)
        self.agent = rng.uniform(WALL + AGENT_HALF, ROOM - WALL - AGENT_HALF, 2)  # (x, y)
        self.ball_pos = rng.uniform(WALL + BALL_RADIUS, ROOM - WALL - BALL_RADIUS, (self.num_balls, 2))
        self.ball_vel = rng.uniform(1.0, 2.5, (self.num_balls, 2)) * rng.choice([-1.0, 1.0], (self.num_balls, 2))
        self.item_pos = np.zeros((0, 2))
        self.item_age = np.zeros(0, dtype=np.int64)
        self.item_colour = np.zeros(0, dtype=np.int64)
        return self.render()

    def step(self, action: int) -> np.ndarray:
        action = self.check_action(action)
        self.agent = np.clip(self.agent + MOVES[action], WALL + AGENT_HALF, ROOM - WALL - AGENT_HALF)
        self._move_balls()
        self.item_age = self.item_age + 1
        touched = np.all(np.abs(self.item_pos - self.agent) < AGENT_HALF + ITEM_HALF, axis=1)
        keep = (self.item_age < self.item_lifetime) & ~touched
        self.item_pos, self.item_age, self.item_colour = (
            self.item_pos[keep],
            self.item_age[keep],
            self.item_colour[keep],
        )
        if len(self.item_age) < self.max_items and self.rng.random() < self.spawn_prob:
            pos = self.rng.uniform(WALL + ITEM_HALF, ROOM - WALL - ITEM_HALF, (1, 2))
            self.item_pos = np.concatenate([self.item_pos, pos])
            self.item_age = np.append(self.item_age, 0)
            self.item_colour = np.append(self.item_colour, self.rng.integers(len(ITEM_COLOURS)))
        return self.render()

    def locate_agent(self, frames: Any) -> np.ndarray:
        """(B, 2) (row, col) centroid of the near-white pixels (min channel > 200): the agent is
        the only such object (ball, item, wall and floor colours all have a channel <= 140);
        NaN when fewer than a few are found (an agent hidden or not drawn)."""
        white = _hwc_frames(frames).min(axis=3) > AGENT_WHITE  # (B, H, W)
        count = white.sum(axis=(1, 2))  # (B,)
        rows, cols = np.arange(white.shape[1], dtype=np.float64), np.arange(white.shape[2], dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            found = np.stack(
                [(white.sum(axis=2) * rows).sum(axis=1) / count, (white.sum(axis=1) * cols).sum(axis=1) / count], axis=1
            )  # (B, 2)
        # a full agent covers (6 / 32 frame)^2 pixels; a quarter of it at least, and never under 3
        enough = max(3, int((2 * AGENT_HALF * self.frame_size / ROOM) ** 2 / 4))
        found[count < enough] = np.nan
        return found

    @property
    def agent_tolerance(self) -> float:  # type: ignore[override]
        # the agent moves 4 px per step at 32 x 32: 1.5 px tells a step apart from no step
        return AGENT_TOLERANCE * self.frame_size / 32

    def _move_balls(self) -> None:
        lo, hi = WALL + BALL_RADIUS, ROOM - WALL - BALL_RADIUS
        pos = self.ball_pos + self.ball_vel
        below, above = pos < lo, pos > hi  # one reflection is enough: a step is shorter than the room
        pos = np.where(below, 2 * lo - pos, np.where(above, 2 * hi - pos, pos))
        self.ball_vel = np.where(below | above, -self.ball_vel, self.ball_vel)
        self.ball_pos = pos

    def render(self) -> np.ndarray:
        """The current frame (H, W, 3) uint8: items, then balls, then the agent on top."""
        rect_pos = np.concatenate([self.item_pos, self.agent[None]])  # (M + 1, 2)
        rect_half = np.append(np.full(len(self.item_pos), ITEM_HALF), AGENT_HALF)[:, None, None]
        rects = (np.abs(self._cx - rect_pos[:, 0, None, None]) < rect_half) & (
            np.abs(self._cy - rect_pos[:, 1, None, None]) < rect_half
        )  # (M + 1, H, W)
        balls = (self._cx - self.ball_pos[:, 0, None, None]) ** 2 + (
            self._cy - self.ball_pos[:, 1, None, None]
        ) ** 2 < BALL_RADIUS**2  # (N, H, W)
        masks = np.concatenate([rects[:-1], balls, rects[-1:]])  # (L, H, W) in paint order
        colours = np.concatenate(
            [ITEM_COLOURS[self.item_colour], BALL_COLOURS[: self.num_balls], np.array([AGENT_COLOUR], np.uint8)]
        )  # (L, 3)
        top = len(masks) - 1 - np.argmax(masks[::-1], axis=0)  # (H, W): the last layer covering each pixel
        return np.where(masks.any(axis=0)[..., None], colours[top], self._background)  # (H, W, 3)


def _hwc_frames(frames: Any) -> np.ndarray:
    """uint8 (B, H, W, 3) array or (B, 3, H, W) tensor -> (B, H, W, 3) array."""
    if hasattr(frames, "permute"):  # a torch tensor, channels first (no torch import for numpy users)
        frames = frames.detach().permute(0, 2, 3, 1).cpu().numpy()
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f"locate_agent expects frames (B, H, W, 3) or a tensor (B, 3, H, W), got {frames.shape}")
    return frames


def agent_matches(found: np.ndarray, truth: np.ndarray, tolerance: float) -> np.ndarray:
    """(B,) bool: both agents located (no NaN) and max(|d_row|, |d_col|) <= ``tolerance`` pixels;
    ``found``, ``truth``: (B, 2) from :meth:`World.locate_agent`."""
    with np.errstate(invalid="ignore"):
        return np.nan_to_num(np.abs(np.asarray(found) - np.asarray(truth)).max(axis=1), nan=np.inf) <= tolerance


# -- policy --------------------------------------------------------------------------------------------
class StickyRandomPolicy:
    """Uniformly random actions, repeating the previous one with probability ``stickiness``.

    Args:
        num_actions: actions are ``0 .. num_actions - 1``.
        stickiness: chance of repeating the previous action each step, in [0, 1); 0 is uniform.
    """

    name = "sticky_random"

    def __init__(self, num_actions: int, stickiness: float = 0.8) -> None:
        check_int("num_actions", num_actions, 1)
        if not isinstance(stickiness, (int, float)) or not 0.0 <= stickiness < 1.0:
            raise ValueError(f"stickiness must be in [0, 1) (0: uniform actions), got {stickiness!r}")
        self.num_actions, self.stickiness = num_actions, float(stickiness)
        self.reset(0)

    def reset(self, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.action = int(self.rng.integers(self.num_actions))
        self._first = True

    def act(self) -> int:
        """The next action (the first of an episode is uniform)."""
        if not self._first and self.rng.random() >= self.stickiness:
            self.action = int(self.rng.integers(self.num_actions))
        self._first = False
        return self.action

    def settings(self) -> dict[str, Any]:
        return {"name": self.name, "stickiness": self.stickiness}
