"""balora: Bias-Alleviating Low-Rank Adaptation (BA-LoRA) on peft and transformers."""

__version__ = "0.1.0"
