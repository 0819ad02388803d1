"""Checkpoints: full training state in safetensors + JSON, written atomically, verified before use.

  format.py     file and folder names, TrainState (trainer.json), the sha256 manifest, verification (no torch)
  schema.py     the schemas of its JSON files (manifest, trainer.json, RNG, optimizer)
  shard_files.py  a sharded checkpoint's shard offsets, checked to tile every tensor
  objects.py    the live objects (model, optimizer, ...); optimizer and RNG states <-> tensors + JSON
  full.py       the model/optimizer/scheduler/scaler files of a full (unsharded) checkpoint
  retention.py  listing, the newest valid checkpoint, pruning
  policy.py     when to save
  manager.py    CheckpointManager: holds the live objects, saves and loads
  weights.py    a completed run's model.safetensors (model_raw.safetensors with EMA) and summary.json
  ties.py       tied weights: written once, under their first name; given every name on load

This package's __init__ imports nothing, so the file-only parts load without torch.
"""
