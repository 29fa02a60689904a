"""edgerag: compile a private on-device RAG stack (ExecuTorch LLM + usearch index) reproducibly."""

import logging

# Import-time chatter from torch/torchao (CUDA-only kernels missing on a CPU wheel, deprecation
# notes) would bury the one-sentence errors and progress lines edgerag prints.
for _name in ("torchao", "torch.utils._pytree", "torch._export", "torch.export"):
    logging.getLogger(_name).setLevel(logging.ERROR)
