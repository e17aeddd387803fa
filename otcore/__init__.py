"""OT Fusion Studio backend: data, models, training, OT fusion, pruning and Hessian analysis."""
from otcore.threads import apply_library_default

# A notebook's `import otcore.fusion` gets the CLI's thread policy unless the user chose a count (otcore/threads.py)
apply_library_default()
