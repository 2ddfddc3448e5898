"""Where the tests find the real hub configs: copies of ../shared/reference/checkpoints vendored in tests/data."""

from pathlib import Path

REFERENCE = Path(__file__).parent / "data" / "reference"
KARLO = REFERENCE / "kakaobrain__karlo-v1-alpha"
CLIP_L14 = REFERENCE / "openai__clip-vit-large-patch14"
