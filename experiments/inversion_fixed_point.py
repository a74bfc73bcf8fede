"""How fast the fixed-point corrections of DDIM inversion converge, step by step.

    python experiments/inversion_fixed_point.py pendulum --n 16 --corrections 6

For each inversion interval ``s -> t`` of a ``--steps`` DDIM grid it prints the mean absolute
residual (0-255 scale) of the decoding step, ``|x_s - D(x_t)|``, after 0, 1, ... ``--corrections``
fixed-point corrections (``NoiseSchedule.ddim_invert(refine=k)``'s update), on the first ``--n``
test images of a shipped model (or run), under their abducted latents. Each interval starts from
the previous one's last iterate. A residual that shrinks by a constant factor per correction is a
converging fixed point; the factor says how many corrections exactness costs.
"""

from __future__ import annotations

import argparse

import torch

from causaldiffae.diffusion import guided_eps
from causaldiffae.model import CausalDiffAE
from causaldiffae.pipeline import open_heldout


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run", help="a shipped name (pendulum, morphomnist) or a run folder")
    ap.add_argument("--data", help="the data (default: the run's name)")
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--corrections", type=int, default=6)
    args = ap.parse_args()

    model, _ = CausalDiffAE.load(args.run)
    data, _ = open_heldout(args.data or args.run, model.graph, model.image_shape[-1])
    x = torch.stack([data[i]["image"] for i in range(min(args.n, len(data)))])
    _, z = model.encode(x)
    sched, net = model.schedule, model.denoiser()
    ts, _ = sched._steps(args.steps, False, "invert")
    print(f"{args.run}: {x.shape[0]} test images, {args.steps} steps; mean |x_s - D(x_t)| (0-255) "
          f"after 0..{args.corrections} corrections")
    xs = x.float()
    for i in range(len(ts)):
        s = ts[i - 1] if i > 0 else 0
        a_s = sched.alpha_bar(ts[i - 1], xs) if i > 0 else torch.ones_like(xs[:, :1, :1, :1])
        a_t = sched.alpha_bar(ts[i], xs)

        def decode_step(xt: torch.Tensor) -> torch.Tensor:
            eps = sched.to_eps(guided_eps(net, xt, ts[i], z, 1.0), xt, ts[i]).float()
            x0, eps = sched._clip(xt, (xt - (1 - a_t).sqrt() * eps) / a_t.sqrt(), eps, a_t, True)
            return a_s.sqrt() * x0 + (1 - a_s).sqrt() * eps

        eps = sched.to_eps(guided_eps(net, xs, s, z, 1.0), xs, s).float()
        x0, eps = sched._clip(xs, (xs - (1 - a_s).sqrt() * eps) / a_s.sqrt(), eps, a_s, True)
        xt = a_t.sqrt() * x0 + (1 - a_t).sqrt() * eps  # plain DDIM inversion step
        res = []
        for k in range(args.corrections + 1):
            r = xs - decode_step(xt)
            res.append(float(r.abs().mean()) * 127.5)
            if k < args.corrections:
                xt = xt + (a_t / a_s).sqrt() * r  # the correction of ddim_invert(refine=k)
        print(f"  interval {int(s):4d} -> {int(ts[i]):4d}: " + " ".join(f"{v:.4f}" for v in res))
        xs = xt


if __name__ == "__main__":
    main()
