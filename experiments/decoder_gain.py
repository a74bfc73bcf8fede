"""Where does a continuous intervention lose its size: the encoder, the inverted noise or the decoder?

For one continuous node (``--node``) every held-out image takes another image's value
(:func:`causaldiffae.metrics.default_interventions`), and each stage is scored by its **gain**: the
least-squares slope of the change the anti-causal predictor reads against the change requested,
both in label units. Do-nothing has gain 0; the simulator's true counterfactual images, read by
the same predictor, give the floor (about 1, the predictor's own slope).

* ``encoder``: slope and MAE of the encoder's reading (block mean) against the true label.
* ``counterfactual, encoder block, refine k``: the default query (DDIM inversion with ``k``
  fixed-point corrections, the residual); ``k = 1`` is the default, as users run it.
* ``counterfactual, true block, ...``: the same query after the node's block is set to the true
  label before inversion (oracle abduction of that block): how much of the loss is the encoder's
  reading.
* ``sample``: interventional samples from random ``x_T`` (no abduction), each drawn at the
  requested value: how closely the decoder draws a value when no inverted code competes with it.
* ``x0 at t``: the one-step clean-image estimate from ``x_t = q_sample(x, t)`` under the factual
  and the counterfactual latents: how much the decoder follows the block at each noise level when
  ``x_t`` carries the factual image.

If ``sample`` is level between two models while ``counterfactual`` is not, the difference is in
what the inverted ``x_T`` keeps of the factual value, not in how the decoder draws a value.

    python experiments/decoder_gain.py --data morphomnist --node thickness \\
        --predictors causaldiffae/pretrained/morphomnist.predictors.safetensors --n 128 \\
        --run runs/ablation/morpho-v2-1200-cycle_01-amd/runs/causal-0.1-seed0 runs/.../causal-1-seed0
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from causaldiffae import pipeline
from causaldiffae.counterfactual import (DEFAULT_REFINE, Abduction, abduct_residual, counterfactual, predict,
                                         query_settings, resolve_refine_carry, sample)
from causaldiffae.data.simulator import get_simulator
from causaldiffae.metrics.ground_truth import true_counterfactual_images
from causaldiffae.metrics.interventions import _table_for, default_interventions
from causaldiffae.model import CausalDiffAE
from causaldiffae.predictors import load_predictors

NOISE_LEVELS = (999, 900, 700, 500, 300, 100)


def gain(requested: np.ndarray, read: np.ndarray) -> float:
    """Least-squares slope of ``read`` on ``requested`` (both ``(N,)``)."""
    return float(np.polyfit(requested, read, 1)[0])


@torch.no_grad()
def decoder_gains(run: str, data: str, node: str, predictors, n: int = 128, seed: int = 0) -> dict[str, float]:
    """The gains of one model (see the module docstring); label units."""
    model, meta = CausalDiffAE.load(run)
    model.eval()
    g = model.graph
    if g.is_categorical(node):
        raise SystemExit(f"--node {node}: categorical; the gain is defined for continuous nodes")
    ds, _ = pipeline.open_heldout(data, g, model.image_shape[-1])
    n = min(n, len(ds))
    x, y = ds.batch(np.arange(n))
    j = g.index(node)
    do = next(d for d in default_interventions(g, y, seed=seed) if list(d) == [node])
    t_true, t_new = y[:, j].double().numpy(), do[node].double().numpy()
    want = t_new - t_true
    read_x = predictors.predict(x).numpy()[:, j]

    def read(images: torch.Tensor) -> np.ndarray:
        return predictors.predict(images).numpy()[:, j] - read_x

    out: dict[str, float] = {"n": n}
    gen = (meta.get("data") or {}).get("generator") or {"generator": data}
    sim = get_simulator(gen["generator"], size=gen.get("size", model.image_shape[-1]))
    table = _table_for(g, y, None if ds.extra is None else ds.extra.iloc[:n])
    truth, _ = true_counterfactual_images(model, table, do, sim.true_counterfactual, size=gen.get("size"))
    out["floor (true counterfactuals)"] = gain(want, read(truth))

    u, z = model.encode(x)
    enc = g.from_latent_value(node, z[:, g.block(node)].mean(dim=-1)).double().numpy()
    out["encoder slope"], out["encoder MAE"] = gain(t_true, enc), float(np.abs(enc - t_true).mean())

    for refine in (0, DEFAULT_REFINE):  # the library's query, as users run it
        out[f"counterfactual, encoder block, refine {refine}"] = gain(want, read(counterfactual(model, x, do, refine=refine).images))
    # the same query with the node's true value in its block before inversion (abduct takes z from the encoder)
    dec, inv, _ = query_settings()
    z_true = z.clone()
    z_true[:, g.block(node)] = g.to_latent_value(node, y[:, j].to(z))[:, None]
    u_true = model.scm.abduct(z_true)
    for refine in (0, DEFAULT_REFINE):
        x_T = model.schedule.ddim_invert(model.denoiser(), x, z_true, steps=inv, refine=refine,
                                         carry=resolve_refine_carry(None))
        ab = abduct_residual(model, Abduction(images=x, u=u_true, z=z_true, x_T=x_T, steps=inv), steps=dec)
        x_cf = predict(model, ab, model.scm.intervene(z_true, do, u=u_true), steps=dec)
        out[f"counterfactual, true block, refine {refine}"] = gain(want, read(x_cf))

    s = sample(model, n, {node: do[node]}, seed=seed)
    out["sample (random x_T), slope on the value"] = gain(t_new, predictors.predict(s.images).numpy()[:, j])

    z_cf = model.scm.intervene(z, do, u=u)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    net = model.denoiser()
    for t in NOISE_LEVELS:
        tt = torch.full((n,), t, dtype=torch.long)
        x_t = model.schedule.q_sample(x, tt, noise)
        x0 = model.schedule.predict_x0(net(x_t, tt, z, None), x_t, tt).clamp(-1, 1)
        x0_cf = model.schedule.predict_x0(net(x_t, tt, z_cf, None), x_t, tt).clamp(-1, 1)
        out[f"x0 at t={t}"] = gain(want, predictors.predict(x0_cf).numpy()[:, j] - predictors.predict(x0).numpy()[:, j])
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", nargs="+", required=True, help="run folders or checkpoints")
    p.add_argument("--data", required=True, help="a generated data set with a simulator (pendulum, morphomnist)")
    p.add_argument("--node", required=True, help="a continuous node")
    p.add_argument("--predictors", required=True)
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--json", help="also write the table as JSON here")
    a = p.parse_args()
    preds = load_predictors(a.predictors)
    rows = {r: decoder_gains(r, a.data, a.node, preds, n=a.n) for r in a.run}
    keys = list(next(iter(rows.values())))
    print("| | " + " | ".join(rows) + " |")
    print("|---|" + "---|" * len(rows))
    for k in keys:
        print(f"| {k} | " + " | ".join(f"{rows[r][k]:.3f}" if k != "n" else str(rows[r][k]) for r in rows) + " |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
