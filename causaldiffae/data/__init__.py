"""Data sets: generated ones with ground-truth counterfactuals, and users' own images with labels.

* :mod:`~causaldiffae.data.dataset`: :class:`ImageLabelDataset`, the one type every source becomes.
* :mod:`~causaldiffae.data.folder`: a folder with ``labels.csv``, an ``.npz``, CausalCircuit's npz.
* :mod:`~causaldiffae.data.simulator`: the :class:`Simulator` interface of the generated sets (renders,
  independent draws for the predictors, exact counterfactuals, what has none, field metrics).
* :mod:`~causaldiffae.data.pendulum`: CausalVAE's Pendulum scene and its true counterfactuals.
* :mod:`~causaldiffae.data.morphomnist`: Morpho-MNIST thickness -> intensity on real digits.
* :mod:`~causaldiffae.data.morpho_benchmark`: Morpho-MNIST scored in the counterfactual benchmark's units.
* :mod:`~causaldiffae.data.generate`: writing generated sets in the folder format; ``open_dataset``.
"""

from causaldiffae.data.dataset import ImageLabelDataset, resize_images
from causaldiffae.data.folder import load_causal_circuit, load_folder, load_image_files, load_npz
from causaldiffae.data.generate import data_cache_dir, generate_dataset, open_dataset

__all__ = [
    "ImageLabelDataset", "resize_images", "load_folder", "load_npz", "load_causal_circuit", "load_image_files",
    "generate_dataset", "open_dataset", "data_cache_dir",
]
