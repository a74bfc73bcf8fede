"""causaldiffae: counterfactual image generation with causal diffusion autoencoders.

The pipeline, one module per concept::

    graph          declare a causal DAG (networkx, DOT, GML, YAML/JSON)
    scm            compile it into Pyro structural causal mechanisms over latent blocks
    networks       semantic encoder q(u|x) and the AdaGN UNet noise predictor
    diffusion      noise schedules, L_simple, DDIM decoding/inversion, guidance
    model          CausalDiffAE: the SCM + encoder + diffusion decoder as one Pyro model
    counterfactual abduction -> action -> prediction
    data           generated data sets with true counterfactuals, and users' own folders
    metrics        reconstruction, effectiveness, composition, reversibility, DCI
    training       the training loop, checkpoints, torchrun
    cli            the ``causaldiffae`` command
"""

from __future__ import annotations

__version__ = "0.1.0"

from causaldiffae.errors import (  # noqa: F401
    CausalDiffAEError,
    CheckpointError,
    ConfigError,
    DataError,
    GraphError,
    InterventionError,
    TrainingError,
)
