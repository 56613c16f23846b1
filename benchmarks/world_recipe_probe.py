"""Recipe probes: the world model's network trained in a plain loop, one variant per call, then
scored for control (agent placed right with the true / a wrong action, posterior mean from pure
noise, 8-step rollouts of 16 test episodes). This is how the noise shift was found; the real
pipeline's table is ``lightning-film reproduce world-recipe``. One seed, one thread per call:

    python benchmarks/world_recipe_probe.py --name v_shift16 --pred v --shift 16   # appends to results.jsonl

``--shift`` moves diffusion's log-SNR by -2 ln s (``Diffusion(shift=s)`` does the same) and maps
flow times through s t / (1 + (s - 1) t). Results: ``benchmarks/results/world/recipe-probes/``.
"""

import argparse
import json
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from world_probe_data import stack, world_data

from lightning_film.models.world_model import WorldDenoiser, WorldModel, to_uint8, to_unit

p = argparse.ArgumentParser()
p.add_argument("--name", required=True)
p.add_argument("--steps", type=int, default=1500)
p.add_argument("--seconds", type=float, default=0)
p.add_argument("--pred", default="v")  # v | eps | x0 | flow | reg
p.add_argument("--tdist", default="uniform")  # uniform | logitnorm:m:s
p.add_argument("--lr", type=float, default=1e-3)
p.add_argument("--cond", default="film")
p.add_argument("--norm", default="rmsnorm")
p.add_argument("--dim", type=int, default=128)
p.add_argument("--depth", type=int, default=4)
p.add_argument("--patch", type=int, default=4)
p.add_argument("--aemb_std", type=float, default=0.02)
p.add_argument("--combine", default="sum")
p.add_argument("--minsnr", type=float, default=0)
p.add_argument("--shift", type=float, default=1.0)
p.add_argument("--cond_hidden", type=int, default=0)
p.add_argument("--threads", type=int, default=1)
p.add_argument("--seed", type=int, default=0)
p.add_argument("--eval_n", type=int, default=256)
p.add_argument("--sample_steps", type=int, default=20)
a = p.parse_args()
torch.set_num_threads(a.threads)
torch.manual_seed(a.seed)
dm = world_data()
tr = dm.windows("train")
te = dm.windows("test")
rng = np.random.default_rng(a.seed)
train_all = stack(tr, np.arange(len(tr)))
test_idx = np.linspace(0, len(te) - 1, a.eval_n).round().astype(int)
test = stack(te, test_idx)
objective = "flow" if a.pred == "flow" else "diffusion"
net = WorldDenoiser(
    conditioner={"name": a.cond, "hidden_dim": a.cond_hidden} if a.cond_hidden else a.cond,
    normalizer=a.norm,
    dim=a.dim,
    depth=a.depth,
    patch_size=a.patch,
    combine=a.combine,
)
m = WorldModel(
    net,
    objective=objective,
    prediction=None if objective == "flow" else ("v" if a.pred in ("x0", "reg") else a.pred),
    kid_feature="tiny",
    seed=a.seed,
)
torch.nn.init.normal_(m.net.action_embed.weight, std=a.aemb_std)
obj = m.objective
if a.pred != "flow" and a.shift != 1.0:
    ab = obj.alpha_bar
    obj.alpha_bar = torch.sigmoid(torch.logit(ab) - 2 * math.log(a.shift))


def fshift(u):
    return a.shift * u / (1 + (a.shift - 1) * u)


decay = [p_ for n, p_ in m.named_parameters() if p_.dim() >= 2 and "action_embed" not in n]
opt = torch.optim.AdamW(
    [
        {"params": decay, "weight_decay": 0.0},
        {
            "params": [p_ for n, p_ in m.named_parameters() if not (p_.dim() >= 2 and "action_embed" not in n)],
            "weight_decay": 0.0,
        },
    ],
    lr=a.lr,
    betas=(0.9, 0.99),
    fused=True,
)
T = 1000


def sample_t(n, g):
    if a.tdist == "uniform":
        u = torch.rand(n, generator=g)
    else:
        _, mu, sd = a.tdist.split(":")
        u = torch.sigmoid(float(mu) + float(sd) * torch.randn(n, generator=g))
    return fshift(u) if a.pred == "flow" else u


def levels(t):
    ab = obj.alpha_bar[t].float()
    return ab.sqrt().view(-1, 1, 1, 1), (1 - ab).sqrt().view(-1, 1, 1, 1)


def net_x0(x_t, t, ctx, act):
    """x0 estimate from the network at x_t; t: float u in [0,1] for flow, long for diffusion."""
    if a.pred == "flow":
        v = m(x_t, t, ctx, act)
        return x_t - t.view(-1, 1, 1, 1) * v
    if a.pred == "reg":
        return m(torch.zeros_like(x_t), torch.zeros_like(t), ctx, act)
    out = m(x_t, t, ctx, act)
    sa, ss = levels(t)
    if a.pred == "x0":
        return out
    if a.pred == "eps":
        return (x_t - ss * out) / sa
    return sa * x_t - ss * out


