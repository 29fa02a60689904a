"""edgerag against its peers, one run on one machine: same model, same held-out tokens, same clock.

Peers: llama.cpp (through llama-cpp-python) on the source Q4_1 GGUF, and ExecuTorch's own
`export_llm` with its stock XNNPACK 8da4w recipe. Every system is timed by one outer wall clock
in its own subprocess; the results land in `bench/results/<date>.json` and `.md`.
"""
