"""Worlds: the registry, bounce_room's dynamics (actions, walls, bounces, random items) and the policy."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pytest

from lightning_film.data.environments import (
    AGENT_COLOUR,
    WORLDS,
    BounceRoom,
    StickyRandomPolicy,
    World,
    build_world,
    list_worlds,
)
from lightning_film.registry import RegistryError

NOOP, UP, DOWN, LEFT, RIGHT = range(5)
PURE_WORLDS = [n for n in list_worlds() if n != "gym"]  # gym needs the extra; tested in test_record.py


def agent_box(frame: np.ndarray) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) pixel bounds of the agent (the only AGENT_COLOUR pixels)."""
    rows, cols = np.nonzero(np.all(frame == AGENT_COLOUR, axis=-1))
    return int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())


def rollout(world: World, seed: int, actions: list[int]) -> np.ndarray:
    return np.stack([world.reset(seed)] + [world.step(a) for a in actions])


# -- every registered world (timm style: new entries are tested for free) ------------------------------
@pytest.mark.parametrize("name", PURE_WORLDS)
@pytest.mark.parametrize("frame_size", [16, 24, 64])
def test_world_frames_are_uint8_images_of_the_frame_size(name, frame_size):
    world = build_world(name, frame_size=frame_size)
    assert world.frame_size == frame_size and world.num_actions >= 1
    assert len(world.action_names) == world.num_actions
    for frame in rollout(world, 0, list(range(world.num_actions)) * 2):
        assert frame.dtype == np.uint8 and frame.shape == (frame_size, frame_size, 3)


@pytest.mark.parametrize("name", PURE_WORLDS)
def test_world_is_deterministic_by_seed_and_rebuilt_by_its_settings(name):
    world = build_world(name, frame_size=16)
    actions = [i % world.num_actions for i in range(30)]
    first = rollout(world, 7, actions)
    assert np.array_equal(first, rollout(world, 7, actions))  # the same seed, the same frames
    assert not np.array_equal(first, rollout(world, 8, actions))  # another seed, other frames
    again = build_world({"name": name, **world.settings()}, frame_size=16)
    assert np.array_equal(first, rollout(again, 7, actions))


