"""Contrastive training and fine-tuning."""
