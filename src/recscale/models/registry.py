"""Every model recscale can train, by its CLI name. A test keeps this dict and the CLI in sync."""

from __future__ import annotations

from recscale.models.autoencoder import AutoEncoder
from recscale.models.ease import EASE
from recscale.models.ncf import GMF, MLP, NeuMF
from recscale.models.popularity import Popularity
from recscale.models.tabular import EmbeddingMLP
from recscale.models.vae import MultDAE, MultVAE

MODELS = {
    "neumf": NeuMF,
    "gmf": GMF,
    "mlp": MLP,
    "multvae": MultVAE,
    "multdae": MultDAE,
    "autoencoder": AutoEncoder,
    "embedding-mlp": EmbeddingMLP,
    "popularity": Popularity,
    "ease": EASE,
}
