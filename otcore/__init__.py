"""OT Fusion Studio backend: data, models, training, OT fusion, pruning and Hessian analysis."""