g = torch.Generator().manual_seed(a.seed)
N = len(train_all["target"])
warm, total = 100, a.steps
t0 = time.time()
step = 0
while True:
    if (a.seconds and time.time() - t0 > a.seconds) or (not a.seconds and step >= total):
        break
    frac = min(1.0, step / total) if not a.seconds else min(1.0, (time.time() - t0) / a.seconds)
    lr = a.lr * ((step + 1) / warm if step < warm else 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    for gr in opt.param_groups:
        gr["lr"] = lr
    idx = torch.randint(0, N, (32,), generator=g)
    ctx, act, x0 = to_unit(train_all["context"][idx]), train_all["action"][idx], to_unit(train_all["target"][idx])
    noise = torch.randn(x0.shape, generator=g)
    u = sample_t(32, g)
    if a.pred == "reg":
        loss = F.mse_loss(m(torch.zeros_like(x0), torch.zeros(32, dtype=torch.long), ctx, act), x0)
    elif a.pred == "flow":
        x_t = (1 - u.view(-1, 1, 1, 1)) * x0 + u.view(-1, 1, 1, 1) * noise
        loss = F.mse_loss(m(x_t, u, ctx, act), noise - x0)
    else:
        t = (u * T).long().clamp(max=T - 1)
        sa, ss = levels(t)
        x_t = sa * x0 + ss * noise
        out = m(x_t, t, ctx, act)
        tgt = {"v": sa * noise - ss * x0, "eps": noise, "x0": x0}[a.pred]
        err = ((out - tgt) ** 2).mean(dim=(1, 2, 3))
        if a.minsnr:
            snr = (sa**2 / ss**2).view(-1)
            w = {
                "v": snr.clamp(max=a.minsnr) / (snr + 1),
                "eps": snr.clamp(max=a.minsnr) / snr,
                "x0": snr.clamp(max=a.minsnr),
            }[a.pred]
            err = err * w
        loss = err.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
    opt.step()
    step += 1
train_s = time.time() - t0
m.eval()


def locate(fr):  # fr (B, 3, H, W) uint8 -> (B, 2) centroid, nan if none
    white = (fr.min(dim=1).values > 200).float()
    cnt = white.sum((1, 2))
    ys = torch.arange(fr.shape[2]).float()
    cy = (white.sum(2) * ys).sum(1) / cnt.clamp(min=1)
    cx = (white.sum(1) * ys).sum(1) / cnt.clamp(min=1)
    out = torch.stack([cy, cx], 1)
    out[cnt < 4] = float("nan")
    return out


def acc(fake, real):
    d = (locate(fake) - locate(real)).abs().max(1).values
    return float((d <= 1.5).float().mean())


def psnr(fake, real):
    mse = ((fake.float() - real.float()) ** 2).mean()
    return float(10 * torch.log10(255**2 / mse))


@torch.no_grad()
def sample(ctx_u8, act, steps, gen):
    ctx = to_unit(ctx_u8)
    x = torch.randn((len(act), 3, 32, 32), generator=gen)
    if a.pred == "reg":
        return to_uint8(net_x0(x, torch.zeros(len(act), dtype=torch.long), ctx, act))
    if a.pred == "flow":
        grid = fshift(torch.linspace(1, 0, steps + 1))
        for i in range(steps):
            tt = torch.full((len(act),), float(grid[i]))
            v = m(x, tt, ctx, act)
            x0 = (x - grid[i] * v).clamp(-1, 1)
            nz = x0 + v  # keep implied noise
            x = x + (grid[i + 1] - grid[i]) * (nz - x0)
        return to_uint8(x)
    ts = torch.linspace(T - 1, 0, steps).round().long()
    for i, t in enumerate(ts.tolist()):
        tt = torch.full((len(act),), t, dtype=torch.long)
        x0 = net_x0(x, tt, ctx, act).clamp(-1, 1)
        sa, ss = levels(tt)
        eps = (x - sa * x0) / ss
        if i + 1 == len(ts):
            return to_uint8(x0)
        sa2, ss2 = levels(torch.full_like(tt, int(ts[i + 1])))
        x = sa2 * x0 + ss2 * eps


res = {"name": a.name, "steps": step, "train_s": round(train_s, 1), "args": vars(a)}
ctx, act, tgt = test["context"], test["action"], test["target"]
wrong = (act + 1) % 5
copy = ctx[:, -1]
res["copy_acc"], res["copy_psnr"] = acc(copy, tgt), psnr(copy, tgt)
with torch.no_grad():
    for nm, ac in (("true", act), ("wrong", wrong)):
        s = sample(ctx, ac, a.sample_steps, torch.Generator().manual_seed(1))
        res[f"acc_{nm}"], res[f"psnr_{nm}"] = acc(s, tgt), psnr(s, tgt)
        if nm == "true":
            pass
        # posterior mean at the noisiest level
        xT = torch.randn(tgt.shape, generator=torch.Generator().manual_seed(2))
        tt = torch.full((len(ac),), 1.0) if a.pred == "flow" else torch.full((len(ac),), T - 1, dtype=torch.long)
        res[f"x0T_psnr_{nm}"] = psnr(to_uint8(net_x0(xT, tt, to_unit(ctx), ac)), tgt)
    # 8-step rollout from 16 test episodes
    eps_ = dm.episodes("test")[:16]
    fr = torch.stack([torch.as_tensor(np.asarray(f[:10])).permute(0, 3, 1, 2) for f, _ in eps_])
    ac_ = torch.stack([torch.as_tensor(np.asarray(x[1:9]), dtype=torch.long) for _, x in eps_])
    c = fr[:, :2]
    gen = torch.Generator().manual_seed(3)
    ra = []
    for r in range(8):
        nx = sample(c, ac_[:, r], a.sample_steps, gen)
        ra.append(acc(nx, fr[:, 2 + r]))
        c = torch.cat([c[:, 1:], nx[:, None]], 1)
    res["rollout_acc"] = ra
    res["rollout_psnr8"] = psnr(nx, fr[:, 9])
print(json.dumps(res))
open("benchmarks/results/world/recipe-probes/results.jsonl", "a").write(json.dumps(res) + "\n")
