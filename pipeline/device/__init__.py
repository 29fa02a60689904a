"""The on-device loop, which a phone app mirrors: retrieve, fit the prompt, generate, show the
evidence. It reads only a release bundle's files (`pipeline/bundle.py`)."""