def test_registry_lists_worlds_and_rejects_unknown_names():
    assert {"bounce_room", "gym"} <= set(list_worlds())
    assert all(e.doc and "\n" not in e.doc for e in WORLDS.entries())
    with pytest.raises(
        RegistryError, match=r"unknown world 'bounce_rom'; did you mean 'bounce_room'.*bounce_room, gym"
    ):
        build_world("bounce_rom")


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"frame_size": 15}, r"frame_size must be an integer >= 16 .*got 15"),
        ({"frame_size": 32.0}, r"frame_size must be an integer >= 16 .*got 32.0"),
        ({"num_balls": 9}, r"num_balls must be an integer in \[0, 4\], got 9"),
        ({"spawn_prob": 1.5}, r"spawn_prob must be a probability in \[0, 1\], got 1.5"),
        ({"item_lifetime": 0}, r"item_lifetime must be an integer >= 1, got 0"),
    ],
)
def test_bad_world_options_name_the_value_and_the_rule(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_world("bounce_room", **{"frame_size": 16, **kwargs})


def test_bad_action_lists_the_actions():
    world = BounceRoom(16)
    with pytest.raises(ValueError, match=r"action must be an integer in \[0, 5\) \(0 noop, 1 up, .*4 right\), got 5"):
        world.step(5)


def test_import_fills_the_world_registry_without_lightning():
    code = "import sys, lightning_film.data as d; print(','.join(d.list_worlds())); print('lightning.pytorch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert {"bounce_room", "gym"} <= set(out[0].split(",")) and out[1] == "False"


# -- bounce_room ---------------------------------------------------------------------------------------
def test_actions_move_the_agent_four_pixels_in_one_step():
    world = BounceRoom(32, num_balls=0, spawn_prob=0.0)
    world.reset(0)
    world.agent = np.array([16.0, 16.0])  # mid-room, (x, y) in room units
    start = copy.deepcopy(world)
    top, bottom, left, right = agent_box(world.render())
    moved = {}
    for action in range(5):
        world = copy.deepcopy(start)
        moved[action] = agent_box(world.step(action))
    assert moved[NOOP] == (top, bottom, left, right)
    assert moved[UP] == (top - 4, bottom - 4, left, right)
    assert moved[DOWN] == (top + 4, bottom + 4, left, right)
    assert moved[LEFT] == (top, bottom, left - 4, right - 4)
    assert moved[RIGHT] == (top, bottom, left + 4, right + 4)


def test_every_action_gives_a_different_next_frame_with_balls_and_items():
    world = BounceRoom(16)
    world.reset(3)
    world.agent = np.array([16.0, 16.0])
    nexts = [copy.deepcopy(world).step(a) for a in range(5)]
    assert len({f.tobytes() for f in nexts}) == 5


@pytest.mark.parametrize(("action", "side"), [(LEFT, "left"), (RIGHT, "right"), (UP, "top"), (DOWN, "bottom")])
def test_walls_stop_the_agent(action, side):
    world = BounceRoom(32, num_balls=0, spawn_prob=0.0)
    world.reset(1)
    for _ in range(10):
        frame = world.step(action)
    box = dict(zip(("top", "bottom", "left", "right"), agent_box(frame)))
    assert box[side] == (2 if side in ("left", "top") else 29)  # the wall is 2 pixels thick at 32 x 32
    assert np.array_equal(world.step(action), frame)  # pushing on: nothing moves


def test_balls_bounce_deterministically_off_the_walls():
    world = BounceRoom(32, num_balls=4, spawn_prob=0.0)
    world.reset(5)
    lo, hi = 2.0 + 2.5, 30.0 - 2.5
    flips = 0
    for _ in range(100):
        before = world.ball_vel.copy()
        world.step(NOOP)
        assert np.all((world.ball_pos >= lo) & (world.ball_pos <= hi))
        assert np.array_equal(np.abs(world.ball_vel), np.abs(before))  # bounces keep the speed
        flips += int((np.sign(world.ball_vel) != np.sign(before)).sum())
    assert flips > 0
    # without spawning, the future does not depend on the random stream at all
    a, b = BounceRoom(16, spawn_prob=0.0), BounceRoom(16, spawn_prob=0.0)
    a.reset(2), b.reset(2)
    b.rng = np.random.default_rng(99)
    assert all(np.array_equal(a.step(i % 5), b.step(i % 5)) for i in range(40))


def test_the_future_is_partly_random():
    world = BounceRoom(16)
    world.reset(4)
    twin = copy.deepcopy(world)
    assert all(np.array_equal(world.step(i % 5), twin.step(i % 5)) for i in range(10))  # same state and stream
    twin.rng = np.random.default_rng(123)  # same state, other luck
    frames = [(world.step(i % 5), twin.step(i % 5)) for i in range(40)]
    assert any(not np.array_equal(x, y) for x, y in frames)


def test_items_vanish_when_touched_or_old():
    world = BounceRoom(32, num_balls=0, spawn_prob=0.0, item_lifetime=5)
    world.reset(0)
    world.agent = np.array([10.0, 10.0])
    world.item_pos = np.array([[10.0, 14.0], [24.0, 24.0]])  # one touching the agent after a step down
    world.item_age = np.array([0, 0])
    world.item_colour = np.array([0, 1])
    world.step(DOWN)
    assert world.item_pos.tolist() == [[24.0, 24.0]]
    for _ in range(4):
        world.step(NOOP)
    assert len(world.item_pos) == 0


def test_items_spawn_at_the_spawn_rate():
    world = BounceRoom(16, num_balls=0, spawn_prob=0.3, item_lifetime=1, max_items=1)
    world.reset(0)
    spawned = 0
    for _ in range(2000):
        world.step(NOOP)
        spawned += len(world.item_pos)  # each lives one step: the count is the number spawned
    assert 0.26 < spawned / 2000 < 0.34


def test_dynamics_do_not_depend_on_the_frame_size():
    small, large = BounceRoom(32), BounceRoom(64)
    small.reset(9), large.reset(9)
    for i in range(50):
        small.step(i % 5), large.step(i % 5)
    assert np.array_equal(small.agent, large.agent) and np.array_equal(small.ball_pos, large.ball_pos)
    assert np.array_equal(small.item_pos, large.item_pos)


# -- policy ---------------------------------------------------------------------------------------------
def test_sticky_policy_repeats_and_is_seeded():
    policy = StickyRandomPolicy(5, stickiness=0.8)
    policy.reset(0)
    actions = np.array([policy.act() for _ in range(5000)])
    assert set(actions.tolist()) == set(range(5))
    repeats = (actions[1:] == actions[:-1]).mean()
    assert abs(repeats - (0.8 + 0.2 / 5)) < 0.03  # a fresh draw repeats by chance 1 time in 5
    policy.reset(0)
    assert [policy.act() for _ in range(100)] == actions[:100].tolist()
    uniform = StickyRandomPolicy(5, stickiness=0.0)
    uniform.reset(0)
    drawn = np.array([uniform.act() for _ in range(5000)])
    assert abs((drawn[1:] == drawn[:-1]).mean() - 0.2) < 0.03
    with pytest.raises(ValueError, match=r"stickiness must be in \[0, 1\).*got 1.0"):
        StickyRandomPolicy(5, stickiness=1.0)


# -- the agent locator ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("frame_size", [32, 64])
def test_bounce_room_locates_its_agent_to_well_under_a_pixel(frame_size):
    import torch

    world = BounceRoom(frame_size, num_balls=4, spawn_prob=0.5)
    frames, truth = [world.reset(7)], [world.agent.copy()]
    for action in [UP, UP, LEFT, DOWN, RIGHT, RIGHT, NOOP, DOWN] * 3:
        frames.append(world.step(action))
        truth.append(world.agent.copy())
    frames = np.stack(frames)  # (B, H, W, 3)
    # (x, y) in room units -> (row, col) in pixels, pixel i's centre at i
    expected = np.asarray(truth)[:, ::-1] * frame_size / 32.0 - 0.5
    found = world.locate_agent(frames)
    assert found.shape == (len(frames), 2) and np.abs(found - expected).max() < 0.5
    from_tensor = world.locate_agent(torch.from_numpy(frames).permute(0, 3, 1, 2))  # (B, 3, H, W) too
    np.testing.assert_array_equal(from_tensor, found)
    assert world.agent_tolerance == 1.5 * frame_size / 32
    no_agent = np.broadcast_to(world._background, frames.shape[1:])[None]
    assert np.isnan(world.locate_agent(no_agent)).all()


def test_agent_matches_truth_and_not_a_shifted_agent():
    from lightning_film.data.environments import agent_matches

    world = BounceRoom(32, num_balls=3, spawn_prob=0.3)
    frames = rollout(world, 3, [UP, LEFT, DOWN, RIGHT, UP, RIGHT])
    found = world.locate_agent(frames)
    assert agent_matches(found, found, world.agent_tolerance).all()  # truth vs itself: 1
    moved = [copy.deepcopy(world) for _ in range(2)]
    shifted = np.stack([w.step(a) for w, a in zip(moved, [UP, RIGHT])])
    moved[0].agent, moved[1].agent = moved[0].agent + [0, 4], moved[1].agent - [4, 0]  # undo the step
    truth = np.stack([moved[0].render(), moved[1].render()])  # the agent one 4-pixel step away
    assert not agent_matches(world.locate_agent(shifted), world.locate_agent(truth), world.agent_tolerance).any()
    nan = np.full((1, 2), np.nan)
    assert not agent_matches(nan, nan, 1.5).any()  # no agent found: no match


def test_worlds_without_a_locator_say_so():
    class Plain(World):
        name = "plain"

    plain = Plain(16)
    assert plain.agent_tolerance is None
    with pytest.raises(NotImplementedError, match="world 'plain' has no agent locator"):
        plain.locate_agent(np.zeros((1, 16, 16, 3), np.uint8))
