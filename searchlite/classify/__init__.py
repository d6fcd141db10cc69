"""CLIP beyond search: linear classifiers, zero-shot prompts, few-shot probes, tag sets."""
