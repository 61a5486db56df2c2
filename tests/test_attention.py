"""Split: the attention tests live in test_attention_contract.py and one test_attention_<name>.py
per mechanism, their shared inputs in attention_inputs.py. This module only re-exports the names
test_attention_kernels.py imports from it; delete it once that file imports from attention_inputs."""
from tests.attention_inputs import TRAINED_GRIDS, atrous_reference, trained_qkv  # noqa: F401
