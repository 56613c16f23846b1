"""Op counts of the Core ML export of a small film ByteLM and WorldModel, layouts default and ane.

    python -m benchmarks.ane_ops OUT.json   # run at two commits (a worktree each) to compare layouts

Core ML cannot run a package on Linux, so the Neural Engine layout's cost is read as op counts.
"""

import json
import sys
import tempfile

import torch

from lightning_film.export.coreml import export_coreml
from lightning_film.models import ByteLM, ByteNet, WorldDenoiser, WorldModel

out = {}
torch.manual_seed(0)
byte = ByteLM(ByteNet(dim=64, depth=2, num_heads=2, seq_len=32, variant="nibble_acc", block_conditioner="film"))
byte.rare_table_known.fill_(True)
world = WorldModel(WorldDenoiser(frame_size=16, dim=64, depth=2, num_heads=2, patch_size=4), kid_feature="tiny")
for name, m in (("byte", byte), ("world", world)):
    for layout in ("default", "ane"):
        with tempfile.TemporaryDirectory() as d:
            r = export_coreml(m, f"{d}/m.mlpackage", weights="fp16", layout=layout)
        h = r["op_histogram"]
        out[f"{name}/{layout}"] = {
            "ops": r["op_count"],
            "transpose": h.get("transpose", 0),
            "reshape": h.get("reshape", 0),
        }
        print(name, layout, out[f"{name}/{layout}"], flush=True)
json.dump(out, open(sys.argv[1], "w"), indent=1)
