"""The networks of an unCLIP model, one file each. Parameter names follow the hub checkpoints' keys."""
