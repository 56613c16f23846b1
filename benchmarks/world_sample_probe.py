"""World sample-quality probe (issue 13: KID and speckle), outside Lightning.

Trains the filmcond network for --steps with a noise schedule shifted by --shift (as
``noise_shift``) or the plain one with training times drawn as the shifted schedule would
(--tshift), a fraction --tmix drawn uniformly; keeps an EMA (--ema) and scores raw and EMA weights
with two DDIM grids (uniform in t, uniform in log-sigma): KID (Inception, reference resize), agent
accuracy with the true and a wrong action, PSNR. Results: benchmarks/results/world/sample-probes/.
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from world_probe_data import stack, world_data

from lightning_film.data.environments import agent_matches
from lightning_film.metrics.kid import build_kid_feature, compute_kid, kid_metric, real_features
from lightning_film.models.world_eval import datamodule_world
from lightning_film.models.world_model import WorldModel
from lightning_film.models.world_net import WorldDenoiser, to_uint8, to_unit
from lightning_film.nn.diffusion import cosine_alpha_bar

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--steps", type=int, default=4000)
p.add_argument("--shift", type=float, default=16.0, help="schedule shift (as noise_shift)")
p.add_argument("--tshift", type=float, default=1.0, help="time-distribution shift on the schedule")
p.add_argument("--tmix", type=float, default=0.0, help="fraction of t drawn uniform (unshifted)")
p.add_argument("--ema", type=float, default=0.999)
p.add_argument("--patch", type=int, default=4)
p.add_argument("--dim", type=int, default=128)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--eval_n", type=int, default=256)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
dm = world_data()
tr = dm.windows("train")
te = dm.windows("test")
train_all = stack(tr, np.arange(len(tr)))
test = stack(te, np.arange(a.eval_n))
m = WorldModel(WorldDenoiser(patch_size=a.patch, dim=a.dim), noise_shift=1.0, kid_feature="tiny", seed=a.seed)
T = 1000
ab_plain = cosine_alpha_bar(T)
lam_plain = torch.logit(ab_plain)  # decreasing in t
ab = torch.sigmoid(lam_plain - 2 * math.log(a.shift)) if a.shift != 1 else ab_plain
lam = torch.logit(ab)


def sample_t(n, g):
    u = torch.randint(0, T, (n,), generator=g)
    if a.tshift != 1.0:  # the level the shifted schedule would use, on this schedule
        target = lam[u] - 2 * math.log(a.tshift)
        u = torch.searchsorted(-lam, -target).clamp(max=T - 1)
    if a.tmix:
        mix = torch.rand(n, generator=g) < a.tmix
        u = torch.where(mix, torch.randint(0, T, (n,), generator=g), u)
    return u


def levels(t):
    x = ab[t].float()
    return x.sqrt().view(-1, 1, 1, 1), (1 - x).sqrt().view(-1, 1, 1, 1)


opt = torch.optim.AdamW(m.parameters(), lr=1e-3, betas=(0.9, 0.99), weight_decay=0.0)
ema = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(a.ema), use_buffers=False)
g = torch.Generator().manual_seed(a.seed)
N = len(train_all["target"])
warm = 100
t0 = time.time()
for step in range(a.steps):
    frac = step / a.steps
    lr = 1e-3 * ((step + 1) / warm if step < warm else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    for gr in opt.param_groups:
        gr["lr"] = lr
    idx = torch.randint(0, N, (32,), generator=g)
    ctx, act, x0 = to_unit(train_all["context"][idx]), train_all["action"][idx], to_unit(train_all["target"][idx])
    noise = torch.randn(x0.shape, generator=g)
    t = sample_t(32, g)
    sa, ss = levels(t)
    out = m.net(sa * x0 + ss * noise, t.float(), ctx, act)
    loss = F.mse_loss(out, sa * noise - ss * x0)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    if step >= warm:
        ema.update_parameters(m)
    elif step == warm - 1:
        ema = AveragedModel(m, multi_avg_fn=get_ema_multi_avg_fn(a.ema), use_buffers=False)
train_s = time.time() - t0
sig = ((1 - ab) / ab).sqrt().double()


def grid(kind, steps=20):
    if kind == "uniform":
        return torch.linspace(T - 1, 0, steps, dtype=torch.float64).round().long()
    s = torch.exp(torch.linspace(math.log(float(sig[-2])), math.log(float(sig[0])), steps - 1, dtype=torch.float64))
    return torch.cat([torch.tensor([T - 1]), torch.searchsorted(sig, s).clamp(max=T - 1)])


@torch.no_grad()
def sample(net, ctx_u8, act, ts, gen):
    ctx = to_unit(ctx_u8)
    x = torch.randn((len(act), 3, 32, 32), generator=gen)
    for i, t in enumerate(ts.tolist()):
        tt = torch.full((len(act),), t, dtype=torch.long)
        sa, ss = levels(tt)
        x0 = (sa * x - ss * net(x, tt.float(), ctx, act)).clamp(-1, 1)
        eps = (x - sa * x0) / ss
        if i + 1 == len(ts):
            return to_uint8(x0)
        sa2, ss2 = levels(torch.full_like(tt, int(ts[i + 1])))
        x = sa2 * x0 + ss2 * eps


world = datamodule_world(dm)
ext = build_kid_feature("inception")
ctx, act, tgt = test["context"], test["action"], test["target"]
realf = real_features(ext, tgt, "probe-bounce", "test")
truth_at = world.locate_agent(tgt)


def score(fake):
    kid = kid_metric(ext, 50, 100)
    kid.real_features.append(realf)
    kid.update(fake, real=False)
    km, _ = compute_kid(kid)
    mse = ((fake.float() - tgt.float()) ** 2).mean()
    return dict(
        kid=round(float(km), 4),
        acc=float(agent_matches(world.locate_agent(fake), truth_at, world.agent_tolerance).mean()),
        psnr=round(float(10 * torch.log10(255**2 / mse)), 2),
    )


res = {"name": a.name, "args": vars(a), "train_s": round(train_s, 1)}
for wname, net in (("raw", m.net), ("ema", ema.module.net)):
    net.eval()
    for kind in ("uniform", "logsnr"):
        fake = sample(net, ctx, act, grid(kind), torch.Generator().manual_seed(1))
        wrong = sample(net, ctx, (act + 1) % 5, grid(kind), torch.Generator().manual_seed(1))
        r = score(fake)
        r["acc_wrong"] = float(agent_matches(world.locate_agent(wrong), truth_at, world.agent_tolerance).mean())
        res[f"{wname}_{kind}"] = r
        print(a.name, wname, kind, r, flush=True)
        rows = [np.concatenate(list(f.permute(0, 2, 3, 1).numpy()), 1) for f in (tgt[:12], fake[:12])]
        Image.fromarray(np.concatenate(rows, 0)).resize((12 * 96, 2 * 96), Image.NEAREST).save(
            f"benchmarks/results/world/sample-probes/{a.name}_{wname}_{kind}.png"
        )
print(json.dumps(res))
open("benchmarks/results/world/sample-probes/results.jsonl", "a").write(json.dumps(res) + "\n")
