"""Cache Morpho-MNIST predictor trial data: 16,000 independent training draws (seed 2, as train_predictors
draws them) and the floor sets of predictor_floors (256 test scenes, seed 0: factual, true do(thickness),
true do(intensity)), for experiments/predictor_trial.py.

    OMP_NUM_THREADS=1 python experiments/predictor_trial_cache.py RUN_FOLDER OUT.npz
"""
import sys, time, numpy as np, torch
torch.set_num_threads(1)
from causaldiffae.checkpoint import load_checkpoint
from causaldiffae.data.generate import model_generator_params
from causaldiffae.data.simulator import simulator_from_params
from causaldiffae.graph import CausalGraph
from causaldiffae.metrics import default_interventions
from pathlib import Path
run = Path(sys.argv[1])
_, meta = load_checkpoint(run / "checkpoint.safetensors" if run.is_dir() else run)
graph = CausalGraph.from_dict(meta["graph"])
sim = simulator_from_params(model_generator_params(sys.argv[1], meta))
t = time.time()
table = sim.split_rows("test", 256, 0)
labels = np.array(table[graph.label_columns].to_numpy(np.float32))
out = {"test_none_x": sim.render(table, 32), "test_none_y": labels}
for do in default_interventions(graph, torch.as_tensor(labels), seed=0):
    name = ", ".join(sorted(do))
    if not sim.has_true_counterfactual(do):
        continue
    do_np = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else v) for k, v in do.items()}
    raw, cf = sim.true_counterfactual(table, do_np, size=32)
    out[f"test_{name}_x"] = raw; out[f"test_{name}_y"] = np.array(cf[graph.label_columns].to_numpy(np.float32))
print("test sets", list(out), time.time() - t, flush=True)
raw, tab = sim.sample_independent(16000, np.random.default_rng(2), split="train", size=32)
out["train_x"] = raw; out["train_y"] = tab[graph.label_columns].to_numpy(np.float32); out["train_source"] = tab["source"].to_numpy()
np.savez_compressed(sys.argv[2], **out)
print("done", time.time() - t)
