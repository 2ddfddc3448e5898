"""The limits of a run, the same wherever a value is given (an option, a prompt-file line or a record)."""

MAX_SEED = 2**63 - 1  # a torch.Generator takes seeds up to this
MAX_COUNT = 10_000  # images of one prompt or picture
