"""A local hub: serves a directory of model repositories over the Hugging Face Hub and ModelScope HTTP protocols."""
