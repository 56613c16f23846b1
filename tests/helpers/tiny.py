"""The tiny model settings the model tests share: 16-byte contexts, 16 x 16 frames, the `tiny` KID features."""

FRAME, CONTEXT, ACTIONS = 16, 2, 5
#: a ByteLM of one block, width 16, over 16-byte windows
BYTE = {"dim": 16, "depth": 1, "num_heads": 2, "seq_len": 16, "nibble_dim": 8, "acc_dim": 4, "warmup_steps": 1}
#: a WorldModel of one block, width 32, on 16 x 16 frames with 2 context frames and 5 actions
WORLD = {
    "frame_size": FRAME,
    "context_frames": CONTEXT,
    "num_actions": ACTIONS,
    "patch_size": 4,
    "dim": 32,
    "depth": 1,
    "num_heads": 2,
    "sample_steps": 2,
    "kid_feature": "tiny",
    "warmup_steps": 1,
    "kid_subset_size": 4,
    "kid_subsets": 3,
    "max_eval_samples": 8,
    "rollout_steps": 3,
    "grid_windows": 2,
}


def _split(settings: dict, net_class: type) -> tuple[dict, dict]:
    """(the network's arguments, the LightningModule's) of one flat dict of test settings."""
    import inspect

    takes = set(inspect.signature(net_class).parameters)
    return {k: v for k, v in settings.items() if k in takes}, {k: v for k, v in settings.items() if k not in takes}


def byte_lm(**settings):
    """``ByteLM(ByteNet(...), ...)`` from flat settings (tests name a network and a training setting alike)."""
    from lightning_film.models import ByteLM, ByteNet

    net, rest = _split(settings, ByteNet)
    return ByteLM(ByteNet(**net), **rest)


def world_model(**settings):
    """``WorldModel(WorldDenoiser(...), ...)`` from flat settings."""
    from lightning_film.models import WorldDenoiser, WorldModel

    net, rest = _split(settings, WorldDenoiser)
    return WorldModel(WorldDenoiser(**net), **rest)
