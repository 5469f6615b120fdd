"""Integrations with the ecosystem's trainers and tools (optional dependencies, imported on use).

* :mod:`balora.integrations.trl`: :class:`~balora.integrations.trl.BALoRASFTTrainer`, BA-LoRA inside
  ``trl.SFTTrainer`` (its datasets, chat templates, completion-only masks, packing); needs ``pip install
  balora[trl]``.
"""
