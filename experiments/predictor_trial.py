"""Trial: train one Morpho-MNIST node's network on cached draws and score it on the cached floor sets
(256 test scenes; thickness given the true intensity). The figures of docs/results.md's predictor trials:

    OMP_NUM_THREADS=1 python experiments/predictor_trial.py CACHE.npz digit --steps 800 --shift 2 --rotate 15
    OMP_NUM_THREADS=1 python experiments/predictor_trial.py CACHE.npz thickness --steps 4000 --width 32

(CACHE.npz from experiments/predictor_trial_cache.py.) --stem adds stride-1 convolutions in front.
"""
import argparse, math, time, json, numpy as np, torch
from torch import nn
torch.set_num_threads(1)
from causaldiffae.predictors import NodeRegressor
ap = argparse.ArgumentParser()
ap.add_argument("cache"); ap.add_argument("node"); ap.add_argument("--steps", type=int, default=500); ap.add_argument("--width", type=int, default=16)
ap.add_argument("--hidden", type=int, default=64)
ap.add_argument("--shift", type=int, default=0); ap.add_argument("--rotate", type=float, default=0.0)
ap.add_argument("--n", type=int, default=8000); ap.add_argument("--lr", type=float, default=2e-3); ap.add_argument("--bs", type=int, default=64)
ap.add_argument("--stem", type=int, default=0); ap.add_argument("--pool", type=int, default=4); ap.add_argument("--loss", default="mse"); ap.add_argument("--seed", type=int, default=0)
a = ap.parse_args()
NODES = ["thickness", "intensity", "digit"]; LOC = {"thickness": 3.25, "intensity": 159.5}; SCALE = {"thickness": 2.75, "intensity": 95.5}
d = np.load(a.cache)
def X(raw): return torch.from_numpy(raw).permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
j = NODES.index(a.node)
xtr, ytr = X(d["train_x"][: a.n]), torch.from_numpy(d["train_y"][: a.n])
norm = lambda y, n: (y[:, NODES.index(n)] - LOC[n]) / SCALE[n]
cond_n = 1 if a.node == "thickness" else 0
out_dim = 10 if a.node == "digit" else 1
torch.manual_seed(a.seed); rng = np.random.default_rng(a.seed + 1)
class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        layers = []; c = 1
        for _ in range(a.stem): layers += [nn.Conv2d(c, a.width, 3, padding=1), nn.SiLU()]; c = a.width
        self.stem = nn.Sequential(*layers); self.body = NodeRegressor(c, 32, a.width, a.hidden, out_dim, cond_n, a.pool)
    def forward(self, x, cond=None): return self.body(self.stem(x), cond)
net = Stem()
opt = torch.optim.Adam(net.parameters(), lr=a.lr)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, a.steps) / a.steps)))
def augment(x):
    if not a.shift and not a.rotate: return x
    B = x.shape[0]
    ang = (torch.rand(B) * 2 - 1) * a.rotate * math.pi / 180
    sh = torch.randint(-a.shift, a.shift + 1, (B, 2)).float() * 2 / x.shape[-1]
    th = torch.zeros(B, 2, 3); th[:, 0, 0] = ang.cos(); th[:, 0, 1] = -ang.sin(); th[:, 1, 0] = ang.sin(); th[:, 1, 1] = ang.cos(); th[:, :, 2] = sh
    g = nn.functional.affine_grid(th, x.shape, align_corners=False)
    return nn.functional.grid_sample(x, g, mode="bilinear", padding_mode="border", align_corners=False)
t0 = time.time()
for s in range(a.steps):
    idx = torch.from_numpy(rng.choice(len(xtr), a.bs))
    x, y = augment(xtr[idx]), ytr[idx]
    cond = norm(y, "intensity")[:, None] if cond_n else None
    o = net(x, cond)
    if a.node == "digit": loss = nn.functional.cross_entropy(o, y[:, j].long())
    else:
        e = o[:, 0] - norm(y, a.node)
        loss = (e ** 2).mean() if a.loss == "mse" else (e.abs().mean() if a.loss == "l1" else nn.functional.smooth_l1_loss(o[:, 0], norm(y, a.node), beta=0.05))
    opt.zero_grad(); loss.backward(); opt.step(); sched.step()
sec = time.time() - t0
net.eval(); res = {}
with torch.no_grad():
    for k in d.files:
        if not k.startswith("test_") or not k.endswith("_x"): continue
        name = k[5:-2]; x = X(d[k]); y = torch.from_numpy(d[f"test_{name}_y"])
        o = net(x, norm(y, "intensity")[:, None] if cond_n else None)
        res[name] = float((o.argmax(1) != y[:, j].long()).float().mean()) if a.node == "digit" else float((o[:, 0] - norm(y, a.node)).abs().mean())
print(json.dumps({"args": vars(a), "sec_per_step": round(sec / a.steps, 3), "test": {k: round(v, 4) for k, v in res.items()}}), flush=True)
