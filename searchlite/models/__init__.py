"""CLIP models: identity (spec, no torch), loading, encoding, weights in the Hugging Face cache, bundled models."""
